"""The text data pipeline: tokenization throughput of the batched fast tokenizer, in one process and
in several (``data.num_proc``), and a second preparation that finds the tokenized data in the cache
and must skip tokenization.

The corpus is the shared tinyshakespeare text plus Python's docs (``python_docs``), so it is large
enough to time; the tokenizer is trained once beforehand and loaded by every measured run, so only
tokenization (and packing into blocks) is timed.

    python bench/data_pipeline.py         # about 1 min on 2 CPU cores

Writes bench/results/data_pipeline.json and the "data_pipeline" table of BENCHMARKS.md.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, markdown_table, measured_on, write_results  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def data_module(files: list[str], cache: Path, num_proc: int | None, tokenizer: str | None = None):
    from headstart.data.text_lm import TextLMDataModule

    return TextLMDataModule(train_files=files, tokenizer=tokenizer, max_length=128, packing="blocks",
                            cache_dir=str(cache), num_proc=num_proc, seed=42)


def timed_prepare(files: list[str], cache: Path, num_proc: int | None, tokenizer: str) -> dict:
    data = data_module(files, cache, num_proc, tokenizer)
    start = time.perf_counter()
    data.prepare()
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for split in data.datasets.values() for ids in split.with_format(None)["input_ids"])
    return {"num_proc": num_proc or 1, "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds), "from_cache": data.loaded_from_cache}


def main() -> None:
    from headstart.data import builtin

    work = Path(tempfile.mkdtemp(prefix="headstart-data-"))
    files = builtin.materialize("python_docs", str(work / "data"))["train"]
    if CORPUS.exists():
        files.append(str(CORPUS))
    # The tokenizer, trained once and saved: every measured run loads it.
    trainer = data_module(files, work / "tokenizer-cache", None)
    trainer.prepare()
    tokenizer = work / "tokenizer"
    trainer.tokenizer.save_pretrained(str(tokenizer))
    runs = []
    for num_proc in (None, os.cpu_count()):
        cache = work / f"cache-{num_proc or 1}"
        runs.append(timed_prepare(files, cache, num_proc, str(tokenizer)))          # tokenizes
        runs.append(timed_prepare(files, cache, num_proc, str(tokenizer)))          # must load from the cache
        shutil.rmtree(cache)
    assert not runs[0]["from_cache"] and runs[1]["from_cache"], runs
    payload = {"machine": machine(), "files": files, "bytes": sum(Path(f).stat().st_size for f in files),
               "runs": runs}
    rows = [[f"tokenize + pack, num_proc={r['num_proc']}" if not r["from_cache"] else
             f"second run (cache hit, num_proc={r['num_proc']})", r["tokens"], r["seconds"],
             r["tokens_per_s"] if not r["from_cache"] else "–", "yes" if r["from_cache"] else "no"] for r in runs]
    table = markdown_table(["run", "tokens", "seconds", "tokens/s", "tokenization skipped"], rows)
    table += measured_on(payload["machine"], "python bench/data_pipeline.py",
                         before=f"{payload['bytes'] / 1e6:.1f} MB of text (Python's docs + tinyshakespeare), WordPiece "
                                "fast tokenizer, 128-token blocks; ")
    write_results("data_pipeline", payload, table)
    print(table)


if __name__ == "__main__":
    main()
