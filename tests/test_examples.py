"""The gradient-flow example runs end to end and shows the unbalanced effect."""

import importlib.util
import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gradient_flow.py"


def test_gradient_flow_example(tmp_path):
    spec = importlib.util.spec_from_file_location("gradient_flow", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    figures = mod.main(["--out", str(tmp_path), "--n", "120", "--steps", "15"])
    assert (tmp_path / "gradient_flow.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "metrics.json").read_text()) == figures
    # Balanced OT must send particles to the far outliers; unbalanced OT leaves them.
    assert figures["outlier_share_balanced"] > 0.05
    assert figures["outlier_share_unbalanced"] < figures["outlier_share_balanced"] / 3
