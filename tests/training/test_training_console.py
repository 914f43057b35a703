"""The installed ``torchuot-train`` console script, run as a user runs it (a subprocess).

The wrapper that pip writes passes ``main()``'s return value to ``sys.exit``: anything but
``None``/0 turns a successful run into exit status 1 (issue 15, item 0).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"


def _script() -> str:
    """The ``torchuot-train`` installed next to this interpreter (the venv's ``bin``)."""
    found = shutil.which("torchuot-train", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"torchuot-train is not installed next to {sys.executable} (pip install -e '.[train]')")
    return found


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([_script(), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def _toy(tmp_path: Path) -> list[str]:
    return ["--config", str(CONFIGS / "toy2d.yaml"), "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_progress_bar", "false", "--model.ode_steps", "2",
            "--data.init_args.n_train", "256", "--data.init_args.n_val", "64",
            "--data.init_args.n_test", "64"]


def test_successful_fit_exits_zero(tmp_path: Path):
    res = _run(["fit", *_toy(tmp_path), "--trainer.fast_dev_run", "1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "FlowCLI object" not in res.stderr + res.stdout
    assert (tmp_path / "run" / "report" / "metrics.json").exists()


def test_bad_config_value_exits_nonzero_with_message(tmp_path: Path):
    res = _run(["fit", *_toy(tmp_path), "--trainer.fast_dev_run", "1", "--model.sigma", "-1"], tmp_path)
    assert res.returncode != 0
    assert "sigma must be non-negative" in res.stderr
    assert not (tmp_path / "run" / "report" / "metrics.json").exists()


def test_unknown_config_key_exits_nonzero_with_message(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "toy2d.yaml").read_text() + "\nnot_a_key: 3\n")
    res = _run(["fit", "--config", str(bad), "--trainer.fast_dev_run", "1"], tmp_path)
    assert res.returncode != 0
    assert "not_a_key" in res.stderr
