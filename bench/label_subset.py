"""The cost of keeping a few labels: selecting ``data.label_count`` / ``data.label_fraction`` rows of a
large tokenized labelled split, which every fine-tuning stage of a label-efficiency pipeline does.

A 50,000-row labelled .tsv is written from tinyshakespeare's lines (label: the line's length bucket),
tokenized once, then each selection is timed on the tokenized training split (torch format, as the
data module holds it). The "element by element" row reads the label column the way headstart did
before (a tensor per row), for comparison.

    python bench/label_subset.py          # about 1 min on 2 CPU cores

Writes bench/results/label_subset.json and the "label_subset" table of BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, markdown_table, measured_on, write_results  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
ROWS = 50_000


def write_rows(path: Path) -> None:
    lines = [line for line in CORPUS.read_text().splitlines() if line.strip()]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text", "label"])
        for i in range(ROWS):
            line = lines[i % len(lines)]
            writer.writerow([line, min(len(line) // 10, 4)])


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from headstart.data.subsets import LabelAmount
    from headstart.data.text_classification import TextClassificationDataModule

    with tempfile.TemporaryDirectory(prefix="headstart-subset-") as tmp:
        path = Path(tmp) / "labelled.tsv"
        write_rows(path)
        data = TextClassificationDataModule(train_files=[str(path)], cache_dir=str(Path(tmp) / "cache"),
                                            vocab_size=2000, max_length=32, val_fraction=0.02)
        data.prepare()
        train = data.datasets["train"]
        rows = []
        for name, amount in (("label_count=1000, stratified", LabelAmount(count=1000)),
                             ("label_count=1000, balanced", LabelAmount(count=1000, sampling="balanced")),
                             ("label_count=100, per_class", LabelAmount(count=100, sampling="per_class")),
                             ("label_fraction=0.05", LabelAmount(fraction=0.05))):
            rows.append({"selection": name, "rows": len(train), "kept": len(amount.subset(train, seed=0, stratify_by="labels")),
                         "seconds": round(timed(lambda a=amount: a.subset(train, seed=0, stratify_by="labels")), 4)})
        rows.append({"selection": "label column read element by element (before)", "rows": len(train), "kept": None,
                     "seconds": round(timed(lambda: [int(v) for v in train["labels"]], repeats=1), 4)})
    payload = {"machine": machine(), "rows": rows}
    table = markdown_table(["selection", "training rows", "kept", "seconds"],
                           [[r["selection"], r["rows"], r["kept"], r["seconds"]] for r in rows])
    table += measured_on(payload["machine"], "python bench/label_subset.py",
                         before=f"{ROWS:,} labelled rows (.tsv), tokenized; best of 3; ")
    write_results("label_subset", payload, table)
    print(table)


if __name__ == "__main__":
    main()
