"""Data sets that ship with Python, written out as ordinary files so they take the same path as
the user's own files.

``pydoc_topics``: the pydoc topic pages (the language reference), one paragraph a line, for
language-model pretraining. ``python_docs``: those paragraphs plus the docstrings of the standard
library's source files (about four times more text). ``pydoc_topics_cls``: the same paragraphs labelled with the part of the
reference they come from (``label``) and with their topic page (``topic``). Paragraphs are split by a hash of their text, and the labelled test
paragraphs are left out of the pretraining corpus, so pretraining never sees test inputs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

from headstart.errors import ConfigError

# Which part of the language reference each pydoc topic belongs to.
_TOPIC_CLASSES = {
    "statement": (
        "assert assignment async augassign break class compound continue del else for function global if "
        "import nonlocal pass raise return try while with yield"
    ),
    "expression": (
        "atom-identifiers atom-literals attribute-references await binary bitwise booleans calls comparisons "
        "conversions dict exprlists floating formatstrings identifiers imaginary in integers lambda lists "
        "numbers operator-summary power shifting slicings strings subscriptions unary"
    ),
    "data_model": (
        "attribute-access callable-types context-managers customization id-classes numeric-types objects "
        "sequence-types specialattrs specialnames types truth"
    ),
    "builtin_type": (
        "bltin-code-objects bltin-ellipsis-object bltin-null-object bltin-type-objects string-methods "
        "typesfunctions typesmapping typesmethods typesmodules typesseq typesseq-mutable"
    ),
    "execution": "debugger dynamic-features exceptions execmodel naming",
}
_MIN_WORDS = 8
_MIN_TOPIC_TRAIN = 5


def _split_of(text: str) -> str:
    bucket = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 10
    return {0: "test", 1: "validation"}.get(bucket, "train")


def pydoc_paragraphs() -> list[tuple[str, str, str]]:
    """(text, label, split) for every distinct paragraph of the pydoc topics with a single label."""
    from pydoc_data.topics import topics

    topic_to_label = {t: label for label, names in _TOPIC_CLASSES.items() for t in names.split()}
    labels: dict[str, set[str]] = {}
    for topic, body in sorted(topics.items()):
        label = topic_to_label.get(topic)
        if label is None:  # a topic added in a newer Python: not labelled, still pretraining text
            label = "unlabelled"
        for text in _paragraphs(body):
            labels.setdefault(text, set()).add(label)
    return [(text, next(iter(lab)), _split_of(text)) for text, lab in labels.items() if len(lab) == 1]


def _paragraphs(text: str) -> list[str]:
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return [p for p in paras if len(p.split()) >= _MIN_WORDS]


def stdlib_docstring_paragraphs() -> list[str]:
    """Paragraphs of the module, class and function docstrings of the standard library's sources."""
    import sysconfig

    skip = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo", "ensurepip", "__pycache__"}
    seen: dict[str, None] = {}
    for dirpath, dirnames, filenames in os.walk(sysconfig.get_paths()["stdlib"]):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for filename in sorted(f for f in filenames if f.endswith(".py")):
            try:
                tree = ast.parse(Path(dirpath, filename).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    seen.update(dict.fromkeys(_paragraphs(ast.get_docstring(node) or "")))
    return list(seen)


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def _materialize_pydoc_topics(root: Path) -> dict[str, list[str]]:
    paras = pydoc_paragraphs()
    files = {}
    for split in ("train", "validation"):
        path = root / f"{split}.txt"
        if not path.exists():
            _write_atomic(path, [t for t, _, s in paras if s == split])
        files[split] = [str(path)]
    return files


def _materialize_python_docs(root: Path) -> dict[str, list[str]]:
    train, validation = root / "train.txt", root / "validation.txt"
    if not (train.exists() and validation.exists()):
        paras = pydoc_paragraphs()
        if not validation.exists():
            _write_atomic(validation, [t for t, _, s in paras if s == "validation"])
        if not train.exists():
            held_out = {t for t, _, s in paras if s != "train"}
            docstrings = [t for t in stdlib_docstring_paragraphs() if t not in held_out]
            _write_atomic(train, [t for t, _, s in paras if s == "train"] + docstrings)
    return {"validation": [str(validation)], "train": [str(train)]}


def _topic_pages(paras: list[tuple[str, str, str]]) -> dict[str, str]:
    """The pydoc topic page of each paragraph (its first, when pages share it); pages with fewer than
    _MIN_TOPIC_TRAIN training paragraphs are pooled as "other", so every fine label can be learnt."""
    from pydoc_data.topics import topics

    page: dict[str, str] = {}
    for topic, body in sorted(topics.items()):
        for text in _paragraphs(body):
            page.setdefault(text, topic)
    train_counts = Counter(page[t] for t, _, s in paras if s == "train")
    return {t: page[t] if train_counts[page[t]] >= _MIN_TOPIC_TRAIN else "other" for t, _, _ in paras}


def _materialize_pydoc_topics_cls(root: Path) -> dict[str, list[str]]:
    """Rows {"text", "label": the part of the reference, "topic": the topic page} (two tasks on one text)."""
    paras = [p for p in pydoc_paragraphs() if p[1] != "unlabelled"]
    pages = _topic_pages(paras)
    files = {}
    for split in ("train", "validation", "test"):
        path = root / f"{split}.jsonl"
        if not path.exists() or '"topic"' not in path.open(encoding="utf-8").readline():  # or written before topics
            _write_atomic(path, [json.dumps({"text": t, "label": lab, "topic": pages[t]})
                                 for t, lab, s in paras if s == split])
        files[split] = [str(path)]
    return files


BUILTINS = {"pydoc_topics": _materialize_pydoc_topics, "python_docs": _materialize_python_docs,
            "pydoc_topics_cls": _materialize_pydoc_topics_cls}


def materialize(name: str, data_dir: str) -> dict[str, list[str]]:
    """Write builtin data set ``name`` under ``data_dir`` (once) and return its files per split."""
    if name not in BUILTINS:
        raise ConfigError(
            f"data.builtin={name!r} is not a builtin data set; use one of {sorted(BUILTINS)}, "
            "or set data.builtin=null and give your own files with data.train_files=[...]."
        )
    return BUILTINS[name](Path(data_dir) / "builtin" / name)
