"""Tab- and otherwise-delimited files: .tsv read with tabs, quoted fields over several lines,
data.delimiter, and an error that names the delimiter when the columns do not line up."""

from __future__ import annotations

import csv

import pytest

from headstart.data.files import load_files
from headstart.data.text_classification import TextClassificationDataModule
from headstart.errors import DataError

# Reviews as the reference data holds them: a line break, a tab and doubled quotes inside quoted fields.
ROWS = [
    ("Horrible book.\n\tI read half of it, then \"put it down\".\n\nNever again", "0"),
    ("A gem: clear, funny and\nwarm.", "1"),
    ("plain one-line review", "1"),
    ('She said "wow"; so did I.', "0"),
]


def write_delimited(path, rows, delimiter="\t", header=("sentence", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_tsv_with_quoted_multiline_fields_reads_every_review_whole(tmp_path):
    path = write_delimited(tmp_path / "reviews.tsv", ROWS)
    assert len(path.read_text().splitlines()) > len(ROWS) + 1  # the file really has fields over several lines
    data = load_files({"train": [str(path)]}, "sentence", str(tmp_path / "cache"), ("label",))
    assert data["train"]["text"] == [text for text, _ in ROWS]
    assert [str(v) for v in data["train"]["label"]] == [label for _, label in ROWS]


def test_other_delimiters_through_data_delimiter(tmp_path):
    path = write_delimited(tmp_path / "reviews.csv", ROWS, delimiter=";")
    data = load_files({"train": [str(path)]}, "sentence", str(tmp_path / "cache"), ("label",), delimiter=";")
    assert data["train"]["text"] == [text for text, _ in ROWS]


def test_a_wrong_delimiter_is_named_in_the_error(tmp_path):
    # Tab-separated text in a .csv file: with commas, the rows have more fields than the header.
    path = write_delimited(tmp_path / "renamed.csv", [("good, really good", "1"), ("bad, so bad, awful", "0")])
    with pytest.raises(DataError, match="delimiter") as err:
        load_files({"train": [str(path)]}, "sentence", str(tmp_path / "cache"), ("label",))
    assert "data.delimiter" in str(err.value) and "renamed.csv" in str(err.value)


def test_classifier_data_module_trains_on_tsv_splits(tmp_path):
    rows = [(f"great fun {i}" if i % 2 else f"dull waste\n{i}", str(i % 2)) for i in range(40)]
    files = {split: write_delimited(tmp_path / f"{split}.tsv", rows) for split in ("train", "dev")}
    module = TextClassificationDataModule(train_files=[str(files["train"])], val_files=[str(files["dev"])],
                                          text_column="sentence", vocab_size=100, max_length=16,
                                          cache_dir=str(tmp_path / "cache"))
    module.prepare()
    assert module.label_names == ["0", "1"] and len(module.datasets["train"]) == 40


def test_eval_rows_with_training_text_are_counted_and_dropped_on_request(tmp_path, caplog):
    """Public data sets can hold the same review in train and test (the shared reviews do, 85% of
    their test rows): counted always, dropped with data.drop_eval_overlap, also against a corpus."""
    train = [(f"review number {i} was fine", str(i % 2)) for i in range(20)]
    test = train[:6] + [(f"A new review {i}", str(i % 2)) for i in range(4)]  # 6 training texts, 4 new
    # 3 training texts that differ in case and spacing only, one new, one from the corpus.
    dev = [(f"Review number {i} was  FINE", str(i % 2)) for i in range(3)] + [("unseen dev text", "1"),
                                                                             ("corpus only text", "0")]
    paths = {name: write_delimited(tmp_path / f"{name}.tsv", rows) for name, rows in
             (("train", train), ("test", test), ("dev", dev))}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("corpus only text\nsomething else\n")

    def module(**kwargs):
        data = TextClassificationDataModule(train_files=[str(paths["train"])], val_files=[str(paths["dev"])],
                                            test_files=[str(paths["test"])], text_column="sentence", vocab_size=100,
                                            max_length=16, cache_dir=str(tmp_path / "cache"), **kwargs)
        data.prepare()
        return {split: len(ds) for split, ds in data.datasets.items()}

    with caplog.at_level("WARNING"):
        assert module() == {"train": 20, "validation": 5, "test": 10}
    assert "6 of 10 test rows (60%)" in caplog.text and "3 of 5 validation rows" in caplog.text
    assert module(drop_eval_overlap=True) == {"train": 20, "validation": 2, "test": 4}
    assert module(drop_eval_overlap=True, overlap_files=[str(corpus)]) == {"train": 20, "validation": 1, "test": 4}
    with pytest.raises(DataError, match="leaves no test data"):
        paths["test"] = write_delimited(tmp_path / "test_all_seen.tsv", train[:3])
        module(drop_eval_overlap=True)


def test_regression_data_drops_eval_overlap_too(tmp_path):
    from headstart.data.text_regression import TextRegressionDataModule

    train = [(f"sentence {i} about numbers", str(i / 10)) for i in range(20)]
    test = train[:5] + [(f"new sentence {i}", "0.5") for i in range(3)]
    paths = {name: write_delimited(tmp_path / f"{name}.tsv", rows) for name, rows in (("train", train), ("test", test))}
    data = TextRegressionDataModule(train_files=[str(paths["train"])], test_files=[str(paths["test"])],
                                    text_column="sentence", vocab_size=100, max_length=16,
                                    cache_dir=str(tmp_path / "cache"), drop_eval_overlap=True)
    data.prepare()
    assert len(data.datasets["test"]) == 3
