"""Shared fixtures: offline environment, test-made corpora, and a runner for train.py."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach the network.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE_ENV)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The xdist workers share the cores: torch in each (and in the train.py runs it starts) takes one
    # thread, not one per core, where threads of different processes would spin waiting on each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"

# A tiny encoder so end-to-end runs take seconds.
TINY_MODEL = [
    "model.arch.hidden_size=32", "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2",
    "model.arch.intermediate_size=64", "model.arch.max_position_embeddings=64",
]
# The same encoder as a transformers config, for tests that build modules in process.
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}

# A synthetic "language": each topic has its own words, all share the function words, so an MLM can
# learn it quickly and a classifier can tell topics apart.
TOPICS = {
    "animals": "cat dog horse cow sheep goat mouse bird fish lion tiger bear wolf fox deer".split(),
    "cooking": "bake boil fry roast oven pan knife salt pepper sugar flour butter onion garlic soup".split(),
    "sailing": "boat sail wind mast deck anchor harbor wave tide rope keel hull port starboard crew".split(),
}
FUNCTION_WORDS = "the a of and to in is with on for at by from".split()


#: The test files that take longest (minutes of train.py runs), run first: pytest-xdist (see pyproject's
#: addopts) hands whole files to its two workers in collection order, so the long ones start at once and
#: the other worker works through the rest meanwhile, instead of one worker finishing them alone.
LONGEST_FIRST = ("test_readme_commands.py", "test_debug_group.py", "test_head_exports.py", "test_bad_input.py")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order stays


def make_sentence(rng: random.Random, topic: str, n_words: int = 14) -> str:
    words = []
    for i in range(n_words):
        words.append(rng.choice(FUNCTION_WORDS) if i % 3 == 1 else rng.choice(TOPICS[topic]))
    return " ".join(words)


def write_corpus(path: Path, n_lines: int, seed: int) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(make_sentence(rng, rng.choice(list(TOPICS))) for _ in range(n_lines)) + "\n")
    return path


def write_labeled(path: Path, n_rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        topic = rng.choice(list(TOPICS))
        rows.append(json.dumps({"text": make_sentence(rng, topic, n_words=8), "label": topic}))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Unlabeled train/val text and labeled train/val/test jsonl files."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "train.txt", 600, seed=0)
    write_corpus(root / "val.txt", 80, seed=1)
    write_labeled(root / "cls_train.jsonl", 240, seed=2)
    write_labeled(root / "cls_val.jsonl", 60, seed=3)
    write_labeled(root / "cls_test.jsonl", 90, seed=4)
    return root


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One tokenizer/tokenized-data cache for the whole session (what a user's machine keeps too)."""
    return tmp_path_factory.mktemp("cache")


def run_train(args: list[str], root: Path, cache: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py`` with outputs under ``root``; returns the finished process."""
    root.mkdir(parents=True, exist_ok=True)
    flags = [a for a in args if a in ("-m", "--multirun")]  # argparse wants them before the overrides
    cmd = [sys.executable, str(TRAIN), *flags, f"paths.root_dir={root}", *(a for a in args if a not in flags)]
    if cache is not None:
        cmd.append(f"paths.cache_dir={cache}")
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def two_at_a_time(run, cases: list) -> dict:
    """``{case.__name__: run(case)}``, two cases at a time: each train.py subprocess mostly waits on its
    own imports on one core, so a 2-core machine runs two in the time of one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((case.__name__ for case in cases), pool.map(run, cases), strict=True))


def only_run_dir(root: Path) -> Path:
    """The run directory of the one stage run under ``root``."""
    [results] = root.glob("outputs/*/*/results.json")
    return results.parent


def finished_run(proc: subprocess.CompletedProcess, root: Path, what: str) -> tuple[Path, dict]:
    """The run directory and results of a train.py run under ``root`` that must have succeeded; its
    test metrics are printed under ``what`` (``pytest -s`` shows them)."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = only_run_dir(root)
    results = json.loads((run_dir / "results.json").read_text())
    print(f"{what} test metrics:", {k: round(v, 3) for k, v in results["metrics"].items() if k.startswith("test/")})
    return run_dir, results


def logged(run_dir: Path, name: str) -> list[float]:
    """Every value the CSV logger wrote under ``name``, in order."""
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: non-zero exit, a message with each fragment, and no traceback."""
    err = proc.stderr
    assert proc.returncode != 0, f"expected failure, got exit 0\n{proc.stdout[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err[-3000:]
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in stderr:\n{err[-3000:]}"


def make_mlm_export(texts: list[str], arch: dict, directory: Path) -> Path:
    """An MLM export in ``directory`` (weights moved off their init, so a hand-off is visible) with a
    WordPiece tokenizer trained on ``texts``: a pretrained backbone for hand-off tests, in seconds."""
    import functools

    import torch

    from headstart.backbones.text import TextBackboneSpec
    from headstart.data.tokenizer import train_tokenizer
    from headstart.objectives.masked_lm import MaskedLanguageModeling

    tokenizer = train_tokenizer(iter([texts]), "wordpiece", 200, True, 64)
    spec = TextBackboneSpec(arch=arch)
    spec.bind_tokenizer(tokenizer)
    torch.manual_seed(0)
    module = MaskedLanguageModeling(spec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    with torch.no_grad():
        for param in module.net.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    module.export(str(directory), tokenizer, {"source_run": "mlm-run", "config_hash": "feed", "completed": True})
    return directory


def small_tokenizer():
    """A small wordpiece tokenizer for in-process head tests: the topic sentences and a few names."""
    from headstart.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [make_sentence(rng, topic) for topic in sorted(TOPICS) for _ in range(30)]
    texts += ["alice met bob in paris", "what is the capital of peru ?", "the capital of peru is lima ."]
    return train_tokenizer(iter([texts]), "wordpiece", 200, True, 64)


def moved_weights(module, seed: int = 0):
    """``module`` in eval mode with every weight moved off its init (the head's too): a weight left out or
    put in the wrong place then changes the outputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return module.eval()


def text_spec(tokenizer, arch: dict | None = None):
    """A text backbone spec of ``arch`` (TINY_BERT by default) bound to ``tokenizer``."""
    from headstart.backbones.text import TextBackboneSpec

    spec = TextBackboneSpec(arch=dict(arch or TINY_BERT))
    spec.bind_tokenizer(tokenizer)
    return spec

