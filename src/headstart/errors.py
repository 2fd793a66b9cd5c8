"""User-facing errors: one paragraph that names the bad value and the fix, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HeadstartError(Exception):
    """A mistake in the user's config, data or files. The CLI prints the message and exits non-zero."""

    exit_code = 2


class ConfigError(HeadstartError):
    """A config value is unknown, mistyped or inconsistent."""


class DataError(HeadstartError):
    """A data file is missing, empty or unreadable."""


class CheckpointError(HeadstartError):
    """A checkpoint or exported model cannot be used for this run."""


class TrainingError(HeadstartError):
    """Training cannot go on (its loss stopped being a number); the last good checkpoint is named."""


class Preempted(HeadstartError):
    """The process was asked to stop (SIGTERM) and saved a checkpoint to resume from."""

    exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a process it stopped


class Interrupted(Preempted):
    """Ctrl-C (SIGINT): stopped after the batch, with a checkpoint to resume from."""

    exit_code = 130  # 128 + SIGINT, what a shell expects


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
