"""Process bodies for tests that spawn a gloo process group on the CPU. They live apart from the test
modules so that a spawned process imports only torch and the code under test, not the test
module's imports (Lightning, transformers), which would cost seconds per process."""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contrastive_problem(world: int, batch: int, dim_in: int = 6, dim_out: int = 3):
    """A linear encoder and two views of a global batch of ``world * batch`` inputs (float64)."""
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(dim_out, dim_in, generator=gen, dtype=torch.float64)
    x1 = torch.randn(world * batch, dim_in, generator=gen, dtype=torch.float64)
    x2 = torch.randn(world * batch, dim_in, generator=gen, dtype=torch.float64)
    return weight, x1, x2


def contrastive_losses_and_grads(weight, x1, x2, temperature: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{loss name: (loss, gradient of the encoder weight)} of NT-Xent and InfoNCE (gathering negatives
    across processes) on this process's rows."""
    from headstart.objectives.losses import info_nce, nt_xent

    out = {}
    for name, fn in (("nt_xent", nt_xent), ("info_nce", info_nce)):
        w = weight.clone().requires_grad_(True)
        loss = fn(x1 @ w.T, x2 @ w.T, temperature, gather=True)
        loss.backward()
        out[name] = (loss.detach(), w.grad)
    return out


def contrastive_rank(rank: int, world: int, batch: int, temperature: float, port: int, result_dir: str) -> None:
    """One rank of ``world``: its ``batch`` rows of the problem; saves its losses and gradients."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        weight, x1, x2 = contrastive_problem(world, batch)
        rows = slice(rank * batch, (rank + 1) * batch)
        result = contrastive_losses_and_grads(weight, x1[rows], x2[rows], temperature)
        torch.save(result, f"{result_dir}/rank{rank}.pt")
        # Leave together: a rank that tears its group down while the other still talks to it can abort.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: under load, a gloo worker thread still being joined while
    # C++ statics are destroyed aborts the process ("terminate called without an active exception")
    # after its results are saved.
    os._exit(0)
