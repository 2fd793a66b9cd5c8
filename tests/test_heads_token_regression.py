"""Token classification (NER-style tagging) and text regression: the entity-level F1 against
hand-worked examples, sub-token label alignment, the hand-off of an MLM export into a tagger, and both
heads end to end through train.py on test-made data, with the user errors their data can raise."""

from __future__ import annotations

import json
import random
import statistics
import warnings
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY_BERT,
    TINY_MODEL,
    TOPICS,
    assert_user_error,
    finished_run,
    make_mlm_export,
    run_train,
)

from headstart.heads.span_f1 import SpanF1, entity_spans

# -- a synthetic NER language: fixed entity vocabularies between filler words -----------------------
ENTITIES = {
    "PER": [["alice"], ["bob"], ["carol", "smith"], ["dave", "jones"], ["erin"], ["frank", "miller"]],
    "LOC": [["paris"], ["london"], ["berlin"], ["new", "york"], ["san", "francisco"], ["tokyo"]],
    "ORG": [["acme", "corp"], ["globex"], ["initech"], ["umbrella", "inc"], ["hooli"]],
}
FILLER = "the a met visited in at with from yesterday and then saw went to report says today near".split()


def tagged_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.randint(1, 3)):
        for _ in range(rng.randint(1, 3)):
            words.append(rng.choice(FILLER))
            tags.append("O")
        kind = rng.choice(sorted(ENTITIES))
        entity = rng.choice(ENTITIES[kind])
        words += entity
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
    words.append(rng.choice(FILLER))
    tags.append("O")
    return words, tags


def write_tagged(path: Path, n_rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = [dict(zip(("tokens", "tags"), tagged_sentence(rng), strict=True)) for _ in range(n_rows)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_counts(path: Path, n_rows: int, seed: int) -> Path:
    """Ten-word sentences; the target is how many of the words are animals."""
    rng = random.Random(seed)
    others = TOPICS["cooking"] + TOPICS["sailing"]
    rows = []
    for _ in range(n_rows):
        share = rng.random()
        words = [rng.choice(TOPICS["animals"]) if rng.random() < share else rng.choice(others) for _ in range(10)]
        rows.append({"text": " ".join(words), "label": sum(w in TOPICS["animals"] for w in words)})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# -- entity spans and span F1, by hand ----------------------------------------------------------------
@pytest.mark.parametrize(("tags", "spans"), [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
    (["B-PER", "B-PER", "I-PER"], {("PER", 0, 0), ("PER", 1, 2)}),        # B always starts a new entity
    (["I-PER", "I-PER", "O"], {("PER", 0, 1)}),                           # I without B starts one (seqeval)
    (["O", "I-LOC", "B-LOC", "I-LOC"], {("LOC", 1, 1), ("LOC", 2, 3)}),
    (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 0), ("LOC", 1, 2)}),        # a change of type ends and starts
    (["B-ORG", "O", "I-ORG"], {("ORG", 0, 0), ("ORG", 2, 2)}),
    (["O", "O"], set()),
    (["S-PER", "B-LOC", "E-LOC", "O"], {("PER", 0, 0), ("LOC", 1, 2)}),  # IOBES reads the same way
])
def test_entity_spans(tags, spans):
    assert entity_spans(tags) == spans


LABELS = ["O", "B-LOC", "B-MISC", "B-PER", "I-LOC", "I-MISC", "I-PER"]
ID = {name: i for i, name in enumerate(LABELS)}


def _ids(rows: list[list[str]], length: int) -> torch.Tensor:
    """Tag rows as a (batch, length) id tensor, right-padded with -100."""
    return torch.tensor([[ID[t] for t in row] + [-100] * (length - len(row)) for row in rows])


def _span_scores(true_rows, pred_rows) -> dict[str, float]:
    """Scores of one batch; the padding (-100 in the target, O in the predictions) must not count."""
    length = max(map(len, true_rows)) + 2
    metric = SpanF1(LABELS)
    metric.update(_ids(pred_rows, length).clamp(min=0), _ids(true_rows, length))
    return {k: float(v) for k, v in metric.compute().items()}


def test_span_f1_seqeval_example():
    # seqeval's README example: the MISC boundary is off by one, PER is right -> 1 of 2 both ways.
    true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert _span_scores(true, pred) == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})


def test_span_f1_counts_type_start_and_end():
    true = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-MISC"]]  # PER(0,1) LOC(3,3) MISC(5,5)
    # PER stops early (wrong end), LOC right, MISC typed as LOC (wrong type): 1 right of 3 each way.
    pred = [["B-PER", "O", "O", "B-LOC", "O", "B-LOC"]]
    assert _span_scores(true, pred) == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3})
    # Two predicted, one right: precision 1/2, recall 1/3, F1 = 2 * (1/2 * 1/3) / (1/2 + 1/3) = 0.4.
    pred = [["B-PER", "I-PER", "O", "O", "O", "B-LOC"]]
    assert _span_scores(true, pred) == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4})


def test_span_f1_i_without_b_starts_an_entity():
    true = [["B-LOC", "I-LOC", "O"], ["O", "B-PER", "O"]]
    pred = [["I-LOC", "I-LOC", "O"], ["O", "I-PER", "O"]]  # seqeval reads both as the gold entities
    assert _span_scores(true, pred) == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0})
    pred = [["B-LOC", "I-PER", "O"], ["O", "O", "I-PER"]]  # LOC(0,0) PER(1,1) and PER(2,2): none right
    assert _span_scores(true, pred) == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0})


def test_span_f1_reads_labelled_positions_only_and_zero_cases():
    metric = SpanF1(LABELS)
    # [CLS] alice smith(2 pieces) in paris [SEP] pad: -100 on specials, later sub-tokens and padding.
    target = torch.tensor([[-100, ID["B-PER"], ID["I-PER"], -100, ID["O"], ID["B-LOC"], -100, -100]])
    preds = torch.tensor([[ID["B-LOC"], ID["B-PER"], ID["I-PER"], ID["B-MISC"], ID["O"], ID["B-LOC"], 0, 3]])
    metric.update(preds, target)
    assert {k: float(v) for k, v in metric.compute().items()} == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    metric.reset()
    metric.update(torch.zeros_like(target), target)  # an all-O tagger: no entities, nothing right
    assert {k: float(v) for k, v in metric.compute().items()} == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    metric.reset()
    with warnings.catch_warnings():  # torchmetrics warns about compute() before update()
        warnings.simplefilter("ignore")
        assert float(metric.compute()["f1"]) == 0.0  # no data at all


def span_f1_rank(rank: int, world: int, port: int, result_dir: str) -> None:
    """One DDP rank: its share of the rows; saves what compute() returns after torchmetrics' sync."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        preds, target = _ddp_problem()
        metric = SpanF1(LABELS)
        metric.update(preds[rank::world], target[rank::world])
        torch.save({k: float(v) for k, v in metric.compute().items()}, f"{result_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(0, len(LABELS), (12, 9), generator=gen)
    flip = torch.rand(target.shape, generator=gen) < 0.3
    preds = torch.where(flip, torch.randint(0, len(LABELS), target.shape, generator=gen), target)
    return preds, target


def test_span_f1_states_add_up_across_processes(tmp_path):
    import torch.multiprocessing as mp
    from gloo_workers import free_port

    preds, target = _ddp_problem()
    whole = SpanF1(LABELS)
    whole.update(preds, target)
    expected = {k: float(v) for k, v in whole.compute().items()}
    assert 0.0 < expected["f1"] < 1.0
    mp.spawn(span_f1_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(expected)


# -- the data module's sub-token alignment, and the hand-off into a tagger ---------------------------
@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ner")
    write_tagged(root / "train.jsonl", 300, seed=0)
    write_tagged(root / "val.jsonl", 60, seed=1)
    write_tagged(root / "test.jsonl", 100, seed=2)
    return root


@pytest.fixture(scope="module")
def mlm_export(ner_dir, tmp_path_factory) -> Path:
    """An MLM export (weights moved off their init) with a tokenizer trained on the tagged text."""
    texts = [" ".join(json.loads(line)["tokens"]) for line in (ner_dir / "train.jsonl").read_text().splitlines()]
    return make_mlm_export(texts, TINY_BERT, tmp_path_factory.mktemp("mlm") / "export")


@pytest.mark.parametrize("label_all_tokens", [False, True])
def test_first_sub_token_labelled(tmp_path, label_all_tokens, mlm_export):
    from headstart.data.token_classification import TokenClassificationDataModule

    rows = [{"tokens": ["Alice", "visited", "Berlinparis", "today"], "tags": ["B-PER", "O", "B-LOC", "O"]},
            {"tokens": ["bob", "met", "acme", "corp"], "tags": ["B-PER", "O", "B-ORG", "I-ORG"]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = TokenClassificationDataModule(train_files=[str(path)], val_files=[str(path)], max_length=32,
                                       label_all_tokens=label_all_tokens, cache_dir=str(tmp_path / "cache"))
    dm.prepare(str(mlm_export))  # "berlinparis" is no word of the tokenizer: several pieces
    names = dm.label_names
    assert names[0] == "O" and names == ["O", *sorted(names[1:])]
    assert dm.task_kwargs() == {"num_labels": len(names), "label_names": names}
    example = dm.datasets["validation"][0]
    pieces = dm.tokenizer.convert_ids_to_tokens(example["input_ids"].tolist())
    labels = [names[i] if i >= 0 else None for i in example["labels"].tolist()]
    compound = pieces[3:-2]
    assert pieces[:3] == ["[CLS]", "alice", "visited"] and pieces[-2:] == ["today", "[SEP]"] and len(compound) > 1
    rest = "I-LOC" if label_all_tokens else None
    assert labels == [None, "B-PER", "O", "B-LOC", *[rest] * (len(compound) - 1), "O", None]


def test_mlm_export_hands_off_to_token_classifier(mlm_export):
    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.tokenizer import load_tokenizer
    from headstart.heads.token_classification import TokenClassifier
    from headstart.transfer.handoff import apply_handoff

    spec = TextBackboneSpec(arch=TINY_BERT)
    spec.bind_tokenizer(load_tokenizer(str(mlm_export)))
    tagger = TokenClassifier(spec, optimizer=None, num_labels=3, label_names=["O", "B-PER", "I-PER"])
    report = apply_handoff(tagger, str(mlm_export))
    assert report["loaded"] == sorted(tagger.backbone.state_dict()) and len(report["loaded"]) > 30
    assert report["new"] == ["head.1.bias", "head.1.weight"]
    assert report["ignored"] and all(k.startswith("cls.") for k in report["ignored"])
    batch = dict(load_tokenizer(str(mlm_export))(["alice met bob", "in paris"], padding=True, return_tensors="pt"))
    tagger.eval()
    assert tagger(batch).shape == (2, batch["input_ids"].shape[1], 3)


# -- end to end through train.py ----------------------------------------------------------------------
TRAIN_FAST = [*TINY_MODEL, "logger=csv", "data.max_length=32", "data.batch_size=16", "task.optimizer.lr=3e-3"]


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """train.py runs with one intra-op thread: a model this small gains nothing from more, and on a
    2-core machine shared with other test processes, torch's spinning OpenMP threads made a 7 s run
    take 70 s."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_token_classification_end_to_end_from_mlm_export(ner_dir, mlm_export, tmp_path, shared_cache):
    proc = run_train([
        "experiment=text_token_classification", *TRAIN_FAST, "trainer.max_epochs=6", f"model.init_from={mlm_export}",
        f"data.train_files=[{ner_dir / 'train.jsonl'}]", f"data.val_files=[{ner_dir / 'val.jsonl'}]",
        f"data.test_files=[{ner_dir / 'test.jsonl'}]",
    ], tmp_path, shared_cache)
    run_dir, results = finished_run(proc, tmp_path, "token classification")
    metrics = results["metrics"]
    assert results["task"] == "TokenClassifier"
    # Baselines: a majority tagger (every word O) gets the O share of words right and F1 = 0.
    tags = [t for line in (ner_dir / "test.jsonl").read_text().splitlines() for t in json.loads(line)["tags"]]
    majority_acc = tags.count("O") / len(tags)
    assert metrics["test/acc"] > majority_acc + 0.2, (metrics, majority_acc)
    assert metrics["test/f1"] > 0.7, metrics
    assert 0.0 < metrics["test/precision"] <= 1.0 and 0.0 < metrics["test/recall"] <= 1.0
    # The hand-off loaded every backbone key of the export; only the tagging head is new.
    report = json.loads((run_dir / "handoff_report.json").read_text())
    assert report["source_objective"] == "MaskedLanguageModeling"
    assert report["new"] == ["head.1.bias", "head.1.weight"] and len(report["loaded"]) > 30
    assert results["handoff"]["loaded"] == len(report["loaded"])


@pytest.mark.slow
def test_regression_end_to_end(tmp_path, shared_cache):
    data = tmp_path / "data"
    data.mkdir()
    write_counts(data / "train.jsonl", 400, seed=0)
    write_counts(data / "val.jsonl", 60, seed=1)
    write_counts(data / "test.jsonl", 100, seed=2)
    proc = run_train([
        "experiment=text_regression", *TRAIN_FAST, "trainer.max_epochs=6", "data.vocab_size=200",
        f"data.train_files=[{data / 'train.jsonl'}]", f"data.val_files=[{data / 'val.jsonl'}]",
        f"data.test_files=[{data / 'test.jsonl'}]",
    ], tmp_path / "run", shared_cache)
    _, results = finished_run(proc, tmp_path / "run", "regression")
    metrics = results["metrics"]
    targets = [json.loads(line)["label"] for line in (data / "test.jsonl").read_text().splitlines()]
    # Baseline: predicting the mean has MSE = the targets' variance and no correlation.
    variance = statistics.pvariance(targets)
    assert metrics["test/mse"] < 0.5 * variance, (metrics, variance)
    assert metrics["test/pearson"] > 0.7 and metrics["test/spearman"] > 0.7, metrics
    assert metrics["test/mae"] ** 2 <= metrics["test/mse"] + 1e-6  # (mean |e|)^2 <= mean e^2, in the same units


# -- the user's mistakes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_tokens_and_tags_of_different_lengths(tmp_path, ner_dir):
    bad = tmp_path / "bad.jsonl"
    lines = (ner_dir / "val.jsonl").read_text().splitlines()[:5]
    row = json.loads(lines[2])
    lines[2] = json.dumps({"tokens": row["tokens"], "tags": row["tags"][:-1]})
    bad.write_text("\n".join(lines) + "\n")
    proc = run_train(["experiment=text_token_classification", "logger=none", f"data.train_files=[{bad}]"], tmp_path)
    assert_user_error(proc, "row 3", str(bad), f"{len(row['tokens'])} words", f"{len(row['tags']) - 1} tags")


@pytest.mark.slow
def test_non_numeric_regression_target(tmp_path):
    bad = tmp_path / "scores.csv"
    bad.write_text("text,label\ncat dog,1.5\nboat sail,2\nfish and salt,lots\ncow,0\n")
    proc = run_train(["experiment=text_regression", "logger=none", f"data.train_files=[{bad}]",
                      f"data.val_files=[{bad}]"], tmp_path)
    assert_user_error(proc, "row 3", "fish and salt", "'lots'", "not a number", str(bad))
