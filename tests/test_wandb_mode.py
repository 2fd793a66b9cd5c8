"""headstart.tracking.resolve_wandb_mode: never hangs, never goes online without a key and a server."""

from __future__ import annotations

import json
import socket
import time

import pytest

from headstart.errors import ConfigError
from headstart.tracking import resolve_wandb_mode
from headstart.tracking import wandb as tracking_wandb


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No WANDB_MODE, no API key, the default server, and a HOME without .netrc."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def closed_port() -> int:
    """A local port with nothing listening on it (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forbid_server_probe(monkeypatch) -> None:
    def probe(*args, **kwargs):
        raise AssertionError("the W&B server was probed although the answer did not depend on it")

    monkeypatch.setattr(tracking_wandb, "_server_reachable", probe)


@pytest.mark.parametrize("env_mode", ["offline", "disabled", "online"])
def test_wandb_mode_env_wins(clean_env, monkeypatch, env_mode):
    forbid_server_probe(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", env_mode)
    for mode in ("auto", "online", "offline", "disabled"):
        assert resolve_wandb_mode(mode) == env_mode


def test_wandb_env_dryrun_means_offline(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode("online") == "offline"


def test_auto_without_key_is_offline_at_once(clean_env, monkeypatch):
    forbid_server_probe(monkeypatch)
    assert not (clean_env / ".netrc").exists()
    start = time.monotonic()
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode() == "offline"
    assert time.monotonic() - start < 1.0


def test_explicit_modes_are_honoured(clean_env, monkeypatch):
    forbid_server_probe(monkeypatch)
    for mode in ("disabled", "offline", "online"):
        assert resolve_wandb_mode(mode) == mode


def test_bad_mode_is_a_config_error(clean_env):
    with pytest.raises(ConfigError, match="'onlin'"):
        resolve_wandb_mode("onlin")


def test_auto_with_key_and_unreachable_server_is_offline_quickly(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert resolve_wandb_mode("auto") == "offline"
    assert time.monotonic() - start < 2.5  # at most the probe's timeout; a refused connection is immediate


def test_auto_with_key_and_reachable_server_is_online(clean_env, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve_wandb_mode("auto") == "online"


def test_netrc_key_counts_as_a_key(clean_env, monkeypatch):
    netrc_file = clean_env / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setattr(tracking_wandb, "_server_reachable", lambda *a, **k: True)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setattr(tracking_wandb, "_server_reachable", lambda *a, **k: False)
    assert resolve_wandb_mode("auto") == "offline"


def test_netrc_for_another_host_is_no_key(clean_env, monkeypatch):
    forbid_server_probe(monkeypatch)
    netrc_file = clean_env / ".netrc"
    netrc_file.write_text("machine example.com\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    assert resolve_wandb_mode("auto") == "offline"


@pytest.mark.slow
def test_checkpoint_records_the_wandb_run_and_resume_continues_it(tmp_path):
    import torch
    from conftest import run_train
    from wandb_records import summary

    common = ["experiment=vision_dae", "logger=default", "model.arch.hidden_sizes=[8,16]"]
    proc = run_train([*common, "trainer.max_epochs=1"], tmp_path / "first")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [first_run] = (tmp_path / "first").glob("outputs/*/*/wandb/offline-run-*")
    run_id = first_run.name.rsplit("-", 1)[-1]
    [last] = (tmp_path / "first").glob("outputs/*/*/checkpoints/last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["wandb_run_id"] == run_id

    proc = run_train([*common, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "resumed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [resumed_run] = (tmp_path / "resumed").glob("outputs/*/*/wandb/offline-run-*")
    # Offline, W&B cannot continue a run (a second directory with the same id, and `wandb sync` keeps one
    # of the two): the resumed run is a new W&B run whose config names the one it continues.
    assert resumed_run.name.rsplit("-", 1)[-1] != run_id
    assert json.loads(summary(resumed_run)["config"]["headstart/resumed_from"]) == run_id
