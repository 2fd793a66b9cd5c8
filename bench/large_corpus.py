"""The text recipe on a large corpus, within its time budget: the README's reviews experiment
(`experiment=label_efficiency_text_files`, books) with a pretraining corpus of ~60,000 sentences
instead of the 3,626 training reviews, at 100 and 1,000 labels, 3 seeds, as a new user would run it.

The corpus is made here, from text this machine has: the sentences of the three domains' `_train`
reviews (never `_dev` or `_test`), then Python's documentation (pydoc topics and the standard
library's docstrings) split into sentences, then tinyshakespeare's lines, until `--sentences` are
written (exact duplicates left out).

    python bench/large_corpus.py [--sentences 60000] [extra train.py overrides ...]   # ~15 min on 2 CPU cores

Writes bench/results/large_corpus.json and the "large_corpus" table of BENCHMARKS.md: the corpus,
the pretraining's steps and wall time, the whole experiment's wall time and the label-efficiency rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, markdown_table, measured_on, run_train, write_results  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
REVIEWS = SHARED / "reviews"
DOMAINS = ("books", "dvd", "electronics")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if len(s.split()) >= 3]


def corpus_sentences(limit: int) -> tuple[list[str], dict[str, int]]:
    """Up to ``limit`` distinct sentences, and how many came from each source."""
    sys.path.insert(0, str(REPO / "src"))
    from headstart.data import builtin

    def reviews():
        for domain in DOMAINS:
            with open(REVIEWS / f"{domain}_train.tsv", newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    yield from _sentences(row["sentence"])

    def python_docs():
        for text, *_ in builtin.pydoc_paragraphs():
            yield from _sentences(text)
        for text in builtin.stdlib_docstring_paragraphs():
            yield from _sentences(text)

    def shakespeare():
        for line in (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines():
            if len(line.split()) >= 3:
                yield line.strip()

    seen: set[str] = set()
    counts: dict[str, int] = {}
    for name, source in (("reviews _train", reviews), ("Python docs", python_docs), ("tinyshakespeare", shakespeare)):
        for sentence in source():
            if len(seen) >= limit:
                return list(seen), counts
            if sentence not in seen:
                seen.add(sentence)
                counts[name] = counts.get(name, 0) + 1
    return list(seen), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=60_000)
    args, extra = parser.parse_known_args()
    if not REVIEWS.is_dir():
        sys.exit(f"{REVIEWS} is missing: this benchmark reads the shared reviews data.")
    sentences, sources = corpus_sentences(args.sentences)
    sentences.sort()  # a fixed order (set order changes with the process's hash seed)
    words = sum(len(s.split()) for s in sentences)
    with tempfile.TemporaryDirectory(prefix="bench-large-corpus-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        overrides = ["experiment=label_efficiency_text_files", "logger=csv", f"pipeline.files.corpus=[{corpus}]",
                     f"pipeline.files.train=[{REVIEWS / 'books_train.tsv'}]",
                     f"pipeline.files.dev=[{REVIEWS / 'books_dev.tsv'}]",
                     f"pipeline.files.test=[{REVIEWS / 'books_test.tsv'}]", "pipeline.files.text_column=sentence",
                     "pipeline.label_counts=[100,1000]", *extra]
        run_dir, wall = run_train(overrides, Path(tmp) / "run", timeout=3 * 3600,
                                  results_glob="outputs/*/*/pipeline.json")
        pipeline = json.loads((run_dir / "pipeline.json").read_text())
        pretrain = json.loads((run_dir / "pretrain" / "results.json").read_text())
        pretrain_wall = pretrain.get("wall_s")
    rows = [[f"{args.sentences:,} sentences ({words:,} words)", f"{pretrain['global_step']:,}",
             f"{pretrain['epochs']}", f"{pretrain_wall / 60:.1f} min" if pretrain_wall else "?",
             str(row["train_examples"]), f"{row['finetune_mean']:.3f} ± {row['finetune_std']:.3f}",
             f"{row['scratch_mean']:.3f} ± {row['scratch_std']:.3f}",
             f"{row['gain'] * 100:+.1f} [{row['gain_low'] * 100:+.1f}, {row['gain_high'] * 100:+.1f}]",
             f"{row['seeds_won']}/{row['seeds_paired']}", f"{wall / 60:.1f} min"]
            for row in pipeline["label_efficiency"]]
    command = " ".join(["python bench/large_corpus.py", *sys.argv[1:]])
    table = markdown_table(["corpus", "pretraining steps", "epochs", "pretraining wall", "labelled examples",
                            "pretrained + fine-tuned", "from scratch", "gain (points) [95% interval]", "seeds won",
                            "whole experiment"], rows)
    table += measured_on(machine(), command, before=(
        f"Corpus: {', '.join(f'{n:,} from {s}' for s, n in sources.items())}; books reviews labelled, test accuracy on "
        f"the {pipeline['label_efficiency'][0]['test_examples']} held-out `books_test` reviews, mean ± std over 3 "
        "seeds; "))
    write_results("large_corpus", {"machine": machine(), "command": command, "sentences": len(sentences),
                                   "words": words, "sources": sources, "wall_s": round(wall, 1),
                                   "pretrain": {k: pretrain.get(k) for k in ("global_step", "epochs", "wall_s")},
                                   "summary": pipeline["label_efficiency"], "runs": pipeline["runs"]}, table)
    print(table)


if __name__ == "__main__":
    main()
