"""train.py as a user meets it: help, config printing, and a clear message for every mistake."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_MODEL, TRAIN, assert_user_error, run_train


def _child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_help_is_fast_and_lists_groups():
    # CPU time, not wall time: it does not depend on what else the machine is running (the wall-clock
    # figure is in bench/). Heavy imports (torch, transformers, lightning) alone take several seconds.
    before = _child_cpu_seconds()
    proc = subprocess.run([sys.executable, str(TRAIN), "--help"], capture_output=True, text=True, cwd=REPO)
    cpu = _child_cpu_seconds() - before
    assert proc.returncode == 0, proc.stderr
    for group in ("data:", "model:", "task:", "trainer:", "logger:", "experiment:", "hparams_search:"):
        assert group in proc.stdout
    assert cpu < 3.0, f"--help used {cpu:.2f}s of CPU"
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, runpy; sys.argv = ['train.py', '--help']\n"
         "try:\n runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit: pass\n"
         "print(' '.join(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules), file=sys.stderr)"],
        capture_output=True, text=True, cwd=REPO).stderr.split()


def test_help_shows_the_config_its_overrides_compose():
    proc = subprocess.run([sys.executable, str(TRAIN), "experiment=vision_simclr", "task.temperature=0.3", "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: headstart.objectives.simclr.SimCLR" in proc.stdout and "temperature: 0.3" in proc.stdout
    assert "schema/" not in proc.stdout  # the structured schemas are no choice for the user
    assert "Examples:" in proc.stdout
    bad = subprocess.run([sys.executable, str(TRAIN), "trainer.max_epoch=3", "--help"], capture_output=True,
                         text=True, cwd=REPO)
    assert_user_error(bad, "trainer.max_epoch")


def test_cfg_job_prints_the_composed_config():
    proc = subprocess.run([sys.executable, str(TRAIN), "--cfg", "job", "trainer.max_epochs=3"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "max_epochs: 3" in proc.stdout and "pipeline:" in proc.stdout and "_target_:" in proc.stdout


@pytest.fixture
def labeled_args(corpus_dir):
    return ["experiment=text_classification", "data=text_classification_files", "logger=csv",
            f"data.train_files=[{corpus_dir / 'cls_train.jsonl'}]", f"data.val_files=[{corpus_dir / 'cls_val.jsonl'}]",
            "data.max_length=32", *TINY_MODEL]


def test_unknown_override(tmp_path):
    assert_user_error(run_train(["trainer.max_epoch=3"], tmp_path), "max_epoch")


def test_wrong_type(tmp_path):
    assert_user_error(run_train(["data.batch_size=many"], tmp_path), "data.batch_size", "many")


def test_unknown_group_option(tmp_path):
    assert_user_error(run_train(["model=bert_huge"], tmp_path), "bert_huge", "bert_tiny")


def test_unknown_arch_field(tmp_path, labeled_args):
    proc = run_train([*labeled_args, "+model.arch.hiden_size=64"], tmp_path)
    assert_user_error(proc, "model.arch.hiden_size", "hidden_size")


def test_missing_mandatory_value(tmp_path):
    assert_user_error(run_train(["experiment=text_mlm", "data=text_files"], tmp_path), "data.train_files")


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nope.txt"
    proc = run_train(["experiment=text_mlm", "data=text_files", f"data.train_files=[{missing}]"], tmp_path)
    assert_user_error(proc, str(missing), "does not exist")


def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_train(["experiment=text_mlm", "data=text_files", f"data.train_files=[{empty}]"], tmp_path)
    assert_user_error(proc, "empty")


def test_blank_data_file(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    proc = run_train(["experiment=text_mlm", "data=text_files", f"data.train_files=[{blank}]"], tmp_path)
    assert_user_error(proc, "no non-empty text")


def test_stage_override_refused_in_pipeline(tmp_path):
    assert_user_error(run_train(["data.batch_size=8"], tmp_path), "pipeline.pretrain.overrides")


def test_offline_hub_name_fails_fast(tmp_path, labeled_args):
    start = time.perf_counter()
    args = [a for a in labeled_args if not a.startswith("model.")]
    proc = run_train([*args, "model=hf_dir", "model.name_or_path=some-org/some-model"], tmp_path)
    assert_user_error(proc, "some-org/some-model", "cannot be reached")
    assert time.perf_counter() - start < 30


@pytest.fixture(scope="module")
def wide_export(tmp_path_factory, corpus_dir):
    """An export of a BERT with hidden size 48 (the tests' model has 32)."""
    from transformers import BertConfig, BertForMaskedLM

    from headstart.data.tokenizer import train_tokenizer
    from headstart.transfer.export import write_export

    lines = (corpus_dir / "train.txt").read_text().splitlines()
    tokenizer = train_tokenizer(iter([lines]), "wordpiece", 200, True, 32)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("wide") / "export"
    write_export(BertForMaskedLM(config), tokenizer, str(out), {"objective": "MaskedLanguageModeling"})
    return out


def test_mismatched_checkpoint(tmp_path, labeled_args, wide_export):
    proc = run_train([*labeled_args, f"model.init_from={wide_export}"], tmp_path)
    assert_user_error(proc, "does not fit", "embeddings.word_embeddings.weight", "(", "48", "32")


def test_init_from_without_export(tmp_path, labeled_args):
    (tmp_path / "not_a_run").mkdir()
    proc = run_train([*labeled_args, f"model.init_from={tmp_path / 'not_a_run'}"], tmp_path)
    assert_user_error(proc, "holds no exported model")


def test_existing_run_dir_is_never_overwritten(tmp_path, labeled_args):
    run_dir = tmp_path / "earlier_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    results = run_dir / "results.json"
    results.write_text(json.dumps({"metrics": {"test/acc": 0.9}}))
    before = results.stat().st_mtime_ns
    proc = run_train([*labeled_args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert_user_error(proc, "already holds", str(run_dir))
    assert results.stat().st_mtime_ns == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "results.json"]
