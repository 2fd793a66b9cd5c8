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
