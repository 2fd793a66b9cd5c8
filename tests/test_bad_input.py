"""The bad-input catalogue: each mistake, walked through train.py, stops with one paragraph naming the
bad value and the fix, a non-zero exit, no traceback, and an earlier run's outputs left as they were.

Cases tested elsewhere, not repeated here: unknown or mistyped keys, wrong types, unknown group
options (test_cli.py), missing and empty data files (test_cli.py, test_data.py), labels of the
validation split unseen in training (test_data.py), answers or tags that do not fit their text
(test_heads_qa.py, test_heads_token_regression.py), a checkpoint of another architecture
(test_cli.py, mismatched_checkpoint), an unfinished pretraining (test_handoff.py), a checkpoint
that would run code (test_untrusted_files.py), a directory that holds an earlier run (test_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_MODEL, assert_user_error, make_mlm_export, only_run_dir, run_train, two_at_a_time

pytestmark = pytest.mark.slow

DIGITS = ["experiment=vision_classification", "logger=csv", "model.arch.hidden_sizes=[8,16,32]",
          "trainer.max_epochs=1", "test_after_fit=false"]


def _mlm(corpus: Path, train_file: Path | None = None) -> list[str]:
    return ["experiment=text_mlm", "data=text_files", f"data.train_files=[{train_file or corpus / 'train.txt'}]",
            f"data.val_files=[{corpus / 'val.txt'}]", "data.max_length=32", "data.vocab_size=300", "logger=csv",
            *TINY_MODEL]


def malformed_yaml(tmp: Path, corpus: Path):
    (tmp / "my_conf" / "experiment").mkdir(parents=True)
    (tmp / "my_conf" / "experiment" / "broken.yaml").write_text("trainer:\n  max_epochs: [3\n")
    return ([f"hydra.searchpath=[file://{tmp / 'my_conf'}]", "experiment=broken"],
            ["broken", "not valid YAML", "line 3"])


def bad_override_syntax(tmp: Path, corpus: Path):
    return ["trainer.max_epochs=[1,"], ["'[1,'", "override_grammar"]


def binary_data_file(tmp: Path, corpus: Path):
    binary = tmp / "binary.txt"
    binary.write_bytes(bytes(range(128, 256)) * 40)
    return _mlm(corpus, binary), [str(binary), "UTF-8"]


def sequences_longer_than_the_model(tmp: Path, corpus: Path):
    return [*_mlm(corpus), "data.max_length=128"], ["data.max_length=128", "64 positions"]


def truncated_checkpoint(tmp: Path, corpus: Path):
    ckpt = tmp / "half.ckpt"
    ckpt.write_bytes(b"PK\x03\x04" + b"\x00" * 1000)
    return [*DIGITS, f"ckpt_path={ckpt}"], [f"ckpt_path='{ckpt}'", "corrupt or truncated"]


def not_a_lightning_checkpoint(tmp: Path, corpus: Path):
    import torch

    weights = tmp / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, weights)
    return [*DIGITS, f"resume={weights}"], [f"resume='{weights}'", "not a Lightning checkpoint", "model.init_from"]


def truncated_export_weights(tmp: Path, corpus: Path):
    lines = (corpus / "train.txt").read_text().splitlines()
    arch = {"model_type": "bert", **{k.split(".")[-1].split("=")[0]: int(k.split("=")[1]) for k in TINY_MODEL}}
    export = make_mlm_export(lines, arch, tmp / "export")
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    return ["experiment=text_classification", "data=text_classification_files", "logger=csv",
            f"data.train_files=[{corpus / 'cls_train.jsonl'}]", f"data.val_files=[{corpus / 'cls_val.jsonl'}]",
            "data.max_length=32", *TINY_MODEL, f"model.init_from={export}"], [str(weights), "corrupt or truncated"]


def nan_loss(tmp: Path, corpus: Path):
    return ([*DIGITS, "task.optimizer.lr=1e12", "callbacks.step_checkpoint.every_n_train_steps=2"],
            ["training loss became nan at step", "last good checkpoint is", "last.ckpt", "task.optimizer.lr",
             "callbacks.nan_guard.action=warn"])


def _classify(train: Path) -> list[str]:
    return ["experiment=text_classification", "data=text_classification_files", f"data.train_files=[{train}]",
            "logger=csv", *TINY_MODEL, "data.max_length=32", "data.vocab_size=300", "trainer.max_steps=2"]


def _labelled_rows(n: int, label=lambda i: "ab"[i % 2]) -> list[dict]:
    return [{"text": f"word{i % 7} other{i % 3} text", "label": label(i)} for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def latin1_byte_in_jsonl(tmp: Path, corpus: Path):
    good = _write_jsonl(tmp / "good.jsonl", _labelled_rows(30)).read_bytes().splitlines(keepends=True)
    bad = tmp / "latin1.jsonl"
    bad.write_bytes(b"".join(good[:8]) + good[8].replace(b"text", b"caf\xe9") + b"".join(good[9:]))
    return _classify(bad), [str(bad), "not UTF-8", "line 9", "0xe9"]


def latin1_byte_in_csv(tmp: Path, corpus: Path):
    bad = tmp / "latin1.csv"
    bad.write_bytes(b"text,label\n" + b"".join(f"hello {i} world,{'ab'[i % 2]}\n".encode() for i in range(20))
                    + b"na\xefve text,a\n")
    return _classify(bad), [str(bad), "not UTF-8", "line 22"]


def list_labels(tmp: Path, corpus: Path):
    rows = _write_jsonl(tmp / "lists.jsonl", _labelled_rows(30, lambda i: ["a", "b"] if i == 6 else "ab"[i % 2]))
    return _classify(rows), ["row 7", "'label' = ['a', 'b'], a list", "text_multitask"]


def null_labels(tmp: Path, corpus: Path):
    rows = _write_jsonl(tmp / "nulls.jsonl", _labelled_rows(30, lambda i: None if i in (4, 11) else "ab"[i % 2]))
    return _classify(rows), ["row 5", "no 'label' (null); 2 of the split's 30 rows", "data.drop_missing_labels=true"]


def zero_batch_size(tmp: Path, corpus: Path):
    return [*_mlm(corpus), "data.batch_size=0"], ["data.batch_size=0 is out of range", "integer >= 1"]


def nothing_masked(tmp: Path, corpus: Path):
    return [*_mlm(corpus), "task.mlm_probability=0.0"], ["task.mlm_probability=0.0 is out of range", "(0, 1)"]


def image_export_for_a_text_task(tmp: Path, corpus: Path):
    pretrained = run_train(["experiment=vision_dae", "debug=default", "logger=none", "model.arch.hidden_sizes=[8,16]",
                            f"hydra.run.dir={tmp / 'vision_run'}"], tmp / "pretraining")
    assert pretrained.returncode == 0, pretrained.stderr[-2000:]
    return ([*_classify(corpus / "cls_train.jsonl"), f"model.init_from={tmp / 'vision_run'}"],
            ["model.init_from=", "the export of an image backbone (DenoisingAutoencoder)", "text pretraining"])


def export_of_another_attention_layout(tmp: Path, corpus: Path):
    lines = (corpus / "train.txt").read_text().splitlines()
    arch = {"model_type": "bert", **{k.split(".")[-1].split("=")[0]: int(k.split("=")[1]) for k in TINY_MODEL}}
    export = make_mlm_export(lines, arch, tmp / "two_heads")  # 2 attention heads; the same shapes with 4
    return ([*_classify(corpus / "cls_train.jsonl"), f"model.init_from={export}", "model.arch.num_attention_heads=4"],
            ["another architecture", "num_attention_heads: export 2, model 4"])


def checkpoint_path_is_a_directory(tmp: Path, corpus: Path):
    return [*DIGITS, f"ckpt_path={tmp}"], [f"ckpt_path='{tmp}' is a directory", "resume=<its directory>"]


def class_count_given_by_hand(tmp: Path, corpus: Path):
    return [*DIGITS, "+task.num_labels=7"], ["task.num_labels=7, but the data gives 10", "Drop the task.num_labels"]


def cache_dir_not_writable(tmp: Path, corpus: Path):
    blocker = tmp / "a_file"
    blocker.write_text("not a directory")
    return [*DIGITS, f"paths.cache_dir={blocker}"], [f"paths.cache_dir='{blocker}' cannot be written to"]


CASES = [malformed_yaml, bad_override_syntax, binary_data_file, sequences_longer_than_the_model, truncated_checkpoint,
         not_a_lightning_checkpoint, truncated_export_weights, nan_loss, latin1_byte_in_jsonl, latin1_byte_in_csv,
         list_labels, null_labels, zero_batch_size, nothing_masked, image_export_for_a_text_task,
         export_of_another_attention_layout,
         checkpoint_path_is_a_directory, class_count_given_by_hand, cache_dir_not_writable]


def _earlier_run(root: Path) -> dict[Path, tuple[bytes, int]]:
    """A finished run under the same outputs/ as the failing command; its files' bytes and times."""
    run_dir = root / "outputs" / "2020-01-01" / "00-00-00-000000"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"completed": True, "metrics": {"val/acc": 0.9}}))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"earlier weights")
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, corpus_dir, shared_cache) -> dict[str, tuple]:
    """Every case's train.py run (two at a time)."""
    def run(case):
        root = tmp_path_factory.mktemp(case.__name__)
        earlier = _earlier_run(root)
        args, fragments = case(root, corpus_dir)
        own_cache = any(a.startswith("paths.cache_dir=") for a in args)
        return run_train(args, root, None if own_cache else shared_cache), fragments, earlier

    return two_at_a_time(run, CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_bad_input_is_one_clear_error(case, outcomes):
    proc, fragments, earlier = outcomes[case.__name__]
    assert_user_error(proc, *fragments)
    run_dir = next(iter(earlier)).parent
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == earlier


def test_batch_larger_than_the_data_trains_one_batch_an_epoch_and_says_so(tmp_path):
    proc = run_train([*DIGITS, "data.batch_size=5000"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.batch_size=5000 is larger than the 1257 training examples" in proc.stdout
    assert json.loads((only_run_dir(tmp_path) / "results.json").read_text())["global_step"] == 1


def test_rows_without_a_label_are_dropped_when_asked_and_never_become_a_class(tmp_path):
    rows = _write_jsonl(tmp_path / "nulls.jsonl", _labelled_rows(40, lambda i: None if i in (4, 11) else "ab"[i % 2]))
    proc = run_train([*_classify(rows), "data.drop_missing_labels=true", "data.val_fraction=0.25"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dropped 2 of 40 rows without a 'label'" in proc.stdout + proc.stderr
    results = json.loads((only_run_dir(tmp_path / "run") / "results.json").read_text())
    assert results["train_examples"] == 38 - round(38 * 0.25)
    config = (only_run_dir(tmp_path / "run") / "config.yaml").read_text()
    assert "None" not in config
