"""Every notebook under notebooks/ is executed, so none of them rots."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import data_root

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Kernels run in notebooks/: hand them the data root as an absolute path.
    monkeypatch.setenv("TORCHUOT_DATA_ROOT", str(data_root()))
    monkeypatch.setenv("TORCHUOT_NOTEBOOK_N", "3000")  # notebook 02's gradient flow (1e5 by hand)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
