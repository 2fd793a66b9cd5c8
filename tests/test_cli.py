"""train.py as a user meets it: help, config printing, and a clear message for every mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL, TRAIN, assert_user_error, run_train, two_at_a_time


def test_help_lists_groups_without_importing_the_heavy_libraries():
    # What makes --help fast: torch, transformers and lightning stay unimported (seconds of imports). The
    # wall-clock time is a benchmark (bench/startup_memory.py), not a test: it depends on the machine's load.
    proc = subprocess.run([sys.executable, str(TRAIN), "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for group in ("data:", "model:", "task:", "trainer:", "logger:", "experiment:", "hparams_search:"):
        assert group in proc.stdout
    assert not {"torch", "transformers", "lightning"} & set(subprocess.run(
        [sys.executable, "-c", "import sys, runpy; sys.argv = ['train.py', '--help']\n"
         "try:\n runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit: pass\n"
         "print(' '.join(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules), file=sys.stderr)"],
        capture_output=True, text=True, cwd=REPO).stderr.split())


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


def test_unknown_override(tmp_path):
    assert_user_error(run_train(["trainer.max_epoch=3"], tmp_path), "max_epoch")


def test_wrong_type(tmp_path):
    assert_user_error(run_train(["data.batch_size=many"], tmp_path), "data.batch_size", "many")


def test_unknown_group_option(tmp_path):
    assert_user_error(run_train(["model=bert_huge"], tmp_path), "bert_huge", "bert_tiny")


# -- user mistakes that get as far as the run: each case is (train.py arguments, fragments of the
# message); the module runs them two at a time (each mostly waits on its own imports) ----------------
def _labeled(corpus: Path) -> list[str]:
    return ["experiment=text_classification", "data=text_classification_files", "logger=csv",
            f"data.train_files=[{corpus / 'cls_train.jsonl'}]", f"data.val_files=[{corpus / 'cls_val.jsonl'}]",
            "data.max_length=32", *TINY_MODEL]


def unknown_arch_field(tmp, corpus, wide):
    return [*_labeled(corpus), "+model.arch.hiden_size=64"], ["model.arch.hiden_size", "hidden_size"]


def missing_mandatory_value(tmp, corpus, wide):
    return ["experiment=text_mlm", "data=text_files"], ["data.train_files"]


def missing_data_path(tmp, corpus, wide):
    missing = tmp / "nope.txt"
    return ["experiment=text_mlm", "data=text_files", f"data.train_files=[{missing}]"], [str(missing), "does not exist"]


def empty_data_file(tmp, corpus, wide):
    empty = tmp / "empty.txt"
    empty.write_text("")
    return ["experiment=text_mlm", "data=text_files", f"data.train_files=[{empty}]"], ["empty"]


def blank_data_file(tmp, corpus, wide):
    blank = tmp / "blank.txt"
    blank.write_text("\n   \n\n")
    return ["experiment=text_mlm", "data=text_files", f"data.train_files=[{blank}]"], ["no non-empty text"]


def stage_override_refused_in_pipeline(tmp, corpus, wide):
    return ["data.batch_size=8"], ["pipeline.pretrain.overrides"]


def offline_hub_name(tmp, corpus, wide):
    args = [a for a in _labeled(corpus) if not a.startswith("model.")]
    return [*args, "model=hf_dir", "model.name_or_path=some-org/some-model"], ["some-org/some-model", "cannot be reached"]


def mismatched_checkpoint(tmp, corpus, wide):
    return [*_labeled(corpus), f"model.init_from={wide}"], ["does not fit", "embeddings.word_embeddings.weight", "48", "32"]


def init_from_without_export(tmp, corpus, wide):
    (tmp / "not_a_run").mkdir()
    return [*_labeled(corpus), f"model.init_from={tmp / 'not_a_run'}"], ["holds no exported model"]


MISTAKES = [unknown_arch_field, missing_mandatory_value, missing_data_path, empty_data_file, blank_data_file,
            stage_override_refused_in_pipeline, offline_hub_name, mismatched_checkpoint, init_from_without_export]


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


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, corpus_dir, wide_export) -> dict[str, tuple]:
    def run(case):
        root = tmp_path_factory.mktemp(case.__name__)
        args, fragments = case(root, corpus_dir, wide_export)
        return run_train(args, root), fragments

    return two_at_a_time(run, MISTAKES)


@pytest.mark.parametrize("case", MISTAKES, ids=lambda case: case.__name__)
def test_user_mistake_is_one_clear_error(case, mistakes):
    proc, fragments = mistakes[case.__name__]
    assert_user_error(proc, *fragments)


def test_an_offline_hub_name_fails_without_trying_the_network(monkeypatch):
    """With HF_HUB_OFFLINE=1 a hub name is refused at once: no connection is tried (one would wait for
    its timeout on a machine without network)."""
    import socket

    from headstart.backbones.text import TextBackboneSpec
    from headstart.errors import CheckpointError

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was tried")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(CheckpointError, match="cannot be reached"):
        TextBackboneSpec(name_or_path="some-org/some-model")


def test_existing_run_dir_is_never_overwritten(tmp_path, corpus_dir):
    run_dir = tmp_path / "earlier_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    results = run_dir / "results.json"
    results.write_text(json.dumps({"metrics": {"test/acc": 0.9}}))
    before = results.stat().st_mtime_ns
    proc = run_train([*_labeled(corpus_dir), f"hydra.run.dir={run_dir}"], tmp_path)
    assert_user_error(proc, "already holds", str(run_dir))
    assert results.stat().st_mtime_ns == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "results.json"]
