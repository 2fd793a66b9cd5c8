"""Language-model training throughput: ``train.py`` against a plain PyTorch loop and Hugging Face's
``Trainer`` on the same model, data, batch, optimizer and schedule, measured side by side.

For each objective (masked LM on a BERT, causal LM on a GPT-2) and each repeat, the three run one after
another, so a busy machine slows all of them alike and the ratios stay meaningful. Tokens/s is what
headstart's throughput monitor logs: non-padding tokens over the last ``WINDOW`` optimizer steps,
taken every ``LOG_EVERY`` steps (the first window, with its warm-up, left out), median of the run; the
plain loop and the Trainer are timed at the same points by the same rule.

    python bench/lm_throughput.py            # both objectives, 3 repeats (about 8 min on 2 CPU cores)
    python bench/lm_throughput.py --repeats 1 --objectives clm

Writes bench/results/lm_throughput.json and the "lm_throughput" table of BENCHMARKS.md. Needs the
``bench`` extra (accelerate, for the Trainer): ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_baselines  # noqa: E402
from common import REPO, RESULTS, logged, machine, markdown_table, measured_on, run_train, write_results  # noqa: E402
from lm_baselines import Setup  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
WINDOW, LOG_EVERY, WARMUP_RATIO, WEIGHT_DECAY = 20, 10, 0.06, 0.01
# objective -> the model, tokenizer and settings all three systems use
OBJECTIVES = {
    "mlm": {"experiment": "text_mlm", "model": "bert_small", "label": "BERT, 4 layers x 256", "tokenizer_type": "wordpiece", "batch_size": 16,
            "lr": 5e-4, "steps": 40,
            "arch": {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "intermediate_size": 1024, "max_position_embeddings": 512}},
    "clm": {"experiment": "text_clm", "model": "gpt_tiny", "label": "GPT-2, 4 layers x 256", "tokenizer_type": "bpe", "batch_size": 16,
            "lr": 5e-4, "steps": 40,
            "arch": {"model_type": "gpt2", "n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 512}},
}
MAX_LENGTH, VOCAB = 128, 8000


def windowed_rates(step_times: list[float], step_tokens: list[int]) -> list[float]:
    """Tokens/s at every LOG_EVERY-th step once WINDOW steps have ended, over the window of the last
    WINDOW step ends: the rule of Lightning's ThroughputMonitor as headstart configures it.
    ``step_times[i]``/``step_tokens[i]`` are the end time and tokens of step i (index 0: the start)."""
    rates = []
    for step in range(WINDOW, len(step_times), LOG_EVERY):
        first = step - WINDOW + 1
        rates.append(sum(step_tokens[first + 1: step + 1]) / (step_times[step] - step_times[first]))
    return rates


def setup(objective: str) -> Setup:
    """The model, data and optimisation all three systems share (bench/lm_baselines.py)."""
    spec = OBJECTIVES[objective]
    return Setup(objective=objective, tokenizer_type=spec["tokenizer_type"], vocab_size=VOCAB, max_length=MAX_LENGTH,
                 batch_size=spec["batch_size"], lr=spec["lr"], steps=spec["steps"], arch=spec["arch"], corpus=CORPUS,
                 weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP_RATIO)


def prepared(objective: str, cache: Path):
    """The data module (tokenizer and packed blocks, from train.py's cache), a fresh model and the
    objective's collator, as headstart builds them."""
    return lm_baselines.prepared(setup(objective), cache)


def _rates(log: lm_baselines.StepLog) -> list[float]:
    return windowed_rates([log.times[step] for step in range(len(log.times))], log.tokens[:len(log.times)])


def plain_loop(objective: str, cache: Path) -> list[float]:
    """What a researcher writes by hand: DataLoader, forward, ``.loss.backward()``, AdamW with the same
    no-decay groups, the same linear warm-up schedule (lm_baselines.plain_loop, timed at every step)."""
    return _rates(lm_baselines.plain_loop(setup(objective), cache))


def hf_trainer(objective: str, cache: Path, output_dir: Path) -> list[float]:
    """Hugging Face's Trainer with the same settings: no gradient clipping (train.py has none by
    default), no evaluation or saving inside the timed steps, its default optimizer (lm_baselines.hf_trainer)."""
    return _rates(lm_baselines.hf_trainer(setup(objective), cache, output_dir))


def headstart_run(objective: str, cache: Path, root: Path) -> tuple[list[float], dict]:
    """``python train.py`` as a user runs it (default loggers and callbacks), the same settings."""
    spec = OBJECTIVES[objective]
    arch = [f"model.arch.{k}={v}" for k, v in spec["arch"].items() if k != "model_type"]
    run_dir, wall = run_train([
        f"experiment={spec['experiment']}", f"model={spec['model']}", *arch, "data=text_files",
        f"data.train_files=[{CORPUS}]", f"data.tokenizer_type={spec['tokenizer_type']}", f"data.vocab_size={VOCAB}",
        f"data.max_length={MAX_LENGTH}", f"data.batch_size={spec['batch_size']}", f"task.optimizer.lr={spec['lr']}",
        f"trainer.max_steps={spec['steps']}", "trainer.limit_val_batches=0", "test_after_fit=false",
        f"trainer.log_every_n_steps={LOG_EVERY}", f"paths.cache_dir={cache}",
    ], root)
    results = json.loads((run_dir / "results.json").read_text())
    return logged(run_dir, "train/device/items_per_sec"), {"wall_s": round(wall, 1), **results.get("time_to_first_step", {})}


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}" if len(values) > 1 else "–"


def table(payload: dict) -> str:
    """Median tokens/s of each system and the median ratio over the repeats (a shared machine has
    outliers), with the range of the ratios."""
    rows = []
    for objective, result in payload["objectives"].items():
        speeds = {s: statistics.median(rep["tokens_per_s"][s] for rep in result["repeats"])
                  for s in ("headstart", "plain", "hf_trainer")}
        vs_plain, vs_hf = result["ratio_vs_plain"], result["ratio_vs_hf_trainer"]
        rows.append([objective, result["settings"].get("label", result["settings"]["model"]), speeds["headstart"], speeds["plain"], speeds["hf_trainer"],
                     f"{statistics.median(vs_plain):.3f}", spread(vs_plain), f"{statistics.median(vs_hf):.3f}",
                     spread(vs_hf)])
    repeats = len(next(iter(payload["objectives"].values()))["repeats"])
    return markdown_table(["objective", "model", "headstart tok/s", "plain loop tok/s", "HF Trainer tok/s",
                           "vs plain", "range", "vs HF Trainer", "range"], rows) + measured_on(
        payload["machine"], "python bench/lm_throughput.py", before=f"Medians of {repeats} repeats, ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the saved results")
    args = parser.parse_args()
    if args.table_only:
        payload = json.loads((RESULTS / "lm_throughput.json").read_text())
        write_results("lm_throughput", payload, table(payload))
        return
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} is missing: this benchmark trains on the shared tinyshakespeare text.")
    work = Path(tempfile.mkdtemp(prefix="headstart-lm-bench-"))
    cache = work / "cache"
    payload = {"machine": machine(), "window": WINDOW, "log_every": LOG_EVERY, "objectives": {}}
    for objective in args.objectives:
        prepared(objective, cache)  # tokenize once, outside the timings
        repeats = []
        for r in range(args.repeats):
            rates = {"headstart": headstart_run(objective, cache, work / f"{objective}-{r}")[0],
                     "plain": plain_loop(objective, cache),
                     "hf_trainer": hf_trainer(objective, cache, work / f"{objective}-{r}-hf")}
            medians = {system: statistics.median(values) for system, values in rates.items()}
            repeats.append({"tokens_per_s": medians, "windows": rates})
            print(objective, r, {k: round(v) for k, v in medians.items()}, flush=True)
        payload["objectives"][objective] = {
            "settings": OBJECTIVES[objective], "repeats": repeats,
            "ratio_vs_plain": [rep["tokens_per_s"]["headstart"] / rep["tokens_per_s"]["plain"] for rep in repeats],
            "ratio_vs_hf_trainer": [rep["tokens_per_s"]["headstart"] / rep["tokens_per_s"]["hf_trainer"]
                                    for rep in repeats]}
    write_results("lm_throughput", payload, table(payload))
    print(table(payload))


if __name__ == "__main__":
    main()
