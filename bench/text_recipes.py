"""Which pretraining pays on real text of this size on 2 CPU cores: the alternatives measured before
choosing the recipe of `experiment=label_efficiency_text_files`, on one review domain (books; the
corpus is the three `_train` files' text), at 100 and 1000 labels, 3 seeds, each model's learning rate
chosen on `_dev`, accuracy on `_test`. Recipes are compared on `_dev` (the "dev gain" column: the
chosen fine-tuned run's dev accuracy minus the chosen scratch run's, mean over seeds); `_test` is
reported. Every recipe is the shipped experiment with stage overrides:

- `word2vec-document`: the shipped recipe (document-context word2vec, 30 epochs -> bag-of-embeddings
  classifier, its embeddings' rate 0.1 or 0.3 of the head's, chosen on dev);
- `word2vec-document-10-epochs`: the recipe before the splits were made disjoint (10 epochs);
- `word2vec-document-10-epochs-decay-0.03`: that, with nearly frozen embeddings among dev's choices;
- `word2vec-skipgram`: the same with word2vec's usual 5-word window;
- `masked-lm`: a small BERT (`bert_tiny`, 2 x 128) pretrained with masked LM for 12 minutes, then
  fine-tuned (all weights, mean pooling), against the same BERT from scratch.

    python bench/text_recipes.py [--recipes masked-lm ...] [--domain books]   # ~5 min a word2vec recipe
    python bench/text_recipes.py --from-runs word2vec-document=<pipeline dir> ...  # tabulate finished runs

Writes bench/results/text_recipes.json and the "text_recipes" table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import chosen, machine, markdown_table, measured_on, run_train, write_results  # noqa: E402
from reviews_label_efficiency import DOMAINS, domain_overrides  # noqa: E402


def quoted(items: list[str]) -> str:
    return "[" + ",".join(f'"{o}"' for o in items) + "]"


RECIPES = {
    "word2vec-document": [],  # the shipped recipe: 30 epochs (at most 10,000 steps) of pretraining
    # The recipe before issue 20: 10 epochs of pretraining.
    "word2vec-document-10-epochs": ['pipeline.pretrain.overrides=["trainer.max_epochs=10"]'],
    # The shipped recipe with full fine-tuning (a layer decay of 1.0) among dev's choices too.
    "word2vec-document-decay-1.0": ['pipeline.finetune.search=["transfer.layer_lr_decay=0.1,0.3,1.0"]'],
    # The 10-epoch recipe with nearly frozen embeddings (a 0.03 layer decay) among dev's choices.
    "word2vec-document-10-epochs-decay-0.03": ['pipeline.pretrain.overrides=["trainer.max_epochs=10"]',
                                               'pipeline.finetune.search=["transfer.layer_lr_decay=0.03,0.1,0.3"]'],
    "word2vec-skipgram": ['pipeline.pretrain.overrides=["task.mode=skipgram"]'],
    "masked-lm": [
        "pipeline.pretrain.experiment=text_mlm",
        "pipeline.pretrain.overrides=" + quoted(["~task.mode", "~model.arch.hidden_size", "data.packing=blocks",
                                                 "data.max_length=128", "trainer.max_epochs=null",
                                                 "trainer.max_steps=4000", "trainer.max_time=00:00:12:00"]),
        "pipeline.finetune.overrides=" + quoted(["model=bert_tiny", "~model.arch.hidden_size", "data.max_length=128",
                                                 "transfer=finetune", "~transfer.layer_lr_decay"]),
        "pipeline.learning_rates=[3e-4,1e-3]",
    ],
}


def _result(recipe: str, run_dir: Path, wall: float | None) -> dict:
    """What the table needs of one recipe's finished pipeline run in ``run_dir``."""
    pipeline = json.loads((run_dir / "pipeline.json").read_text())
    pretrain = json.loads((run_dir / "pretrain" / "results.json").read_text()) \
        if (run_dir / "pretrain" / "results.json").is_file() else pipeline["stages"]["pretrain"]
    dev = {name: stage["metrics"].get("val/acc") for name, stage in pipeline["stages"].items() if name != "pretrain"}
    return {"overrides": RECIPES[recipe], "wall_s": round(wall, 1) if wall else None,
            "summary": pipeline["label_efficiency"], "runs": pipeline["runs"], "dev_acc": dev,
            "pretrain_metrics": pretrain.get("metrics"), "pretrain_steps": pretrain.get("global_step")}


def dev_gain(result: dict, labels: str) -> float:
    """The recipe's gain on the dev file (what compares recipes): the mean over seeds of the chosen
    fine-tuned run's dev accuracy minus the chosen scratch run's."""
    amount = "labels-all" if labels == "all" else f"labels-n{labels}"
    pairs = [(acc, result["dev_acc"].get(name.replace("finetune/", "scratch/", 1)))
             for name, acc in result["dev_acc"].items() if name.startswith(f"finetune/{amount}-seed")]
    return sum(f - s for f, s in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=[])
    parser.add_argument("--domain", default="books", choices=DOMAINS)
    parser.add_argument("--from-runs", nargs="*", default=[], metavar="RECIPE=PIPELINE_DIR",
                        help="tabulate finished pipeline runs of these recipes (run by hand with the recipe's "
                             "overrides and pipeline.label_counts=[100,1000]) instead of running them")
    args, extra = parser.parse_known_args()
    finished = dict(item.split("=", 1) for item in args.from_runs)
    recipes = chosen(parser, args.recipes or list(finished), RECIPES, "recipes")
    results = {}
    for recipe, run_dir in finished.items():
        results[recipe] = _result(recipe, Path(run_dir), None)
    for recipe in (r for r in recipes if r not in finished):
        with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
            run_dir, wall = run_train(["logger=csv", *domain_overrides(args.domain), *RECIPES[recipe],
                                       "pipeline.label_counts=[100,1000]", *extra], Path(tmp), timeout=3 * 3600,
                                      results_glob="outputs/*/*/pipeline.json")
            results[recipe] = _result(recipe, run_dir, wall)
        print(recipe, [(r["labels"], round(r["gain"], 4)) for r in results[recipe]["summary"]], flush=True)
    rows = [[recipe, row["labels"], f"{dev_gain(result, row['labels']) * 100:+.1f}",
             f"{row['finetune_mean']:.3f} ± {row['finetune_std']:.3f}",
             f"{row['scratch_mean']:.3f} ± {row['scratch_std']:.3f}",
             f"{row['gain'] * 100:+.1f}" + (f" [{row['gain_low'] * 100:+.1f}, {row['gain_high'] * 100:+.1f}]"
                                           if "gain_low" in row else ""),
             f"{row['seeds_won']}/{row['seeds_paired']}",
             f"{result['wall_s'] / 60:.0f} min" if result["wall_s"] else "–"]
            for recipe, result in results.items() for row in result["summary"] if row["labels"] in ("100", "1000")]
    table = markdown_table(["recipe", "labels", "dev gain (chooses)", "pretrained + fine-tuned (test)",
                            "from scratch (test)", "test gain [95% interval]", "seeds won", "wall (whole run)"], rows)
    command = " ".join(["python bench/text_recipes.py", *sys.argv[1:]])
    if finished:  # the rows of runs made by hand: the command that makes them again
        command = " ".join(["python bench/text_recipes.py --recipes", *results, *extra])
    table += measured_on(machine(), command, before=f"Reviews, {args.domain}: test accuracy, mean ± std over 3 seeds" + (
        " (runs made by hand with each recipe's overrides, tabulated with --from-runs; wall times not comparable, "
        "as some shared the cores)" if finished else "") + "; ")
    write_results("text_recipes", {"machine": machine(), "command": command, "domain": args.domain,
                                   "recipes": results}, table)
    print(table)


if __name__ == "__main__":
    main()
