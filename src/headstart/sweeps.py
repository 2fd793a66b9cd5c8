"""W&B sweep files, expanded locally into the ``train.py`` command lines they would run.

``python -m headstart.sweeps sweeps/mlm_lr_grid.yaml [--count N] [--seed S]`` prints one command a
line. ``grid`` sweeps give every combination; ``random`` and ``bayes`` sweeps give ``--count``
samples from the parameter distributions (a local preview: the real ``bayes`` search runs on the W&B
server with ``wandb sweep`` + ``wandb agent``). This is how sweep files are tested without a server.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from headstart.errors import ConfigError

METHODS = ("grid", "random", "bayes")


def load_sweep(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Sweep file {str(path)!r} does not exist. Give the path of a file in sweeps/.")
    sweep = yaml.safe_load(path.read_text())
    if not isinstance(sweep, dict) or sweep.get("method") not in METHODS or not sweep.get("parameters"):
        raise ConfigError(f"{path}: a sweep needs `method` ({', '.join(METHODS)}) and `parameters`.")
    return sweep


def _sample(name: str, spec: dict[str, Any], rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    dist = spec.get("distribution", "uniform" if isinstance(spec.get("min"), float) else "int_uniform")
    low, high = spec.get("min"), spec.get("max")
    if dist == "uniform":
        return rng.uniform(low, high)
    if dist == "int_uniform":
        return rng.randint(low, high)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if dist == "q_uniform":
        q = spec.get("q", 1)
        return round(rng.uniform(low, high) / q) * q
    raise ConfigError(f"Sweep parameter {name!r}: distribution {dist!r} is not supported by the local expansion.")


def parameter_sets(sweep: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        names = list(params)
        for name in names:
            if "value" not in params[name] and "values" not in params[name]:
                raise ConfigError(f"Grid sweep parameter {name!r} needs `values` (or `value`), not a distribution.")
        choices = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]
    rng = random.Random(seed)
    n = count or sweep.get("run_cap") or 5
    return [{name: _sample(name, spec, rng) for name, spec in params.items()} for _ in range(n)]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def commands(sweep: dict[str, Any], count: int | None = None, seed: int = 0, program: str = "train.py") -> list[list[str]]:
    """The argv of every run, built from the sweep's ``command`` template as the W&B agent does."""
    template = sweep.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    runs = []
    for params in parameter_sets(sweep, count, seed):
        args = [f"{k}={_format(v)}" for k, v in params.items()]
        argv: list[str] = []
        for part in template:
            if part == "${env}":
                continue
            if part in ("${interpreter}",):
                argv.append(sys.executable)
            elif part == "${program}":
                argv.append(sweep.get("program", program))
            elif part == "${args}":
                argv.extend(f"--{a}" for a in args)
            elif part == "${args_no_hyphens}":
                argv.extend(args)
            elif part == "${args_json}":
                raise ConfigError("${args_json} is not supported: train.py takes key=value overrides.")
            else:
                argv.append(part)
        runs.append(argv)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headstart.sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file")
    parser.add_argument("--count", type=int, default=None, help="runs to draw for random/bayes sweeps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        for run in commands(load_sweep(args.sweep_file), args.count, args.seed):
            print(shlex.join(run))
    except ConfigError as err:
        print(f"headstart: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
