"""Which pretraining pays on real text of this size on 2 CPU cores: the alternatives measured before
choosing the recipe of `experiment=label_efficiency_text_files`, on one review domain (books; the
corpus is the three `_train` files' text), at 100 and 1000 labels, 3 seeds, each model's learning rate
chosen on `_dev`, accuracy on `_test`. Every recipe is the shipped experiment with stage overrides:

- `word2vec-document`: the shipped recipe (document-context word2vec -> bag-of-embeddings classifier);
- `word2vec-skipgram`: the same with word2vec's usual 5-word window;
- `masked-lm`: a small BERT (`bert_tiny`, 2 x 128) pretrained with masked LM for 12 minutes, then
  fine-tuned (all weights, mean pooling), against the same BERT from scratch.

    python bench/text_recipes.py [--recipes masked-lm ...] [--domain books]   # about 1 hour on 2 CPU cores

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
    "word2vec-document": [],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=[])
    parser.add_argument("--domain", default="books", choices=DOMAINS)
    args, extra = parser.parse_known_args()
    recipes = chosen(parser, args.recipes, RECIPES, "recipes")
    results = {}
    for recipe in recipes:
        with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
            run_dir, wall = run_train(["logger=csv", *domain_overrides(args.domain), *RECIPES[recipe],
                                       "pipeline.label_counts=[100,1000]", *extra], Path(tmp), timeout=3 * 3600,
                                      results_glob="outputs/*/*/pipeline.json")
            pipeline = json.loads((run_dir / "pipeline.json").read_text())
            pretrain = json.loads((run_dir / "pretrain" / "results.json").read_text())
        results[recipe] = {"overrides": RECIPES[recipe], "wall_s": round(wall, 1), "summary": pipeline["label_efficiency"],
                           "runs": pipeline["runs"], "pretrain_metrics": pretrain["metrics"],
                           "pretrain_steps": pretrain["global_step"]}
        print(recipe, [(r["labels"], round(r["gain"], 4)) for r in pipeline["label_efficiency"]], flush=True)
    rows = [[recipe, row["labels"], f"{row['finetune_mean']:.3f} ± {row['finetune_std']:.3f}",
             f"{row['scratch_mean']:.3f} ± {row['scratch_std']:.3f}", f"{row['gain'] * 100:+.1f}",
             f"{row['seeds_won']}/{row['seeds_paired']}", f"{result['wall_s'] / 60:.0f} min"]
            for recipe, result in results.items() for row in result["summary"]]
    table = markdown_table(["recipe", "labels", "pretrained + fine-tuned", "from scratch", "gain (points)",
                            "seeds won", "wall (whole run)"], rows)
    command = " ".join(["python bench/text_recipes.py", *sys.argv[1:]])
    table += measured_on(machine(), command, before=f"Reviews, {args.domain}: test accuracy, mean ± std over 3 seeds; ")
    write_results("text_recipes", {"machine": machine(), "command": command, "domain": args.domain,
                                   "recipes": results}, table)
    print(table)


if __name__ == "__main__":
    main()
