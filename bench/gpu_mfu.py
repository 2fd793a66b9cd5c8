"""GPU rows (run on a GPU machine; CI has none): BERT-base-size masked LM and GPT-2-small-size causal
LM through ``train.py`` in bf16, tokens/s and model FLOPs utilisation.

MFU is the throughput monitor's ``train/device/mfu``: the analytic model FLOPs of each batch
(``headstart.flops``: 6 per weight per token plus attention) per second, over the card's bf16 peak as
Lightning knows it (989 TFLOP/s dense for an H100 SXM). Targets on an H100: 40% for MLM, 45% for CLM.

    python bench/gpu_mfu.py                     # both; about 5 min on an H100
    python bench/gpu_mfu.py --steps 300 --batch-size 64

Writes bench/results/gpu_mfu.json and the "gpu_mfu" table of BENCHMARKS.md, with the card and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, logged, machine, markdown_table, measured_on, median, run_train, write_results  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
MODELS = {
    "mlm": ("experiment=text_mlm", "model=bert_small", "model.arch.hidden_size=768", "model.arch.num_hidden_layers=12",
            "model.arch.num_attention_heads=12", "model.arch.intermediate_size=3072"),
    "clm": ("experiment=text_clm", "model.arch.n_embd=768", "model.arch.n_layer=12", "model.arch.n_head=12",
            "model.arch.n_positions=1024"),
}
TARGETS = {"mlm": 0.40, "clm": 0.45}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    info = machine()
    if not info["cuda_device"]:
        sys.exit("No CUDA device: bench/gpu_mfu.py measures GPU rows; run it on a GPU machine.")
    work = Path(tempfile.mkdtemp(prefix="headstart-gpu-"))
    data = ["data=text_files", f"data.train_files=[{CORPUS}]"] if CORPUS.exists() else []
    rows, payload = [], {"machine": info, "settings": vars(args), "runs": {}}
    for objective, model in MODELS.items():
        run_dir, wall = run_train([
            *model, *data, "trainer=gpu", "trainer.precision=bf16-mixed", f"trainer.max_steps={args.steps}",
            "trainer.limit_val_batches=0", "test_after_fit=false", "logger=csv", "data.vocab_size=32000",
            f"data.max_length={args.max_length}", f"data.batch_size={args.batch_size}", f"speed.compile={args.compile}",
        ], work / objective)
        run = {"tokens_per_s": median(logged(run_dir, "train/device/items_per_sec")),
               "mfu": median(logged(run_dir, "train/device/mfu")),
               "flops_per_s": median(logged(run_dir, "train/device/flops_per_sec")), "wall_s": round(wall, 1),
               "results": json.loads((run_dir / "results.json").read_text())}
        payload["runs"][objective] = run
        mfu = run["mfu"]
        rows.append([objective, run["tokens_per_s"], f"{mfu:.1%}" if mfu else None, f">= {TARGETS[objective]:.0%}",
                     "met" if mfu and mfu >= TARGETS[objective] else "not met"])
    table = markdown_table(["objective", "tokens/s", "MFU", "target", ""], rows)
    table += measured_on(info, "python bench/gpu_mfu.py")
    write_results("gpu_mfu", payload, table)
    print(table)


if __name__ == "__main__":
    main()
