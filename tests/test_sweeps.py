"""Sweeps, multiruns, Optuna and multi-process training through train.py, and how they fit together."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_MODEL, assert_user_error, run_train

from headstart.cli import normalize_argv
from headstart.sweeps import commands, load_sweep

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


def _tiny_mlm(corpus: Path, epochs: int = 1) -> list[str]:
    return ["data=text_files", f"data.train_files=[{corpus / 'train.txt'}]", f"data.val_files=[{corpus / 'val.txt'}]",
            "data.max_length=32", "data.vocab_size=300", "data.batch_size=16", f"trainer.max_epochs={epochs}",
            *TINY_MODEL]


@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_expands_to_valid_train_commands(sweep_file):
    from hydra import compose, initialize_config_dir

    from headstart.config import register_configs

    sweep = load_sweep(sweep_file)
    runs = commands(sweep, count=3)
    assert runs and all(run[1] == "train.py" for run in runs)
    if sweep["method"] == "grid":
        sizes = [len(p.get("values", [p.get("value")])) for p in sweep["parameters"].values()]
        assert len(runs) == __import__("math").prod(sizes)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for run in runs:
            overrides = normalize_argv(run[1:])[1:]
            cfg = compose(config_name="train", overrides=overrides)  # raises on any invalid override
            for override in overrides:
                key, value = override.split("=", 1)
                if key != "experiment":
                    assert str(OmegaConfSelect(cfg, key)) == value or float(OmegaConfSelect(cfg, key)) == float(value)


def OmegaConfSelect(cfg, key):  # noqa: N802 - reads like the OmegaConf call it wraps
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_cli_expansion_prints_commands(capsys):
    from headstart.sweeps import main

    assert main([str(REPO / "sweeps" / "mlm_lr_grid.yaml")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(shlex.split(line)[1] == "train.py" for line in lines)
    assert main([str(REPO / "sweeps" / "missing.yaml")]) == 2


def test_hyphenated_overrides_are_accepted():
    assert normalize_argv(["train.py", "--task.optimizer.lr=0.1", "--config-name=train", "-m", "seed=1"]) == [
        "train.py", "task.optimizer.lr=0.1", "--config-name=train", "-m", "seed=1"]


@pytest.mark.slow
def test_a_sweep_command_runs(tmp_path, corpus_dir, shared_cache):
    """The first run of the bayes sweep file, in W&B's `--key=value` form, trains for real."""
    run = commands(load_sweep(REPO / "sweeps" / "mlm_bayes.yaml"), count=1)[0]
    assert run[2].startswith("--")
    proc = run_train([*run[2:], *_tiny_mlm(corpus_dir), "logger=csv"], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results] = tmp_path.glob("outputs/*/*/results.json")
    config = yaml.safe_load((results.parent / "config.yaml").read_text())
    sampled = dict(arg[2:].split("=", 1) for arg in run[2:])
    assert config["task"]["optimizer"]["lr"] == pytest.approx(float(sampled["task.optimizer.lr"]))


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_dir_and_wandb_run(tmp_path, corpus_dir, shared_cache):
    proc = run_train(["-m", "experiment=text_mlm", *_tiny_mlm(corpus_dir), "logger=default",
                      "task.optimizer.lr=0.001,0.002"], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_dirs = sorted(p.parent for p in tmp_path.glob("outputs/multirun/*/*/*/results.json"))
    assert len(job_dirs) == 2
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in job_dirs]
    assert sorted(c["task"]["optimizer"]["lr"] for c in configs) == [0.001, 0.002]
    assert configs[0]["run_group"] == configs[1]["run_group"] and configs[0]["run_group"].startswith("sweep-")
    assert configs[0]["run_name"] != configs[1]["run_name"]
    for job_dir, config in zip(job_dirs, configs, strict=True):
        [wandb_run] = (job_dir / "wandb").glob("offline-run-*")
        history = next(wandb_run.glob("run-*.wandb")).read_bytes()
        assert config["run_name"].encode() in history and config["run_group"].encode() in history


@pytest.mark.slow
def test_optuna_sweep_reports_its_best_value(tmp_path, corpus_dir, shared_cache):
    proc = run_train(["-m", "experiment=text_mlm", "hparams_search=mlm_optuna", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.sampler.n_startup_trials=2", *_tiny_mlm(corpus_dir), "logger=csv"],
                     tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = tmp_path.glob("outputs/multirun/*/*/optimization_results.yaml")
    best = yaml.safe_load(summary.read_text())
    assert set(best["best_params"]) == {"task.optimizer.lr", "task.optimizer.weight_decay",
                                        "task.scheduler.warmup_ratio", "task.mlm_probability"}
    trial_losses = [json.loads(p.read_text())["metrics"]["val/loss"]
                    for p in summary.parent.glob("*/results.json")]
    assert len(trial_losses) == 3 and best["best_value"] == pytest.approx(min(trial_losses))


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, corpus_dir, shared_cache):
    proc = run_train(["experiment=text_mlm", *_tiny_mlm(corpus_dir), "trainer=ddp", "trainer.accelerator=cpu",
                      "trainer.devices=2", "logger=default"], tmp_path, shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = tmp_path.glob("outputs/*/*/results.json")
    run_dir = results_file.parent
    results = json.loads(results_file.read_text())
    assert results["world_size"] == 2
    hashes = results["rank_config_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] == results["config_hash"][:15]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        {Path(p).name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")} | {"last.ckpt"})
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert len(list(tmp_path.glob("outputs/2*/*"))) == 1  # the second rank wrote into rank 0's directory


def test_multirun_with_relaunching_ddp_is_refused(tmp_path, corpus_dir):
    proc = run_train(["-m", "experiment=text_mlm", *_tiny_mlm(corpus_dir), "trainer=ddp", "trainer.accelerator=cpu",
                      "trainer.devices=2", "logger=csv", "seed=1,2"], tmp_path)
    assert_user_error(proc, "ddp_spawn", "multirun")
    assert not list(tmp_path.glob("outputs/multirun/*/*/*/checkpoints"))


def test_slurm_launcher_config_composes_with_the_ddp_layout():
    """hydra/launcher=slurm: Hydra's submitit SLURM launcher, one task and GPU per device on each of
    trainer.num_nodes nodes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from headstart.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "experiment=text_mlm", "trainer=ddp",
                                          "trainer.devices=4", "trainer.num_nodes=2",
                                          "hydra.launcher.partition=gpu"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.partition == "gpu" and launcher.timeout_min == 240


def test_ranks_launched_by_slurm_are_not_refused_in_a_multirun(monkeypatch):
    """Under SLURM (several tasks) nothing re-runs train.py, so ddp inside a multirun job is safe."""
    from omegaconf import OmegaConf

    from headstart.errors import ConfigError
    from headstart.pipeline.guards import check_launch

    cfg = OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2, "accelerator": "cpu"}})
    for var in ("SLURM_NTASKS", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="ddp_spawn"):
        check_launch(cfg, multirun=True)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    check_launch(cfg, multirun=True)


@pytest.mark.slow
def test_multirun_with_ddp_spawn_trains_each_job_on_two_processes(tmp_path):
    """What the refusal above points to: ddp_spawn starts each job's processes inside that job."""
    proc = run_train(["-m", "experiment=vision_dae", "model.arch.hidden_sizes=[8,16]", "trainer=ddp",
                      "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2",
                      "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                      "trainer.limit_test_batches=2", "logger=default", "seed=1,2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(tmp_path.glob("outputs/multirun/*/*/*/results.json"))
    assert len(jobs) == 2
    for seed, results_file in zip((1, 2), jobs, strict=True):
        results = json.loads(results_file.read_text())
        config = yaml.safe_load((results_file.parent / "config.yaml").read_text())
        assert results["world_size"] == 2 and results["completed"] and config["seed"] == seed
        assert "test/loss" in results["metrics"]  # fit and test both ran in the spawned processes
        assert len(list((results_file.parent / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_optuna_tunes_the_simclr_temperature_by_knn_accuracy(tmp_path):
    proc = run_train(["-m", "experiment=vision_simclr", "hparams_search=simclr_optuna", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.sampler.n_startup_trials=2", "trainer.max_epochs=1",
                      "model.arch.hidden_sizes=[8,16]", "logger=csv"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = tmp_path.glob("outputs/multirun/*/*/optimization_results.yaml")
    best = yaml.safe_load(summary.read_text())
    assert "task.temperature" in best["best_params"]
    trials = [json.loads(p.read_text())["metrics"]["val/knn_acc"] for p in summary.parent.glob("*/results.json")]
    assert len(trials) == 2 and best["best_value"] == pytest.approx(max(trials))  # maximised
