"""Smoke test of the EW_lambda protocol study (issue 16), run as users run it (a subprocess)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_joint_protocol_runs_end_to_end(tmp_path, shared_data):
    cmd = [sys.executable, "-W", "ignore", "-m", "training.experiments.joint_protocol",
           "--seeds", "0", "--mnist-n", "60", "--lams", "1", "--epss", "0.01", "--grids", "6",
           "--grids3", "3", "--n-outer", "3", "--shapes-n", "60", "--jmds-iter", "2",
           "--ceiling-dims", "1", "2", "--data-root", str(shared_data), "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "joint_study_protocol.md").read_text()
    for section in ("MNIST raw vs rotated", "Ceiling", "Synthetic shapes", "positive control"):
        assert section in report
    for png in ("joint_protocol_mnist.png", "joint_protocol_ceiling.png", "joint_protocol_shapes.png"):
        assert (tmp_path / png).stat().st_size > 1000
    import json

    res = json.loads((tmp_path / "joint_study_protocol.json").read_text())["results"]
    rows = {r["method"]: r for r in res["mnist"]["seeds"][0]["rows"]}
    assert rows["positive control (raw view twice)"]["foscttm"] < 0.05
    # The report re-renders from the saved JSON without recomputing.
    again = tmp_path / "again"
    out = subprocess.run([sys.executable, "-m", "training.experiments.joint_protocol", "--report-from",
                          str(tmp_path / "joint_study_protocol.json"), "--out", str(again)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (again / "joint_study_protocol.md").read_text() == report
