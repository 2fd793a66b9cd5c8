"""The measured effect of each speed switch, and DDP on CPU: every row runs ``train.py`` twice, the
switch off and on, one after the other with everything else the same, and reports the throughput
monitor's median (tokens/s for text, images/s for vision) and the ratio on/off.

    python bench/speed_switches.py                   # every switch (about 7 min on 2 CPU cores)
    python bench/speed_switches.py fused_adamw ddp   # some of them

Writes bench/results/speed_switches.json and the "speed_switches" table of BENCHMARKS.md. GPU-only
switches (bf16 autocast on tensor cores, pinned-memory non-blocking copies) are listed with what
this machine can say about them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import chosen, logged, machine, markdown_table, measured_on, median, run_train, write_results  # noqa: E402

TEXT = ["experiment=text_mlm", "model=bert_small", "data.batch_size=16", "trainer.max_steps=30", "trainer.limit_val_batches=0",
        "test_after_fit=false", "logger=csv", "trainer.enable_progress_bar=false"]
LINES = [*TEXT, "data.packing=lines"]
VISION = ["experiment=vision_classification", "trainer.max_epochs=3", "logger=csv", "trainer.enable_progress_bar=false",
          "data.batch_size=128"]
CLM = ["experiment=text_clm", "model.arch.n_embd=256", "model.arch.n_layer=4", "data.batch_size=16", "trainer.max_steps=40",
       "trainer.limit_val_batches=0", "test_after_fit=false", "logger=csv", "trainer.enable_progress_bar=false"]
# name -> (what it is, base overrides, off, on, the metric compared)
SWITCHES = {
    "sdpa": ("scaled-dot-product attention vs eager (model.attn_implementation)", TEXT,
             ["model.attn_implementation=eager"], ["model.attn_implementation=sdpa"], "items"),
    "fused_adamw": ("fused AdamW (task.optimizer.fused)", TEXT, ["task.optimizer.fused=false"],
                    ["task.optimizer.fused=true"], "items"),
    "compile": ("torch.compile (speed.compile), GPT-2 4x256", CLM, ["speed.compile=false"], ["speed.compile=true"],
                "items"),
    "packing": ("packed 128-token blocks vs a line per example (data.packing), non-padding tokens/s", TEXT,
                ["data.packing=lines"], ["data.packing=blocks"], "items"),
    "bucketing": ("length bucketing of line-by-line data (data.bucket_by_length)", LINES,
                  ["data.bucket_by_length=false"], ["data.bucket_by_length=true"], "items"),
    "channels_last": ("channels-last CNN (speed.channels_last), digits", VISION, ["speed.channels_last=false"],
                      ["speed.channels_last=true"], "samples"),
    "bf16": ("bf16 autocast (trainer.precision=bf16-mixed), digits CNN", VISION, ["trainer.precision=32-true"],
             ["trainer.precision=bf16-mixed"], "samples"),
    "workers": ("2 data-loader workers vs 0 (data.num_workers)", TEXT, ["data.num_workers=0"],
                ["data.num_workers=2"], "items"),
    "ddp": ("DDP, 2 CPU processes vs 1, same global batch 16 (per-process batch 8 vs 16)", TEXT,
            ["trainer.devices=1", "data.batch_size=16"],
            ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=8"], "items"),
}


def throughput(run_dir: Path, metric: str, world_size: int) -> float | None:
    """Median over the run of what the monitor logged; under DDP the per-device rate times the processes."""
    per_device = median(logged(run_dir, f"train/device/{metric}_per_sec"))
    return per_device * world_size if per_device is not None else None


def measure(name: str, root: Path, cache: Path) -> dict:
    about, base, off, on, metric = SWITCHES[name]
    row = {"switch": name, "about": about, "metric": f"{metric}/s", "base": base, "off": off, "on": on}
    for state, overrides in (("off", off), ("on", on)):
        run_dir, wall = run_train([*base, *overrides, f"paths.cache_dir={cache}"], root / f"{name}-{state}")
        results = json.loads((run_dir / "results.json").read_text())
        row[state] = {"overrides": overrides, "per_s": throughput(run_dir, metric, results["world_size"]),
                      "wall_s": round(wall, 1), "first_step": results.get("time_to_first_step")}
    row["ratio"] = row["on"]["per_s"] / row["off"]["per_s"] if row["on"]["per_s"] and row["off"]["per_s"] else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("switches", nargs="*", metavar="SWITCH", help=f"any of {', '.join(SWITCHES)} (default: all)")
    args = parser.parse_args()
    args.switches = chosen(parser, args.switches, SWITCHES, "switches")
    work = Path(tempfile.mkdtemp(prefix="headstart-switches-"))
    rows = []
    for name in args.switches:
        row = measure(name, work, work / "cache")
        print(name, row["off"]["per_s"], row["on"]["per_s"], row["ratio"], flush=True)
        rows.append(row)
    payload = {"machine": machine(), "switches": rows}
    table = markdown_table(["switch", "off", "on", "on / off", "unit"], [
        [r["about"], r["off"]["per_s"], r["on"]["per_s"], f"{r['ratio']:.2f}x" if r["ratio"] else None, r["metric"]]
        for r in rows])
    table += measured_on(payload["machine"], "python bench/speed_switches.py",
                         after="; median of the throughput monitor over each run, one run each way")
    write_results("speed_switches", payload, table)
    print(table)


if __name__ == "__main__":
    main()
