"""W&B artifacts and lineage of a pipeline, read back from its offline run files: each stage's job
type and tags, the exports and best checkpoints logged as ``model`` artifacts, the fine-tuning
stage's use of the pretraining export, and the one command that syncs it all."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_MODEL, run_train
from wandb_records import summary

from headstart.tracking.artifacts import artifact_name, sync_command


def test_artifact_names_are_what_wandb_accepts():
    assert artifact_name("text_pipeline-12-00-01-finetune/labels=100") == "text_pipeline-12-00-01-finetune-labels-100"
    assert artifact_name("///") == "headstart"


def test_no_offline_runs_means_no_sync_command(tmp_path):
    assert sync_command(tmp_path) is None


@pytest.mark.slow
def test_pipeline_runs_carry_job_types_artifacts_and_lineage(tmp_path, corpus_dir, shared_cache):
    pretrain = ["data=text_files", f"data.train_files=[{corpus_dir / 'train.txt'}]",
                f"data.val_files=[{corpus_dir / 'val.txt'}]", "data.max_length=32", "data.vocab_size=300",
                "data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    finetune = ["data=text_classification_files", f"data.train_files=[{corpus_dir / 'cls_train.jsonl'}]",
                f"data.val_files=[{corpus_dir / 'cls_val.jsonl'}]", f"data.test_files=[{corpus_dir / 'cls_test.jsonl'}]",
                "data.max_length=32", "data.batch_size=16", "trainer.max_steps=6", "trainer.val_check_interval=3"]
    quoted = lambda items: "[" + ",".join(f'"{o}"' for o in items) + "]"  # noqa: E731
    proc = run_train(["experiment=text_mlm_pipeline", "logger=default", *TINY_MODEL,
                      f"pipeline.pretrain.overrides={quoted(pretrain)}", f"pipeline.finetune.overrides={quoted(finetune)}",
                      "pipeline.label_counts=null", "pipeline.seeds=null", "pipeline.learning_rates=null"],
                     tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [out] = [p.parent for p in tmp_path.glob("outputs/*/*/pipeline.json")]

    runs = {stage: summary(next((out / stage / "wandb").glob("offline-run-*"))) for stage in
            ("pretrain", "finetune", "scratch")}
    for stage, run in runs.items():
        assert run["job_type"] == stage
        assert "text_mlm_pipeline" in run["tags"]
        assert "/" not in run["name"] and len(run["name"]) < 100  # short, no paths
        # Every stage's export and best checkpoint (the fine-tuned and scratch models export their heads).
        assert {a["name"].rsplit("-", 1)[-1] for a in run["artifacts"]} == {"export", "checkpoint"}, run["artifacts"]
        assert all(a["type"] == "model" for a in run["artifacts"])
    [export] = [a for a in runs["pretrain"]["artifacts"] if a["name"].endswith("-export")]
    assert "model.safetensors" in export["files"] and "config.json" in export["files"]
    # The fine-tuned model declares the pretraining export it started from; the scratch baseline none.
    used = json.loads(runs["finetune"]["config"]["headstart/used_artifacts"])
    assert used == [f"{export['name']}:latest"]
    assert "headstart/used_artifacts" not in runs["scratch"]["config"]
    lineage = json.loads((out / "finetune" / "wandb_lineage.json").read_text())
    assert lineage["uses"] == used and lineage["run_id"] == runs["finetune"]["id"]
    # One command at the end syncs every run the pipeline made, then declares the lineage.
    command = sync_command(out)
    assert command in proc.stdout.replace("\n", "")
    assert str(out) in command
