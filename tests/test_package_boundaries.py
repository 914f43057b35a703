"""torchuot imports neither models nor training; models never imports training."""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(pkg: str, module_level: bool = False) -> set[str]:
    """Top-level package names imported anywhere in ``pkg`` (or only at module level, outside
    functions and ``try``/``except ImportError`` guards, with ``module_level=True``)."""
    found = set()
    for path in (REPO / pkg).rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = tree.body if module_level else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_torchuot_is_standalone():
    imported = _imports("torchuot")
    assert not imported & {"models", "training"}, imported
    # Only torch and numpy are required: anything else is imported lazily inside functions
    # or under a try/except guard, never unconditionally at module level.
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "torchuot"}
    heavy = _imports("torchuot", module_level=True) - allowed
    assert not heavy, f"torchuot imports optional heavy packages at module level: {heavy}"


def test_models_do_not_import_training():
    if (REPO / "models").exists():
        assert "training" not in _imports("models")
