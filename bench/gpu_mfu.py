"""GPU rows, side by side on one GPU in one run: headstart's train.py, a plain PyTorch loop and Hugging
Face's Trainer on the same model, the same token blocks (headstart's tokenizer and packed blocks of the
shared tinyshakespeare text), batch, optimizer (fused AdamW, weight decay 0.01 off biases and norms,
linear warm-up over 6% of the steps) and precision (bf16 autocast); tokens/s, model FLOPs utilisation
(MFU) against the card's dense bf16 peak, and peak GPU memory.

Rows (--rows picks some):
  mlm      BERT-base (12 layers x 768) masked LM, 32 x 512 tokens      target: MFU >= 40%
  clm512   GPT-2 small (12 layers x 768) causal LM, 32 x 512 tokens    target: MFU >= 45%
  clm1024  GPT-2 small causal LM, 16 x 1024 tokens                     target: MFU >= 45%
  small    bert_small (4 layers x 256) masked LM, 128 x 128 tokens     target: >= 100 optimizer steps/s
Every row: train.py >= 0.97x the plain loop's tokens/s and >= 1.2x the Trainer's.

Systems: (a) `python train.py experiment=... trainer=gpu ...` as a subprocess (tokens/s, steps/s and
FLOP/s from its logged train/device/items_per_sec, batches_per_sec and flops_per_sec); (b) the plain loop,
torch.compile'd, bf16 autocast, fused AdamW; (c) the Trainer with torch_compile=True, bf16=True,
optim="adamw_torch_fused". Each runs --warmup steps (compilation), then --steps timed steps; the device is
synchronised only at the points the rate is read (every 10 steps; headstart's throughput monitor reads
at its logging steps); a system's tokens/s is the median of its rates over 20-step windows inside the
timed steps (the small row times 5x the steps). FLOPs of all three come from one formula
(headstart.flops: 6 x matmul weights x tokens + attention), counting the vocabulary projection where each
system computes it (headstart's MLM: at the masked positions only; BertForMaskedLM: at every position).

How long: expected 5-6 minutes on an H100 or H200, compilation included (an estimate until the first GPU
run: each part prints its elapsed time; no part starts that would end past --budget-s, 360 s by default,
judged by the longest part so far: a row left out is marked "skipped", rerun it with --rows).

On a GPU machine:
    python bench/gpu_mfu.py                       # every row; writes bench/results/gpu_mfu.json and
                                                  # the "gpu_mfu" table of BENCHMARKS.md
    python bench/gpu_mfu.py --rows mlm small --steps 100

On the lent device machine (no hydra-core, omegaconf, antlr4, datasets, dill or multiprocess there, and no
../shared; the git-ignored .gpu_deps/ holds them and the corpus, see its build below), one call of the
device tool's run with carry [".gpu_deps"] and timeout_s 480 (writes gpu_mfu.json and gpu_mfu.md to $OUT,
after every part):
    PYTHONPATH=src:.gpu_deps PYTHONUNBUFFERED=1 python3 bench/gpu_mfu.py --corpus .gpu_deps/data/tinyshakespeare.txt --out $OUT
then here, with the JSON that comes back:
    python bench/gpu_mfu.py --table-from <files_at>/gpu_mfu.json    # bench/results + BENCHMARKS.md

.gpu_deps/ is built here (Python 3.12 wheels for the device, antlr4 from its sdist):
    pip install --target .gpu_deps --no-deps --python-version 3.12 --implementation cp --only-binary=:all: \\
        --platform manylinux2014_x86_64 --platform any hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 \\
        dill==0.4.1 multiprocess==0.70.19
    pip install --target .gpu_deps --no-deps antlr4-python3-runtime==4.9.3
    mkdir -p .gpu_deps/data && cp ../shared/data/tinyshakespeare.txt .gpu_deps/data/

Without a CUDA device it stops with one line, unless --smoke: every code path on the CPU with tiny
models (2 layers x 64, batch 4 x 32 tokens, a few steps, fp32, no compilation, train.py with
trainer=cpu), results to --out or a temporary folder, never to BENCHMARKS.md (about a minute).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_baselines  # noqa: E402
from common import (  # noqa: E402
    OFFLINE,
    REPO,
    RESULTS,
    chosen,
    machine,
    markdown_table,
    measured_on,
    run_train,
    write_results,
)
from lm_baselines import Setup, Speed, StepLog  # noqa: E402

CORPORA = [REPO.parent / "shared" / "data" / "tinyshakespeare.txt", REPO / ".gpu_deps" / "data" / "tinyshakespeare.txt"]
SYSTEMS = {"headstart": "headstart train.py", "plain": "plain PyTorch loop", "hf_trainer": "HF Trainer"}
TARGET_VS_PLAIN, TARGET_VS_HF = 0.97, 1.2
EVERY, WINDOW = 10, 20  # the clock is read every EVERY steps; rates over WINDOW steps (headstart's monitor's)

BERT_BASE = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512}
GPT2_SMALL = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
BERT_SMALL = {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 1024, "max_position_embeddings": 512}  # conf/model/bert_small.yaml
SMOKE_ARCH = {"bert": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 256, "max_position_embeddings": 64},
              "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64}}


@dataclass
class Row:
    objective: str  # mlm or clm
    experiment: str
    model: str  # the model config train.py starts from (its arch then overridden)
    label: str
    tokenizer_type: str
    vocab_size: int  # asked of the tokenizer (the real model's); the corpus may give fewer
    batch_size: int
    max_length: int
    lr: float
    arch: dict
    target_mfu: float | None = None
    target_steps_per_s: float | None = None
    step_scale: int = 1  # timed steps = step_scale x --steps (fast rows need more to time)
    extra: list[str] = field(default_factory=list)


ROWS = {
    "mlm": Row("mlm", "text_mlm", "bert_small", "BERT-base, 12 x 768", "wordpiece", 30522, 32, 512, 1e-4, BERT_BASE,
               target_mfu=0.40),
    "clm512": Row("clm", "text_clm", "gpt_tiny", "GPT-2 small, 12 x 768", "bpe", 50257, 32, 512, 1e-4, GPT2_SMALL,
                  target_mfu=0.45),
    "clm1024": Row("clm", "text_clm", "gpt_tiny", "GPT-2 small, 12 x 768", "bpe", 50257, 16, 1024, 1e-4, GPT2_SMALL,
                   target_mfu=0.45),
    "small": Row("mlm", "text_mlm", "bert_small", "bert_small, 4 x 256", "wordpiece", 8000, 128, 128, 5e-4, BERT_SMALL,
                 target_steps_per_s=100.0, step_scale=5),
}


def smoke_row(row: Row) -> Row:
    """The row's code path with a tiny model on the CPU: 2 layers x 64, batch 4 x 32 tokens."""
    return replace(row, arch=SMOKE_ARCH[row.arch["model_type"]], vocab_size=1000, batch_size=4, max_length=32,
                   step_scale=1)


# -- measuring -------------------------------------------------------------------------------------------
@dataclass
class Plan:
    warmup: int
    steps: int  # timed
    every: int
    window: int

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    @property
    def marks(self) -> set[int]:
        return set(range(self.warmup, self.total + 1, self.every))

    def window_ends(self) -> list[int]:
        """The steps whose window of ``window`` steps lies inside the timed steps."""
        return [end for end in sorted(self.marks) if end - self.window >= self.warmup]


def rates_from_log(log: StepLog, plan: Plan, step_flops, peak: float | None) -> dict:
    """A baseline's rates over each window inside the timed steps, their medians, and the rate over all
    the timed steps."""
    flops, per_s, steps_s = [], [], []
    for end in plan.window_ends():
        start = end - plan.window
        dt = log.times[end] - log.times[start]
        per_s.append(sum(log.tokens[start + 1: end + 1]) / dt)
        steps_s.append(plan.window / dt)
        flops.append(sum(step_flops(log.shapes[s]) for s in range(start + 1, end + 1)) / dt)
    timed = log.times[plan.total] - log.times[plan.warmup]
    tokens = sum(log.tokens[plan.warmup + 1: plan.total + 1])
    flops_per_s = statistics.median(flops)
    return {"tokens_per_s": statistics.median(per_s), "steps_per_s": statistics.median(steps_s),
            "flops_per_s": flops_per_s, "mfu": flops_per_s / peak if peak else None,
            "tokens_per_s_timed": tokens / timed, "timed_s": round(timed, 3),
            "warmup_s": round(log.times[plan.warmup] - log.times[0], 1), "windows_tokens_per_s": per_s}


def logged_rows(run_dir: Path) -> list[dict]:
    """The throughput monitor's rows of train.py's CSV log (those with ``train/batches``)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f) if row.get("train/batches")]


def _number(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def rates_from_headstart(run_dir: Path, plan: Plan, peak: float | None) -> dict:
    """train.py's logged windowed rates whose window lies inside the timed steps, their medians; the
    rate over all the timed steps from the logged cumulative tokens and time."""
    rows = logged_rows(run_dir)
    inside = [r for r in rows if plan.warmup + plan.window <= r["train/batches"] <= plan.total]

    def med(name):
        values = [r[name] for r in inside if name in r]
        return statistics.median(values) if values else None

    out = {"tokens_per_s": med("train/device/items_per_sec"), "steps_per_s": med("train/device/batches_per_sec"),
           "flops_per_s": med("train/device/flops_per_sec"), "mfu_logged": med("train/device/mfu"),
           "windows_tokens_per_s": [r.get("train/device/items_per_sec") for r in inside]}
    # MFU as train.py logs it; else its logged FLOP/s over the peak the baselines are measured against.
    out["mfu_from_flops"] = out["flops_per_s"] / peak if peak and out["flops_per_s"] else None
    out["mfu"] = out["mfu_logged"] if out["mfu_logged"] is not None else out["mfu_from_flops"]
    at = {int(r["train/batches"]): r for r in rows if "train/time" in r}
    if plan.warmup in at and plan.total in at:
        first, last = at[plan.warmup], at[plan.total]
        timed = last["train/time"] - first["train/time"]
        out.update(tokens_per_s_timed=(last["train/lengths"] - first["train/lengths"]) / timed,
                   timed_s=round(timed, 3), warmup_s=round(first["train/time"], 1))
    return out


# -- the three systems -------------------------------------------------------------------------------------
def headstart_args(row: Row, corpus: Path, cache: Path, plan: Plan, smoke: bool) -> list[str]:
    arch = [f"model.arch.{k}={v}" for k, v in row.arch.items() if k != "model_type"]
    return [
        f"experiment={row.experiment}", f"model={row.model}", *arch, "data=text_files", f"data.train_files=[{corpus}]",
        f"data.tokenizer_type={row.tokenizer_type}", f"data.vocab_size={row.vocab_size}",
        f"data.max_length={row.max_length}", f"data.batch_size={row.batch_size}", f"task.optimizer.lr={row.lr}",
        "trainer=cpu" if smoke else "trainer=gpu", f"trainer.max_steps={plan.total}", "trainer.limit_val_batches=0",
        "test_after_fit=false", "logger=csv", f"trainer.log_every_n_steps={plan.every}",
        f"callbacks.throughput.window_size={plan.window}", f"paths.cache_dir={cache}", "export_backbone=false",
        *row.extra,
    ]


def run_headstart(row: Row, corpus: Path, cache: Path, root: Path, plan: Plan, peak, smoke: bool) -> dict:
    run_dir, wall = run_train(headstart_args(row, corpus, cache, plan, smoke), root, timeout=900)
    result = rates_from_headstart(run_dir, plan, peak)
    if result["tokens_per_s"] is None or result["steps_per_s"] is None:
        raise RuntimeError(f"train.py logged no train/device/items_per_sec or batches_per_sec after step "
                           f"{plan.warmup + plan.window} ({run_dir / 'csv' / 'metrics.csv'})")
    results = json.loads((run_dir / "results.json").read_text())
    peak_mb = results.get("peak_gpu_mb")
    result.update(peak_mem_gib=round(peak_mb / 1024, 2) if peak_mb else None, run_dir=str(run_dir),
                  speed=results.get("speed"),
                  time_to_first_step=results.get("time_to_first_step"))
    return result


def _release() -> None:
    """Free the last system's model, optimizer and compiled graphs before the next one is measured."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mem(smoke: bool) -> float | None:
    import torch

    return None if smoke else round(torch.cuda.max_memory_allocated() / 2**30, 2)


def run_baseline(system: str, setup: Setup, cache: Path, root: Path, speed: Speed, plan: Plan, step_flops,
                 peak, smoke: bool) -> dict:
    _release()
    try:
        if system == "plain":
            log = lm_baselines.plain_loop(setup, cache, speed, marks=plan.marks)
        else:
            log = lm_baselines.hf_trainer(setup, cache, root, speed, marks=plan.marks)
        result = rates_from_log(log, plan, step_flops, peak)
        result["peak_mem_gib"] = _peak_mem(smoke)
        return result
    finally:
        _release()


# -- one row -----------------------------------------------------------------------------------------------
def row_facts(row: Row, setup: Setup, cache: Path):
    """Tokenize once (train.py and both baselines then read the cache); the actual vocabulary, the blocks,
    whether headstart's loader drops the short last batch, and the FLOPs of a step of each system."""
    import torch

    from headstart.flops import text_batch_flops

    data, net, _ = lm_baselines.prepared(setup, cache)
    blocks = len(data.datasets["train"])
    drop_last = bool(getattr(data, "drop_last_train", False)) and blocks > row.batch_size
    cache_flops: dict = {}

    def step_flops(shape, output_tokens=None) -> float:  # the vocabulary projection at every position
        return text_batch_flops(net, {"input_ids": torch.empty(shape, dtype=torch.long, device="meta")}, cache_flops,
                                output_tokens=output_tokens)

    shape = (row.batch_size, row.max_length)
    full = step_flops(shape)
    facts = {"tokenizer_vocab": len(data.tokenizer), "model_vocab": net.config.vocab_size, "train_blocks": blocks,
             "drop_last": drop_last, "matmul_params": cache_flops["params"], "output_params": cache_flops["output"],
             "flops_per_step": {"plain": full, "hf_trainer": full}}
    if row.objective == "mlm":  # headstart projects at the ~15% masked positions only (compiled: a fixed capacity)
        try:
            from headstart.data.collators import prediction_capacity
        except ImportError:
            def prediction_capacity(positions, probability):
                return round(positions * probability)
        facts["headstart_projected_positions"] = prediction_capacity(row.batch_size * row.max_length, 0.15)
        facts["flops_per_step"]["headstart"] = step_flops(shape, output_tokens=facts["headstart_projected_positions"])
    else:
        facts["flops_per_step"]["headstart"] = full
    return facts, step_flops


def ratios(result: dict, row: Row) -> dict:
    systems = result["systems"]

    def speed(name):
        return (systems.get(name) or {}).get("tokens_per_s")

    hs, plain, hf = speed("headstart"), speed("plain"), speed("hf_trainer")
    hs_run = systems.get("headstart") or {}
    out = {"vs_plain": hs / plain if hs and plain else None, "vs_hf_trainer": hs / hf if hs and hf else None}
    out["met"] = {
        "vs_plain": None if out["vs_plain"] is None else out["vs_plain"] >= TARGET_VS_PLAIN,
        "vs_hf_trainer": None if out["vs_hf_trainer"] is None else out["vs_hf_trainer"] >= TARGET_VS_HF,
    }
    if row.target_mfu is not None:
        mfu = hs_run.get("mfu")
        out["met"]["mfu"] = None if mfu is None else mfu >= row.target_mfu
    if row.target_steps_per_s is not None:
        steps = hs_run.get("steps_per_s")
        out["met"]["steps_per_s"] = None if steps is None else steps >= row.target_steps_per_s
    return out


# -- the table ---------------------------------------------------------------------------------------------
def _pct(x) -> str | None:
    return f"{x:.1%}" if x is not None else None


def _verdict(value: str | None, met: bool | None) -> str:
    if value is None:
        return "–"
    return f"{value} {'met' if met else 'not met'}"


def table(payload: dict) -> str:
    lines, goals = [], []
    for name, result in payload["rows"].items():
        row = ROWS[name]
        shape = f"{result['settings']['batch_size']} x {result['settings']['max_length']}"
        vocab = result.get("facts", {}).get("model_vocab")
        for system, label in SYSTEMS.items():
            run = result["systems"].get(system)
            if run is None:
                continue
            if "error" in run or "skipped" in run:
                lines.append([name, result["label"], shape, vocab, label, run.get("skipped") or "failed (see JSON)",
                              None, None, None, None, None])
                continue
            tflops = run["flops_per_s"] / 1e12 if run.get("flops_per_s") else None
            lines.append([name, result["label"], shape, vocab, label, run["tokens_per_s"], run["steps_per_s"],
                          tflops, _pct(run.get("mfu")), run.get("peak_mem_gib"), run.get("warmup_s")])
        r = result.get("ratios", {})
        met = r.get("met", {})
        vs_plain = f"{r['vs_plain']:.3f}x" if r.get("vs_plain") else None
        vs_hf = f"{r['vs_hf_trainer']:.3f}x" if r.get("vs_hf_trainer") else None
        hs = result["systems"].get("headstart") or {}
        if row.target_steps_per_s is not None:
            own = _verdict(f"{hs['steps_per_s']:.0f} steps/s" if hs.get("steps_per_s") else None, met.get("steps_per_s"))
            own_target = f">= {row.target_steps_per_s:.0f} steps/s"
        else:
            own = _verdict(_pct(hs.get("mfu")), met.get("mfu"))
            own_target = f"MFU >= {row.target_mfu:.0%}"
        goals.append([name, _verdict(vs_plain, met.get("vs_plain")), _verdict(vs_hf, met.get("vs_hf_trainer")), own,
                      own_target])
    info = payload["machine"]
    peak = payload.get("peak_flops")
    head = markdown_table(["row", "model", "batch x tokens", "vocab", "system", "tokens/s", "steps/s", "TFLOP/s", "MFU",
                           "peak GPU mem (GiB)", "warm-up (s)"], lines)
    targets = markdown_table(["row", f"headstart / plain (>= {TARGET_VS_PLAIN})",
                              f"headstart / HF Trainer (>= {TARGET_VS_HF})", "headstart", "target"], goals)
    plan = payload["settings"]
    timed = ", ".join(f"{n} {r['plan']['steps']}" for n, r in payload["rows"].items())
    asked = ", ".join(f"{n} {r['settings']['vocab_size']:,}" for n, r in payload["rows"].items())
    capacity = ", ".join(f"{n} {r['facts']['headstart_projected_positions']:,}" for n, r in payload["rows"].items()
                         if r["facts"].get("headstart_projected_positions"))
    note = (f"\n\nOne run, one device, the three systems one after another on each row. Tokens/s and steps/s: medians "
            f"of the rates over {plan['window']}-step windows inside the timed steps ({timed}), after {plan['warmup']} "
            f"warm-up steps (compilation, in the warm-up column); the device synchronised only where the clock is read, "
            f"every {plan['every']} step(s) (headstart: at its logging steps). All three train on the same batches: "
            "headstart's tokenizer, packed blocks and collators. FLOPs from one formula (headstart.flops: 6 x matmul "
            "weights x tokens + 12 x layers x width x length x tokens for attention), the vocabulary projection counted "
            "where each system computes it: headstart's masked LM at the masked positions only (15% of the tokens; "
            f"compiled, a fixed number of positions: {capacity}), BertForMaskedLM (plain loop, Trainer) and every "
            f"causal LM at every position. MFU against {payload.get('card') or 'an unknown card'}'s dense bf16 peak "
            f"({f'{peak / 1e12:.1f} TFLOP/s' if peak else 'unknown: no MFU'}; headstart's as it logs it, train/device/mfu). Peak "
            "GPU memory: torch.cuda.max_memory_allocated (headstart's from its results.json, peak_gpu_mb). Vocab: the "
            f"size of the tokenizer headstart trains on the corpus, shared by all three (asked: {asked}).")
    versions = f"; transformers {info.get('transformers')}, lightning {info.get('lightning')}"
    return head + "\n\n" + targets + note + measured_on(info, payload.get("command", "python bench/gpu_mfu.py"),
                                                         after=versions)


# -- the run -----------------------------------------------------------------------------------------------
def _absolute_pythonpath() -> None:
    """train.py runs in another folder: make PYTHONPATH=src:.gpu_deps absolute so that it still holds."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths)


def versions() -> dict:
    out = {}
    for name in ("transformers", "lightning", "accelerate"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def card_peak() -> tuple[str | None, float | None]:
    """The card's key and dense bf16 peak FLOP/s (headstart.peak_flops; None where it is not there yet)."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name(0)
    try:
        from headstart.peak_flops import match_card, peak_flops
    except ImportError:
        return None, None
    return match_card(name), peak_flops(name, torch.bfloat16)


def save(payload: dict, out: Path | None) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_mfu.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=[], help=f"rows to run (default: all of {', '.join(ROWS)})")
    parser.add_argument("--systems", nargs="*", default=[], help=f"systems to run (default: all of {', '.join(SYSTEMS)})")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 20; --smoke: 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 60, x5 for the small row; "
                                                                 "--smoke: 4); a multiple of 10 (--smoke: of 1)")
    parser.add_argument("--workers", type=int, default=4, help="the baselines' loader workers (trainer=gpu's 4)")
    parser.add_argument("--corpus", type=Path, default=None, help="the text to train on (default: "
                                                                   "../shared/data/tinyshakespeare.txt, else .gpu_deps/data/)")
    parser.add_argument("--out", type=Path, default=None, help="write gpu_mfu.json and gpu_mfu.md here (after each "
                                                               "part) instead of bench/results and BENCHMARKS.md")
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no part that would end past this many "
                                                                       "seconds (judged by the longest part so far)")
    parser.add_argument("--smoke", action="store_true", help="every code path on the CPU, tiny models (a test)")
    parser.add_argument("--table-from", type=Path, default=None, help="rewrite bench/results/gpu_mfu.json and the "
                                                                       "BENCHMARKS.md table from this JSON")
    args = parser.parse_args(argv)
    args.rows = chosen(parser, args.rows, ROWS, "row")
    args.systems = chosen(parser, args.systems, SYSTEMS, "system")
    return parser, args


def main(argv=None) -> int:
    parser, args = parse(argv)
    if args.table_from is not None:
        payload = json.loads(args.table_from.read_text())
        if payload.get("smoke"):
            parser.error(f"{args.table_from} holds a --smoke run: it does not go into BENCHMARKS.md")
        write_results("gpu_mfu", payload, table(payload))
        print(table(payload))
        return 0
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_mfu.py: no CUDA device here; run it on a GPU machine (see --help), or pass --smoke for the "
              "CPU check.", file=sys.stderr)
        return 2
    corpus = args.corpus or next((c for c in CORPORA if c.exists()), CORPORA[0])
    if not corpus.exists():
        print(f"gpu_mfu.py: the corpus {corpus} is missing; give one with --corpus.", file=sys.stderr)
        return 2
    corpus = corpus.resolve()
    plan = Plan(warmup=args.warmup if args.warmup is not None else (2 if args.smoke else 20),
                steps=args.steps if args.steps is not None else (4 if args.smoke else 60),
                every=1 if args.smoke else EVERY, window=2 if args.smoke else WINDOW)
    if plan.steps % plan.every or plan.warmup % plan.every or plan.steps < plan.window:
        parser.error(f"--steps and --warmup must be multiples of {plan.every}, --steps at least {plan.window}")
    out = args.out.resolve() if args.out else (Path(tempfile.mkdtemp(prefix="gpu-mfu-smoke-")) if args.smoke else None)
    _absolute_pythonpath()
    os.environ.update(OFFLINE)
    work = Path(tempfile.mkdtemp(prefix="headstart-gpu-mfu-"))
    cache = work / "cache"
    card, peak = (None, None) if args.smoke else card_peak()
    command = "python bench/gpu_mfu.py" + (" --smoke" if args.smoke else "") + (
        f" --rows {' '.join(args.rows)}" if len(args.rows) < len(ROWS) else "")
    payload = {"smoke": args.smoke, "machine": {**machine(), **versions()}, "card": card, "peak_flops": peak,
               "command": command, "corpus": str(corpus),
               "settings": {**asdict(plan), "workers": args.workers, "budget_s": args.budget_s}, "rows": {},
               "elapsed_s": {}}
    speed = Speed() if args.smoke else Speed(device="cuda", compile=True, bf16=True, fused=True, tf32=True,
                                             num_workers=args.workers, log_every=EVERY)
    start, longest, failed = time.perf_counter(), 0.0, False
    print(f"gpu_mfu: {payload['machine']['cuda_device'] or 'CPU (smoke)'}, peak {peak}, corpus {corpus}", flush=True)
    for name in args.rows:
        row = smoke_row(ROWS[name]) if args.smoke else ROWS[name]
        row_plan = replace(plan, steps=plan.steps * row.step_scale)
        setup = Setup(objective=row.objective, tokenizer_type=row.tokenizer_type, vocab_size=row.vocab_size,
                      max_length=row.max_length, batch_size=row.batch_size, lr=row.lr, steps=row_plan.total,
                      arch=row.arch, corpus=corpus)
        t0 = time.perf_counter()
        facts, step_flops = row_facts(row, setup, cache)
        _release()
        result = payload["rows"][name] = {"label": row.label if not args.smoke else f"smoke {row.arch['model_type']}",
                                          "objective": row.objective, "settings": {**asdict(setup), "corpus": str(corpus)},
                                          "plan": asdict(row_plan), "facts": facts, "systems": {}}
        payload["elapsed_s"][f"{name}/prepare"] = round(time.perf_counter() - t0, 1)
        print(f"[{time.perf_counter() - start:6.1f} s] {name}: vocab {facts['model_vocab']}, {facts['train_blocks']} "
              f"blocks, prepared in {time.perf_counter() - t0:.1f} s", flush=True)
        row_speed = replace(speed, drop_last=facts["drop_last"])
        for system in args.systems:
            elapsed = time.perf_counter() - start
            if elapsed + longest > args.budget_s:
                result["systems"][system] = {"skipped": f"skipped: {args.budget_s:.0f} s budget"}
                print(f"[{elapsed:6.1f} s] {name} {system}: skipped (budget)", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                if system == "headstart":
                    run = run_headstart(row, corpus, cache, work / f"{name}-headstart", row_plan, peak, args.smoke)
                else:
                    run = run_baseline(system, setup, cache, work / f"{name}-{system}", row_speed, row_plan,
                                       step_flops, peak, args.smoke)
            except Exception as error:  # one system's failure leaves the others' numbers
                failed = True
                run = {"error": "".join(traceback.format_exception_only(type(error), error))[-3000:]}
                print(f"{name} {system} failed: {run['error']}", file=sys.stderr, flush=True)
            part = time.perf_counter() - t0
            longest = max(longest, part)
            run["wall_s"] = round(part, 1)
            result["systems"][system] = run
            payload["elapsed_s"][f"{name}/{system}"] = round(part, 1)
            if "error" not in run:
                mfu = _pct(run.get("mfu")) or "–"
                print(f"[{time.perf_counter() - start:6.1f} s] {name} {system}: {run['tokens_per_s']:,.0f} tokens/s, "
                      f"{run['steps_per_s']:.1f} steps/s, MFU {mfu}, part {part:.1f} s", flush=True)
            result["ratios"] = ratios(result, row)
            save(payload, out)
    payload["elapsed_s"]["total"] = round(time.perf_counter() - start, 1)
    payload["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = table(payload)
    if out is not None:
        save(payload, out)
        (out / "gpu_mfu.md").write_text(text + "\n")
        print(f"Results: {out / 'gpu_mfu.json'}, {out / 'gpu_mfu.md'}")
    else:
        write_results("gpu_mfu", payload, text)
        print(f"Results: {RESULTS / 'gpu_mfu.json'}, BENCHMARKS.md")
    print(text)
    print(f"Total {payload['elapsed_s']['total']:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
