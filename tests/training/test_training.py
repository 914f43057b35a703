"""The training CLI end to end: fast_dev_run of each config, kill-and-resume, DDP on 2 CPUs."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402

from training.cli import build_cli  # noqa: E402
from training.module import FlowMatchingModule  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"


def _env(shared_data: Path) -> dict[str, str]:
    env = dict(os.environ, TORCHUOT_DATA_ROOT=str(shared_data), PYTHONPATH=str(REPO))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.parametrize("config", ["toy2d", "mnist_translation", "pneumoniamnist_translation"])
def test_fast_dev_run_of_each_config(config, shared_data: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCHUOT_DATA_ROOT", str(shared_data))
    build_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / f"{config}.yaml"),
            "--trainer.fast_dev_run",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--model.ode_steps",
            "3",
        ]
    )
    report = tmp_path / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and "val/loss" in metrics and "class_preservation" in metrics
    assert (report / "samples.png").stat().st_size > 0
    ckpt = torch.load(report / "model.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 1


def test_data_root_by_config_key(shared_data: Path, tmp_path: Path, monkeypatch):
    """The data root also comes from the config (here on the command line), not only the env."""
    monkeypatch.setenv("TORCHUOT_DATA_ROOT", str(tmp_path / "wrong"))
    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "mnist_translation.yaml"),
            "--data.init_args.base.init_args.root",
            str(shared_data),
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    assert Path(cli.datamodule.base.root) == shared_data
    assert isinstance(cli.model, FlowMatchingModule) and cli.model.sampler.method == "uot"


def test_wrong_data_root_gives_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCHUOT_DATA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing.*download"):
        build_cli(
            [
                "fit",
                "--config",
                str(CONFIGS / "mnist_translation.yaml"),
                "--trainer.fast_dev_run",
                "1",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )


class _StateAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.opt_state = copy.deepcopy(trainer.optimizers[0].state_dict())  # before any step


def test_checkpoint_kill_and_resume(shared_data: Path, tmp_path: Path):
    """Train in a subprocess, SIGKILL it after a checkpoint, resume: same step and optimizer state."""
    cmd = [
        sys.executable,
        "-m",
        "training",
        "fit",
        "--config",
        str(CONFIGS / "toy2d.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_epochs",
        "1000",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--data.init_args.n_train",
        "1024",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(shared_data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    ckpts: list[Path] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ckpts = list(tmp_path.rglob("last.ckpt"))
            if ckpts:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # let the first save complete; later ones are atomic renames
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill:\n{err.decode()[-2000:]}"
    assert ckpts, f"no checkpoint written before the deadline; stderr:\n{err.decode()[-2000:]}"
    saved = torch.load(ckpts[0], weights_only=False, map_location="cpu")
    step = saved["global_step"]
    assert step >= 4 and step % 4 == 0  # whole epochs of 1024 / 256 = 4 steps

    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "toy2d.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path / "r"),
            "--trainer.max_steps",
            str(step + 2),
            # A fast machine may be killed past the config's max_epochs: do not cap epochs here.
            "--trainer.max_epochs",
            "1000",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.limit_val_batches",
            "0",
            "--data.init_args.n_train",
            "1024",
        ],
        run=False,
    )
    probe = _StateAtStart()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(ckpts[0]))
    assert probe.step == step
    want = saved["optimizer_states"][0]["state"]
    got = probe.opt_state["state"]
    assert want.keys() == got.keys()
    for k in want:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(got[k][name], want[k][name], atol=0, rtol=0)
    assert cli.trainer.global_step == step + 2
    # The resumed weights were the checkpoint's at the start (one more step moved them).
    assert cli.trainer.current_epoch >= saved["epoch"]


def test_ddp_on_two_cpu_processes(shared_data: Path, tmp_path: Path):
    """One epoch of the toy config with --trainer.strategy ddp on 2 CPU processes (gloo)."""
    cmd = [
        sys.executable,
        "-m",
        "training",
        "fit",
        "--config",
        str(CONFIGS / "toy2d.yaml"),
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.n_train",
        "2048",
        "--data.init_args.n_val",
        "256",
        "--model.ode_steps",
        "3",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=_env(shared_data), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    # 2048 samples / (2 processes x 256 per batch) = 4 steps in the epoch.
    assert metrics["global_step"] == 4 and metrics["epochs"] == 1
    assert "Starting with 2 processes" in res.stdout + res.stderr
