"""Pretraining on real text: the product reviews of ../shared/data/reviews (books, dvd, electronics),
as a user runs them with `experiment=label_efficiency_text_files` on the .tsv files, no conversion.

The first domain's run pretrains on the unlabelled text of the three `_train` files; the other
domains reuse that pretraining (`pipeline.pretrain.from`), one domain at a time. Each domain then fine-tunes from it and
trains from scratch on 100, 300, 1000 and all (about 1,200) labelled `_train` rows, 3 seeds, learning
rates (and the fine-tuned model's layer decay) chosen on `_dev`, accuracy on the held-out `_test`, each
gain with its 95% interval (a paired bootstrap over seeds and test reviews).

    python bench/reviews_label_efficiency.py [--domains books dvd] [extra train.py overrides ...]

Writes bench/results/reviews_label_efficiency.json, a plot per domain beside it, and the
"reviews_label_efficiency" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, chosen, machine, markdown_table, measured_on, run_train, write_results  # noqa: E402

REVIEWS = REPO.parent / "shared" / "data" / "reviews"
DOMAINS = ("books", "dvd", "electronics")


def domain_overrides(domain: str) -> list[str]:
    corpus = ",".join(str(REVIEWS / f"{d}_train.tsv") for d in DOMAINS)
    return ["experiment=label_efficiency_text_files", f"pipeline.files.corpus=[{corpus}]",
            f"pipeline.files.train=[{REVIEWS / f'{domain}_train.tsv'}]",
            f"pipeline.files.dev=[{REVIEWS / f'{domain}_dev.tsv'}]",
            f"pipeline.files.test=[{REVIEWS / f'{domain}_test.tsv'}]", "pipeline.files.text_column=sentence"]


def run_domain(domain: str, root: Path, extra: list[str], pretrain_dir: Path | None, name: str) -> tuple[Path, dict]:
    reuse = [f"pipeline.pretrain.from={pretrain_dir}"] if pretrain_dir else []
    run_dir, wall = run_train(["logger=csv", *domain_overrides(domain), *reuse, *extra], root / domain,
                              timeout=3 * 3600, results_glob="outputs/*/*/pipeline.json")
    pipeline = json.loads((run_dir / "pipeline.json").read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "label_efficiency.png", RESULTS / f"{name}_{domain}.png")
    return run_dir, {"wall_s": round(wall, 1), "reused_pretraining": pretrain_dir is not None,
                     "summary": pipeline["label_efficiency"], "runs": pipeline["runs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="*", default=[])
    parser.add_argument("--name", default="reviews_label_efficiency",
                        help="results file, plots and BENCHMARKS.md table name")
    args, extra = parser.parse_known_args()
    domains = chosen(parser, args.domains, DOMAINS, "domains")
    if not REVIEWS.is_dir():
        sys.exit(f"{REVIEWS} is missing: this benchmark reads the shared reviews data.")
    with tempfile.TemporaryDirectory(prefix="bench-reviews-") as tmp:
        # The first domain pretrains (its wall time is the whole experiment's); the others reuse that
        # pretraining. One at a time: two train.py processes on 2 cores spin each other's threads.
        first_dir, first = run_domain(domains[0], Path(tmp), extra, None, args.name)
        results = {domains[0]: first}
        for domain in domains[1:]:
            results[domain] = run_domain(domain, Path(tmp), extra, first_dir / "pretrain", args.name)[1]
    rows = []
    for domain, result in results.items():
        for row in result["summary"]:
            interval = f" [{row['gain_low'] * 100:+.1f}, {row['gain_high'] * 100:+.1f}]" if "gain_low" in row else ""
            rows.append([domain, f"{row['train_examples']}" + (" (all)" if row["labels"] == "all" else ""),
                         f"{row['finetune_mean']:.3f} ± {row['finetune_std']:.3f}",
                         f"{row['scratch_mean']:.3f} ± {row['scratch_std']:.3f}", f"{row['gain'] * 100:+.1f}{interval}",
                         f"{row['seeds_won']}/{row['seeds_paired']}", str(row["test_examples"])])
    walls = ", ".join(f"{d} {r['wall_s'] / 60:.1f} min" + (" (pretraining reused)" if r["reused_pretraining"]
                                                             else " (with pretraining)")
                      for d, r in results.items())
    command = " ".join(["python bench/reviews_label_efficiency.py", *sys.argv[1:]])
    table = markdown_table(["domain", "labelled examples", "pretrained + fine-tuned", "from scratch",
                            "gain (points) [95% interval]", "seeds won", "test reviews"], rows)
    table += measured_on(machine(), command, before=f"Wall time per domain: {walls}. ",
                         after="; plots: " + ", ".join(f"[{d}](bench/results/{args.name}_{d}.png)" for d in results))
    write_results(args.name, {"machine": machine(), "command": command, "domains": results}, table)
    print(table)


if __name__ == "__main__":
    main()
