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


def test_rows_shared_between_splits_are_counted_per_pair_and_dropped_on_request(tmp_path, caplog):
    """Public data sets can hold the same review in two splits (the first shared reviews held the dev
    file inside the test file): every pair of splits is counted, always; data.drop_eval_overlap drops
    dev rows found in training or the corpus, and test rows found in training, the corpus or dev (dev
    chose the model)."""
    train = [(f"review number {i} was fine", str(i % 2)) for i in range(20)]
    # 6 training texts, 1 dev text (other case), 4 new.
    test = train[:6] + [("UNSEEN dev text", "1")] + [(f"A new review {i}", str(i % 2)) for i in range(4)]
    # 3 training texts that differ in case and spacing only, one new, one from the corpus.
    dev = [(f"Review number {i} was  FINE", str(i % 2)) for i in range(3)] + [("unseen dev text", "1"),
                                                                             ("corpus only text", "0")]
    paths = {name: write_delimited(tmp_path / f"{name}.tsv", rows) for name, rows in
             (("train", train), ("test", test), ("dev", dev))}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("corpus only text\nsomething else\nreview number 0 was fine\n")

    def module(**kwargs):
        data = TextClassificationDataModule(train_files=[str(paths["train"])], val_files=[str(paths["dev"])],
                                            test_files=[str(paths["test"])], text_column="sentence", vocab_size=100,
                                            max_length=16, cache_dir=str(tmp_path / "cache"), min_test_rows=1,
                                            min_test_share=0.0, **kwargs)
        data.prepare()
        return {split: len(ds) for split, ds in data.datasets.items()}, data.split_overlap

    with caplog.at_level("WARNING"):
        sizes, record = module()
    assert sizes == {"train": 20, "validation": 5, "test": 11}
    assert "7 of the 11 rows of the test split" in caplog.text and "3 of the 5 rows of the dev" in caplog.text
    assert record["pairs"] == {"train/validation": {"train": 3, "validation": 3}, "train/test": {"train": 6, "test": 6},
                               # the 3 dev copies of training rows are test rows too, and so is one dev text
                               "validation/test": {"validation": 4, "test": 4}}
    assert record["dropped"] == {}

    sizes, record = module(drop_eval_overlap=True)
    assert sizes == {"train": 20, "validation": 2, "test": 4}
    assert record["dropped"] == {"validation": {"rows": 3, "of": 5, "kept": 2, "by": {"train": 3}},
                                 "test": {"rows": 7, "of": 11, "kept": 4, "by": {"train": 6, "validation": 1}}}

    sizes, record = module(drop_eval_overlap=True, overlap_files=[str(corpus)])
    assert sizes == {"train": 20, "validation": 1, "test": 4}
    assert record["rows"] == {"train": 20, "validation": 5, "test": 11, "corpus": 3}
    assert record["pairs"]["train/corpus"] == {"train": 1, "corpus": 1}
    assert record["pairs"]["validation/corpus"] == {"validation": 2, "corpus": 2}  # 'review number 0', 'corpus only'
    assert record["dropped"]["validation"]["by"] == {"train": 3, "corpus": 1}
    with pytest.raises(DataError, match="leaves no test data"):
        paths["test"] = write_delimited(tmp_path / "test_all_seen.tsv", train[:3])
        module(drop_eval_overlap=True)


@pytest.mark.parametrize("settings, refused", [
    ({}, True),  # 40 rows left: under 100
    ({"min_test_rows": 30}, False),  # 40 rows, 40% of the file: enough
    ({"min_test_rows": 30, "min_test_share": 0.5}, True),  # but under half of it
])
def test_a_test_that_dropping_leaves_too_small_is_refused_with_files_and_counts(tmp_path, settings, refused):
    train = [(f"training review {i} text", str(i % 2)) for i in range(60)]
    dev = [(f"dev review {i} text", str(i % 2)) for i in range(10)]
    test = train + dev[:0] + [(f"held out review {i}", str(i % 2)) for i in range(40)]
    paths = {name: write_delimited(tmp_path / f"{name}.tsv", rows) for name, rows in
             (("train", train), ("test", test), ("dev", dev))}
    data = TextClassificationDataModule(train_files=[str(paths["train"])], val_files=[str(paths["dev"])],
                                        test_files=[str(paths["test"])], text_column="sentence", vocab_size=100,
                                        max_length=16, cache_dir=str(tmp_path / "cache"), drop_eval_overlap=True,
                                        **settings)
    if not refused:
        data.read_splits()
        assert data.split_overlap["dropped"]["test"] == {"rows": 60, "of": 100, "kept": 40, "by": {"train": 60}}
        return
    with pytest.raises(DataError) as err:
        data.read_splits()
    message = str(err.value)
    for fragment in ("60 of the 100 rows of the test split", str(paths["test"]), "the training split",
                     str(paths["train"]), "would leave 40 test rows (40% of the file)", "data.min_test_rows=",
                     "Split your data again"):
        assert fragment in message, message


def test_regression_data_drops_eval_overlap_too(tmp_path):
    from headstart.data.text_regression import TextRegressionDataModule

    train = [(f"sentence {i} about numbers", str(i / 10)) for i in range(20)]
    test = train[:5] + [(f"new sentence {i}", "0.5") for i in range(3)]
    paths = {name: write_delimited(tmp_path / f"{name}.tsv", rows) for name, rows in (("train", train), ("test", test))}
    data = TextRegressionDataModule(train_files=[str(paths["train"])], test_files=[str(paths["test"])],
                                    text_column="sentence", vocab_size=100, max_length=16,
                                    cache_dir=str(tmp_path / "cache"), drop_eval_overlap=True, min_test_rows=1,
                                    min_test_share=0.0)
    data.prepare()
    assert len(data.datasets["test"]) == 3
