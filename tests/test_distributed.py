"""pairwise_distances on torch.distributed: 2 gloo ranks launched by the installed ``torchrun``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchuot.images import pairwise_distances, rank_checkpoint_path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from distributed_worker import KW, small_images  # noqa: E402

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
pytestmark = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(HERE / "distributed_worker.py"),
           str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def one_process() -> torch.Tensor:
    return pairwise_distances(small_images(), **KW)


def test_two_ranks_give_the_one_process_matrix(tmp_path, one_process):
    r = _torchrun(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    D = torch.load(tmp_path / "D.pt")
    torch.testing.assert_close(D, one_process, rtol=0, atol=1e-12)
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    # rows dealt round-robin: 36 pairs i < j of 9 images, 20 on rank 0 and 16 on rank 1
    assert [s["pairs_blocks"] for s in ranks] == [20, 16]
    assert all(s["world"] == 2 for s in ranks)
    for k in (0, 1):  # one checkpoint per rank
        assert rank_checkpoint_path(tmp_path / "ckpt" / "D.pt", k, 2).exists()


@pytest.mark.slow
def test_killed_rank_resumes_from_its_checkpoint(tmp_path, one_process):
    # rank 1 saves after its self terms, then after each pair: killed after 6 pairs
    r = _torchrun(tmp_path, "--kill-rank", "1", "--kill-after", "7")
    assert r.returncode != 0 and not (tmp_path / "D.pt").exists()
    state = torch.load(rank_checkpoint_path(tmp_path / "ckpt" / "D.pt", 1, 2), weights_only=True)
    assert state["done"] == 6
    r = _torchrun(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "D.pt"), one_process, rtol=0, atol=1e-12)
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["pairs_blocks"] == 16 - 6  # only the pairs it had not finished


def test_rank_checkpoint_path():
    assert rank_checkpoint_path("a/b/D.partial.pt", 1, 4) == Path("a/b/D.partial.rank1of4.pt")


@pytest.mark.slow
def test_study_runner_under_torchrun(tmp_path, shared_data):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHUOT_DATA_ROOT": str(shared_data),
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    args = [
        "--dataset",
        "pneumoniamnist",
        "--n-images",
        "12",
        "--pool",
        "16",
        "--seeds",
        "2",
        "--alpha",
        "0.9",
        "--dim",
        "2",
        "--tol",
        "1e-3",
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "cache"),
        "--distributed",
    ]
    module = "training.experiments.hk_embeddings"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", module, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=HERE.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "hk_embeddings_pneumoniamnist.md").exists()
    cache = tmp_path / "cache" / "pneumoniamnist_pool16"
    # the 2-rank matrices equal one process's
    from training.experiments import hk_embeddings as hk

    X, _ = hk.load_images("pneumoniamnist", 16, root=shared_data)
    D = pairwise_distances(X, metric="hk", kappa=2.0, blur=1.0, tol=1e-3).double().numpy()
    D2 = __import__("numpy").load(cache / "D_HK_kappa2_blur1_n16_tol0.001.npy")
    assert abs(D2 - D).max() < 1e-4  # float32 blocks split differently across ranks
    assert not list(cache.glob("*.partial*.pt"))  # per-rank checkpoints removed once saved
