"""torchuot imports neither models nor training; models never imports training."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(pkg: str) -> set[str]:
    found = set()
    for path in (REPO / pkg).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_torchuot_is_standalone():
    imported = _imports("torchuot")
    assert not imported & {"models", "training"}, imported
    # Only torch and numpy are required; anything else must be optional (guarded imports).
    heavy = imported & {"lightning", "torchvision", "matplotlib", "sklearn", "ot", "geomloss"}
    assert not heavy, f"torchuot imports optional heavy packages at module level: {heavy}"


def test_models_do_not_import_training():
    if (REPO / "models").exists():
        assert "training" not in _imports("models")
