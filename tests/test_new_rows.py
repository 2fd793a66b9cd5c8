"""New rows for a fine-tuned model: each data module reads files the way training reads its splits,
with the model's tokenizer and labels (``bind_model`` / ``read_new_rows``), and each head turns a batch
into per-example predictions (``predictions``). The references are computed here, from the tokenizer
and the module's forward, not from the code under test."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TOPICS, moved_weights, small_tokenizer, text_spec
from test_heads_qa import best_answer_by_enumeration

from headstart.errors import DataError

TOPIC_NAMES = sorted(TOPICS)
TAGS = ["O", "B-LOC", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


# -- sequence classification and regression --------------------------------------------------------------------
def test_text_rows_keep_every_row_to_predict_and_skip_what_training_skips(tokenizer, tmp_path):
    from headstart.data.text_classification import TextClassificationDataModule
    from headstart.heads.sequence_classification import SequenceClassifier

    path = tmp_path / "new.csv"
    path.write_text('id,text,label\nx7,"a cat, a dog",animals\nx9,,cooking\nx11,boat and sail,sailing\n')
    data = TextClassificationDataModule(train_files=["never-read.csv"], max_length=16)
    data.bind_model(tokenizer, {"num_labels": 3, "label_names": TOPIC_NAMES})
    rows = data.read_new_rows("predict", [str(path)], labelled=False)
    assert (rows.ids, [r["text"] for r in rows.records]) == (["x7", "x9", "x11"], ["a cat, a dog", "", "boat and sail"])
    assert [e["input_ids"] for e in rows.examples] == tokenizer(["a cat, a dog", "", "boat and sail"],
                                                                truncation=True, max_length=16)["input_ids"]
    assert all("labels" not in e for e in rows.examples)
    labelled = data.read_new_rows("test", [str(path)], labelled=True)  # the row without text is skipped
    assert labelled.ids == ["x7", "x11"] and [e["labels"] for e in labelled.examples] == [0, 2]

    module = moved_weights(SequenceClassifier(text_spec(tokenizer), None, 3, label_names=TOPIC_NAMES))
    batch = module.build_collator(tokenizer)(rows.examples)
    with torch.no_grad():
        predicted = module.predictions(batch)
        probabilities = module(batch).softmax(-1)
    for p, reference in zip(predicted, probabilities, strict=True):
        assert p["label"] == TOPIC_NAMES[int(reference.argmax())]
        assert torch.allclose(torch.tensor(list(p["probabilities"].values())), reference, atol=1e-6)
        assert list(p["probabilities"]) == TOPIC_NAMES

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\nhello,weather\n")
    with pytest.raises(DataError, match=r"row 1 \(text 'hello'\) has 'label' = 'weather', a label the model was not "
                                        r"trained on \(its labels: \['animals', 'cooking', 'sailing'\]\)"):
        data.read_new_rows("test", [str(unknown)], labelled=True)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence,label\nhello,animals\n")
    with pytest.raises(DataError) as err:
        data.read_new_rows("predict", [str(wrong)], labelled=False)
    assert f"{str(wrong)!r} has no column 'text' (its columns: ['sentence', 'label'])" in str(err.value)
    assert "data.text_column=<its name>" in str(err.value)


def test_regression_rows_and_predictions_in_the_data_units(tokenizer, tmp_path):
    from headstart.data.text_regression import TextRegressionDataModule
    from headstart.heads.regression import Regressor

    path = tmp_path / "new.jsonl"
    path.write_text('{"text": "a cat", "label": [1, 2]}\n{"text": "boat", "label": [3.5, "4"]}\n')
    data = TextRegressionDataModule(train_files=["never-read.csv"], max_length=16)
    data.bind_model(tokenizer, {"num_targets": 2, "target_mean": [3.0, -10.0], "target_std": [2.0, 50.0]})
    rows = data.read_new_rows("test", [str(path)], labelled=True)
    assert rows.ids == [0, 1] and [e["labels"] for e in rows.examples] == [[1.0, 2.0], [3.5, 4.0]]
    module = moved_weights(Regressor(text_spec(tokenizer), None, num_targets=2, target_mean=[3.0, -10.0], target_std=[2.0, 50.0]))
    batch = module.build_collator(tokenizer)(rows.examples)
    with torch.no_grad():
        scaled = module(batch)
    assert torch.allclose(torch.tensor([p["prediction"] for p in module.predictions(batch)]),
                          scaled * torch.tensor([2.0, 50.0]) + torch.tensor([3.0, -10.0]))
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a cat", "label": 1}\n')
    with pytest.raises(DataError, match="where the model predicts 2 number"):
        data.read_new_rows("test", [str(one)], labelled=True)


# -- token classification -------------------------------------------------------------------------------------
def test_tagged_rows_mark_each_word_and_the_tagger_reads_it_there(tokenizer, tmp_path):
    from headstart.data.token_classification import TokenClassificationDataModule
    from headstart.heads.token_classification import TokenClassifier

    path = tmp_path / "new.jsonl"
    words = [["alice", "met", "bobcat", "in", "paris"], ["sailing"], []]
    path.write_text("".join(json.dumps({"tokens": w}) + "\n" for w in words))
    data = TokenClassificationDataModule(train_files=["never-read.jsonl"], max_length=16, label_all_tokens=True)
    data.bind_model(tokenizer, {"num_labels": 4, "label_names": TAGS})
    rows = data.read_new_rows("predict", [str(path)], labelled=False)
    assert rows.ids == [0, 1] and rows.shown == [{"words": words[0]}, {"words": words[1]}]  # nothing to tag: skipped
    encoded = tokenizer(words[:2], is_split_into_words=True, truncation=True, max_length=16)
    for i, example in enumerate(rows.examples):
        first = [t for t, w in enumerate(encoded.word_ids(i)) if w is not None and w != encoded.word_ids(i)[t - 1]]
        # Prediction marks each word's first sub-token only (label_all_tokens is for training).
        assert [t for t, label in enumerate(example["labels"]) if label != -100] == first

    module = moved_weights(TokenClassifier(text_spec(tokenizer), None, 4, label_names=TAGS))
    batch = module.build_collator(tokenizer)(rows.examples)
    with torch.no_grad():
        predicted = module.predictions(batch)
        probabilities = module(batch).softmax(-1)
    for i, p in enumerate(predicted):
        first = [t for t, w in enumerate(encoded.word_ids(i)) if w is not None and w != encoded.word_ids(i)[t - 1]]
        assert len(p["tags"]) == len(words[i])
        assert p["tags"] == [TAGS[int(probabilities[i, t].argmax())] for t in first]
        assert p["scores"] == pytest.approx([float(probabilities[i, t].max()) for t in first], abs=1e-6)

    tagged = tmp_path / "tagged.csv"
    tagged.write_text("tokens,tags\nalice met bob,B-PER O B-PER\nbob in lima,B-PER O B-CITY\n")
    with pytest.raises(DataError, match=r"row 2 of .* has tags \['B-CITY'\] the model was not trained on"):
        data.read_new_rows("test", [str(tagged)], labelled=True)
    tagged.write_text("tokens,tags\nalice met bob,B-PER O B-PER\n")
    [example] = data.read_new_rows("test", [str(tagged)], labelled=True).examples
    enc = tokenizer(["alice", "met", "bob"], is_split_into_words=True)
    expected, previous = [], None  # label_all_tokens=true: a word's later sub-tokens carry I- of its tag
    for w in enc.word_ids():
        tag = None if w is None else ["B-PER", "O", "B-PER"][w]
        expected.append(-100 if w is None else TAGS.index(tag if w != previous else tag.replace("B-", "I-")))
        previous = w
    assert example["labels"] == expected


# -- question answering ---------------------------------------------------------------------------------------
def test_questions_become_windows_and_the_answer_is_the_best_span(tokenizer, tmp_path):
    from headstart.data.question_answering import QuestionAnsweringDataModule
    from headstart.heads.question_answering import QuestionAnswering

    context = "the capital of peru is lima . " * 4 + "the cat and the dog met alice in paris ."
    rows_in = [{"question": "what is the capital of peru ?", "context": context},
               {"question": "who met alice ?", "context": "the dog met alice ."}]
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    data = QuestionAnsweringDataModule(train_files=["never-read.jsonl"], max_length=24, doc_stride=8)
    data.bind_model(tokenizer, {})
    rows = data.read_new_rows("predict", [str(path)], labelled=False)
    assert rows.ids == [0, 1] and len(rows.examples[0]["input_ids"]) > 1  # the long context: several windows

    module = moved_weights(QuestionAnswering(text_spec(tokenizer), None, max_answer_length=5))
    batch = module.build_collator(tokenizer)(rows.examples)
    with torch.no_grad():
        predicted = module.predictions(batch)
        start, end = module(batch)
    for e, (row, p) in enumerate(zip(rows_in, predicted, strict=True)):
        enc = tokenizer(row["question"], row["context"], truncation="only_second", max_length=24, stride=8,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        windows = [w for w, x in enumerate(batch["example_index"].tolist()) if x == e]
        offsets = [[o if s == 1 else (-1, -1) for o, s in zip(enc["offset_mapping"][k], enc.sequence_ids(k),
                                                               strict=True)] for k in range(len(windows))]
        length = max(len(o) for o in offsets)
        offsets = [o + [(-1, -1)] * (length - len(o)) for o in offsets]
        begin, stop = best_answer_by_enumeration(start[windows][:, :length], end[windows][:, :length],
                                                 torch.tensor(offsets), module.n_best, 5)
        assert (p["start"], p["end"]) == (begin, stop)
        assert p["answer"] == row["context"][begin:stop].strip()

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(json.dumps({**rows_in[1], "answers": {"text": ["alice"], "answer_start": [12]}}) + "\n")
    [example] = data.read_new_rows("test", [str(labelled)], labelled=True).examples
    assert example["answers"] == ["alice"]
    window_offsets = example["offset_mapping"][0]
    first, last = example["start_positions"][0], example["end_positions"][0]
    assert (window_offsets[first][0], window_offsets[last][1]) == (12, 17)
    labelled.write_text(json.dumps({**rows_in[1], "answers": {"text": ["alice"], "answer_start": [3]}}) + "\n")
    with pytest.raises(DataError, match="the answer 'alice' is not at answer_start=3"):
        data.read_new_rows("test", [str(labelled)], labelled=True)
    with pytest.raises(DataError, match="has no column 'answer_text'"):  # no answers column: the flat pair is wanted
        data.read_new_rows("test", [str(path)], labelled=True)


# -- images ---------------------------------------------------------------------------------------------------
def _png(path, seed: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return torch.from_numpy(pixels.astype("float32") / 255.0)[None]


def test_image_rows_from_files_and_folders(tmp_path):
    from headstart.data.vision import ImageDataModule, ImageProcessor

    processor = ImageProcessor(image_size=8, num_channels=1, image_mean=[0.5], image_std=[0.25])
    pixels = {name: _png(tmp_path / "new" / name, i) for i, name in enumerate(["b.png", "a.png", "deep/c.png"])}
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    data = ImageDataModule(builtin="digits")
    data.bind_model(processor, {"num_labels": 3, "label_names": ["0", "1", "2"]})
    rows = data.read_new_rows("predict", [str(tmp_path / "new"), str(tmp_path / "new" / "b.png")], labelled=False)
    assert rows.ids == ["a.png", "b.png", "deep/c.png", str(tmp_path / "new" / "b.png")]
    for row_id, example in zip(rows.ids, rows.examples, strict=True):
        assert set(example) == {"pixel_values"}
        assert torch.allclose(example["pixel_values"], (pixels[row_id.split("new/")[-1]] - 0.5) / 0.25)

    _png(tmp_path / "test" / "2" / "x.png", 5)
    _png(tmp_path / "test" / "0" / "y.png", 6)
    rows = data.read_new_rows("test", [str(tmp_path / "test")], labelled=True)
    assert [int(e["labels"]) for e in rows.examples] == [0, 2] and rows.ids == ["0/y.png", "2/x.png"]
    _png(tmp_path / "test" / "7" / "z.png", 7)
    with pytest.raises(DataError, match=r"has class folders \['7'\] the model was not trained on"):
        data.read_new_rows("test", [str(tmp_path / "test")], labelled=True)
