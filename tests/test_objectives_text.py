"""The text objectives end to end through train.py: causal LM (GPT), unsupervised SimCSE and masked LM
with next-sentence prediction. Each one's loss falls, and its export hands off to sequence
classification with every backbone key loaded."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import FUNCTION_WORDS, TINY_BERT, TINY_MODEL, TOPICS, logged, only_run_dir, run_train

from headstart.backbones.text import TextBackboneSpec
from headstart.data.tokenizer import load_tokenizer
from headstart.heads.sequence_classification import SequenceClassifier
from headstart.transfer.handoff import apply_handoff

pytestmark = pytest.mark.slow

# A GPT-2 decoder as small as TINY_MODEL's encoder.
TINY_GPT = ["model=gpt_tiny", "model.arch.n_embd=32", "model.arch.n_layer=2", "model.arch.n_head=2",
            "model.arch.n_positions=64"]
NO_DROPOUT = ["model.arch.hidden_dropout_prob=0", "model.arch.attention_probs_dropout_prob=0"]


def _pretrain(root: Path, cache: Path, args: list[str], logger: str = "csv") -> Path:
    proc = run_train([*args, f"logger={logger}", "trainer.log_every_n_steps=1"], root, cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return only_run_dir(root)


def _files(train: Path, val: Path) -> list[str]:
    return ["data=text_files", f"data.train_files=[{train}]", f"data.val_files=[{val}]"]


def _assert_hands_off_to_classifier(export_dir: Path, arch_args: dict, pooling: str = "mean") -> dict:
    """Build the downstream classifier on the export's tokenizer and load the export into it."""
    tokenizer = load_tokenizer(str(export_dir))
    spec = TextBackboneSpec(arch=arch_args)
    spec.bind_tokenizer(tokenizer)
    classifier = SequenceClassifier(spec, optimizer=None, num_labels=3, pooling=pooling)
    report = apply_handoff(classifier, str(export_dir))
    assert report["loaded"] == sorted(classifier.backbone.state_dict())
    assert report["new"] and all(k.startswith("head.") for k in report["new"])
    return report


# -- causal LM -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clm_run(tmp_path_factory, corpus_dir, shared_cache) -> Path:
    return _pretrain(tmp_path_factory.mktemp("clm"), shared_cache, [
        "experiment=text_clm", *_files(corpus_dir / "train.txt", corpus_dir / "val.txt"), *TINY_GPT,
        "data.tokenizer_type=bpe", "data.vocab_size=400", "data.max_length=32", "data.batch_size=16",
        "trainer.max_epochs=5", "task.optimizer.lr=3e-3",
    ], logger="default")  # W&B (offline) beside the CSV: the samples go to a W&B table too


def test_causal_lm_loss_falls_and_perplexity_follows(clm_run):
    first_step = logged(clm_run, "train/loss_step")[0]
    val_loss, perplexity = logged(clm_run, "val/loss"), logged(clm_run, "val/perplexity")
    vocab = json.loads((clm_run / "export" / "config.json").read_text())["vocab_size"]
    assert len(val_loss) == len(perplexity) == 5
    # From chance (ln of the vocabulary) to well below it, and still falling after the first epoch.
    assert first_step > math.log(vocab) - 0.5, (first_step, vocab)
    assert val_loss[-1] < first_step - 2.0, (first_step, val_loss)
    assert val_loss[-1] < val_loss[0] - 0.5, val_loss
    # Perplexity is exp of the token-level loss (blocks are all the same length, so it matches val/loss).
    assert perplexity[-1] == pytest.approx(math.exp(val_loss[-1]), rel=0.05)


def test_causal_lm_writes_a_sample_each_validation_epoch(clm_run):
    rows = [line.split("\t") for line in (clm_run / "samples.txt").read_text().splitlines()]
    assert rows[0] == ["epoch", "step", "prompt", "continuation"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]
    prompts = {r[2] for r in rows[1:]}
    assert len(prompts) == 1 and prompts.pop().startswith("<s>")  # the same prompt: the first validation text
    continuations = [r[3] for r in rows[1:]]
    # Greedy decoding of a model that is still learning: text every epoch, and it changes as the model does.
    assert all(continuations) and len(set(continuations)) > 1, continuations
    # The W&B run holds them as a table (the whole table again each epoch).
    [wandb_run] = (clm_run / "wandb").glob("offline-run-*")
    tables = sorted(wandb_run.glob("files/media/table/samples_*.table.json"), key=lambda p: int(p.name.split("_")[1]))
    assert len(tables) == 5
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == rows[0] and [r[3] for r in table["data"]] == continuations


def test_causal_lm_export_hands_off_to_a_gpt_classifier(clm_run, tmp_path, corpus_dir, shared_cache):
    from safetensors.torch import load_file

    proc = run_train([
        "experiment=text_classification", "data=text_classification_files", "logger=csv", *TINY_GPT,
        "task.pooling=last", "data.max_length=32", "trainer.max_epochs=1", f"model.init_from={clm_run}",
        f"data.train_files=[{corpus_dir / 'cls_train.jsonl'}]", f"data.val_files=[{corpus_dir / 'cls_val.jsonl'}]",
        f"data.test_files=[{corpus_dir / 'cls_test.jsonl'}]",
    ], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((only_run_dir(tmp_path) / "handoff_report.json").read_text())
    exported = load_file(clm_run / "export" / "model.safetensors")
    gpt2_keys = sorted(k.removeprefix("transformer.") for k in exported if k.startswith("transformer."))
    assert report["source_objective"] == "CausalLanguageModeling"
    assert report["loaded"] == gpt2_keys and len(gpt2_keys) > 20
    assert all(k.startswith("head.") for k in report["new"])


# -- SimCSE ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simcse_run(tmp_path_factory, corpus_dir, shared_cache) -> Path:
    return _pretrain(tmp_path_factory.mktemp("simcse"), shared_cache, [
        "experiment=text_simcse", *_files(corpus_dir / "train.txt", corpus_dir / "val.txt"), *TINY_MODEL,
        "data.vocab_size=300", "data.max_length=32", "data.batch_size=32", "trainer.max_epochs=3",
        "task.optimizer.lr=3e-3",
    ])


def test_simcse_loss_falls_and_views_find_each_other(simcse_run):
    first_step = logged(simcse_run, "train/loss_step")[0]
    val_loss, val_acc = logged(simcse_run, "val/loss"), logged(simcse_run, "val/acc")
    assert len(val_loss) == 3
    # InfoNCE over a batch of 32: from where a fresh encoder starts to near zero.
    assert val_loss[-1] < first_step - 1.5, (first_step, val_loss)
    assert val_acc[-1] > 0.9, val_acc  # chance is 1/32
    alignment, uniformity = logged(simcse_run, "val/alignment"), logged(simcse_run, "val/uniformity")
    # Spread out (a collapsed encoder has uniformity 0), and each text's two dropout views far closer than
    # two different texts: by Jensen, their mean squared distance is at least -uniformity / 2 (measured:
    # alignment 0.10 against 0.77).
    assert uniformity[-1] < -1.0, uniformity
    assert alignment[-1] < -uniformity[-1] / 4, (alignment, uniformity)


def test_simcse_export_is_the_bare_encoder_and_hands_off(simcse_run):
    from safetensors.torch import load_file

    export = simcse_run / "export"
    assert json.loads((export / "headstart_export.json").read_text())["objective"] == "SimCSE"
    assert not [k for k in load_file(export / "model.safetensors") if "projection" in k]
    report = _assert_hands_off_to_classifier(export, TINY_BERT)
    assert report["ignored"] == []  # nothing but the encoder was exported


def test_simcse_on_labelled_text_evaluates_its_embeddings_online(tmp_path, corpus_dir, shared_cache):
    """With labelled text, the labels feed the detached online probe and the kNN monitor (3 topics:
    chance is 1/3), and the objective trains as before."""
    run_dir = _pretrain(tmp_path, shared_cache, [
        "experiment=text_simcse_labelled", "data=text_classification_files", f"data.train_files=[{corpus_dir / 'cls_train.jsonl'}]",
        f"data.val_files=[{corpus_dir / 'cls_val.jsonl'}]", f"data.test_files=[{corpus_dir / 'cls_test.jsonl'}]",
        *TINY_MODEL, "data.vocab_size=300", "data.max_length=32", "data.batch_size=32", "trainer.max_epochs=3",
        "task.optimizer.lr=3e-3",
    ])
    probe, knn = logged(run_dir, "val/probe_acc"), logged(run_dir, "val/knn_acc")
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    print(f"SimCSE on labelled text: val/probe_acc {probe}, val/knn_acc {knn}, test {results.get('test/probe_acc')}")
    assert len(probe) == 3 and probe[-1] > 0.6 and knn[-1] > 0.6
    assert results["test/probe_acc"] > 0.6 and results["test/knn_acc"] > 0.6
    assert logged(run_dir, "val/loss")[-1] < logged(run_dir, "train/loss_step")[0] - 1.0


# -- masked LM + next-sentence prediction ----------------------------------------------------------
def write_documents(path: Path, n_docs: int, seed: int, n_words: int = 8) -> Path:
    """A line a sentence, documents of 3-6 lines; a document keeps to four words of one topic, so
    consecutive lines share a topic and words, as consecutive sentences of real text do."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_docs):
        words = rng.sample(TOPICS[rng.choice(sorted(TOPICS))], 4)
        for _ in range(rng.randint(3, 6)):
            lines.append(" ".join(rng.choice(FUNCTION_WORDS) if i % 3 == 1 else rng.choice(words)
                                  for i in range(n_words)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def nsp_run(tmp_path_factory, shared_cache) -> Path:
    root = tmp_path_factory.mktemp("nsp")
    train, val = write_documents(root / "docs_train.txt", 200, seed=0), write_documents(root / "docs_val.txt", 40, seed=1)
    # Without dropout the tiny encoder learns to compare the two segments in fewer steps.
    return _pretrain(root, shared_cache, [
        "experiment=text_mlm_nsp", *_files(train, val), *TINY_MODEL, *NO_DROPOUT, "data.vocab_size=300",
        "data.max_length=32", "data.batch_size=16", "trainer.max_epochs=16", "task.optimizer.lr=3e-3",
    ])


def test_next_sentence_prediction_learns_and_mlm_loss_falls(nsp_run):
    nsp_acc, mlm_loss = logged(nsp_run, "val/nsp_acc"), logged(nsp_run, "val/mlm_loss")
    nsp_loss, loss = logged(nsp_run, "val/nsp_loss"), logged(nsp_run, "val/loss")
    assert len(nsp_acc) == len(mlm_loss) == 16
    # Half the pairs are consecutive: 0.5 is chance. A random partner shares the topic a third of the
    # time, so about 0.83 is the best a model can do; the last epochs must be clearly above chance.
    assert sum(nsp_acc[-3:]) / 3 > 0.5 + 0.1, nsp_acc
    # Chance is log 2 (the first epochs sit at 0.69-0.70); the last epochs' mean, as one epoch's value on
    # the 40 validation documents moves by about 0.015 (with the number of torch threads, say).
    assert sum(nsp_loss[-3:]) / 3 < math.log(2) - 0.025, nsp_loss
    assert mlm_loss[-1] < logged(nsp_run, "train/mlm_loss_step")[0] - 1.5, mlm_loss
    assert mlm_loss[-1] < mlm_loss[0] - 0.5, mlm_loss
    assert loss[-1] == pytest.approx(mlm_loss[-1] + nsp_loss[-1], rel=1e-4)
    masked_acc = logged(nsp_run, "val/masked_acc")
    assert masked_acc[-1] > masked_acc[0] + 0.05, masked_acc


def test_mlm_nsp_export_hands_off_with_the_pooler_ignored(nsp_run):
    export = nsp_run / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    report = _assert_hands_off_to_classifier(export, TINY_BERT)
    # The downstream encoder has no pooler: the pretraining pooler and both heads are left behind.
    ignored_modules = {".".join(k.split(".")[:2]) for k in report["ignored"]}
    assert ignored_modules == {"pooler.dense", "cls.predictions", "cls.seq_relationship"}, report["ignored"]
