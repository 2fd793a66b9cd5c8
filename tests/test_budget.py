"""Time budgets a user can see coming: a stage logs its expected training time once its first steps are
timed, a pipeline logs each stage's step budget and how long its downstream runs have left, and the
text recipe's pretraining is bounded in steps, so a large corpus cannot make it run for hours."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from headstart import throughput
from headstart.pipeline import runner


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _timed_steps(monkeypatch, expect_after: int, total: int, steps: int) -> throughput.ThroughputMonitor:
    """A monitor after ``steps`` training steps of 0.1 s each, of a run of ``total`` steps."""
    clock = _Clock()
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    monkeypatch.setattr(throughput.ThroughputMonitor, "_count", lambda *a, **k: None)
    monitor = throughput.ThroughputMonitor(expect_after=expect_after)
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, estimated_stepping_batches=total)
    for step in range(1, steps + 1):
        trainer.global_step = step
        monitor.on_train_batch_end(trainer, None, None, {"input_ids": None})
        clock.now += 0.1
    return monitor


def test_a_stage_logs_its_expected_training_time_from_its_first_timed_steps(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="headstart.throughput"):
        # The first step starts the clock; 50 more at 0.1 s each.
        monitor = _timed_steps(monkeypatch, expect_after=50, total=3000, steps=51)
    # 50 steps in 5 s: 10 steps/s, 3000 - 51 steps to go -> 294.9 s.
    assert monitor.expected_training == {"steps": 3000, "steps_per_s": 10.0, "remaining_s": 294.9}
    assert "Expected training time: 4.9 min more for the remaining 2949 of 3000 optimizer steps" in caplog.text


def test_a_short_stage_logs_no_expected_time(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="headstart.throughput"):
        monitor = _timed_steps(monkeypatch, expect_after=5, total=200, steps=7)
    assert monitor.expected_training["remaining_s"] == pytest.approx(19.4)
    assert "Expected training time" not in caplog.text  # under a minute: not worth a line


def test_downstream_progress_says_how_long_the_rest_should_take(monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr("time.perf_counter", clock)
    with caplog.at_level(logging.INFO, logger="headstart.pipeline.runner"):
        progress = runner._Progress(144)
        clock.now += 120  # the first model's 8 candidates in 2 minutes
        progress.done(8)
    assert "Downstream: 144 training runs" in caplog.text
    assert "Downstream runs: 8 of 144 done in 2.0 min; about 34.0 min to go at this pace" in caplog.text


def test_budget_words():
    words = runner._budget_words
    assert words(OmegaConf.create({"max_steps": 3000, "max_epochs": 10})) == \
        "3000 optimizer steps or 10 epochs, whichever comes first"
    assert words(OmegaConf.create({"max_steps": -1, "max_epochs": 3})) == "3 epochs"
    assert words(OmegaConf.create({"max_steps": 200, "max_epochs": None})) == "200 optimizer steps"
