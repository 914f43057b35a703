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


# Private names of the project's packages that a test still reaches, with the reason; each entry
# is a debt to pay by a public name or a test through the public API (then delete the entry),
# never a place to add new ones. A paid entry does not fail the test, so that the change paying
# it lands on its own.
PRIVATE_ALLOWED = {
    # The multiscale backend and its tests belong to the scale work (issue 14 left them to it).
    ("tests/backends/test_multiscale.py", "torchuot.backends.multiscale._box_quadratic_max"),
    ("tests/backends/test_multiscale.py", "._pairs"),  # MultiscaleBackend._pairs: its block pairs
}


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]`` for a chain of attributes on a name, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


#: The project's own packages, whose private names tests must not reach.
OWN_PACKAGES = ("torchuot", "training", "models")


def _own_private_attributes() -> set[str]:
    """Every ``_name`` that the project's packages define: functions, classes, module globals,
    ``self._x`` attributes and class fields (``UOTResult._ops``)."""
    names = set()
    for path in (p for pkg in OWN_PACKAGES for p in (REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if _private(n)}


def _private_uses(source: str, private_attributes: frozenset[str] = frozenset()) -> set[str]:
    """Names starting with ``_`` of the project's packages that ``source`` imports (``from
    torchuot.x import _y``, ``import torchuot._x``) or reads off an imported module or object
    (``images._Problem``, ``torchuot.sinkhorn._solve``); and, as ``"._name"``, reads of an
    attribute named like one of ``private_attributes`` on any object (``res._ops``, whatever
    ``res`` is)."""
    tree = ast.parse(source)
    # A test's own stand-ins (``self._calls = 0`` in a fake) may share a name with the library's.
    own = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    bound: dict[str, str] = {}  # local name -> the project object it is bound to
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in OWN_PACKAGES:
                    if _private(alias.name):
                        found.add(alias.name)
                    bound[alias.asname or top] = alias.name if alias.asname else top
        elif (isinstance(node, ast.ImportFrom) and node.level == 0
              and (node.module or "").split(".")[0] in OWN_PACKAGES):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _private(full):
                    found.add(full)
                bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        parts = _dotted(node) if isinstance(node, ast.Attribute) else None
        if parts and parts[0] in bound:
            full = [bound[parts[0]], *parts[1:]]
            for k in range(1, len(full)):
                if _private(full[k]):  # the name up to its first private part
                    found.add(".".join(full[: k + 1]))
                    break
        elif isinstance(node, ast.Attribute) and node.attr in private_attributes - own:
            found.add("." + node.attr)
    return found


def test_private_name_check_sees_imports_and_attributes():
    src = """
import torchuot
import torchuot.images as images
from torchuot import sinkhorn as S
from torchuot.sinkhorn import _solve, solve
from torchuot._typing import Tensor
from training.module import FlowMatchingModule
torchuot.sinkhorn._bicgstab(None)
images._Problem.value
S._implicit_potentials
res._ops.kept_fraction
cfg._private_thing_of_another_library
fake._solve = 0  # a test's own attribute, named like the library's
fake._solve
FlowMatchingModule._fm_step
solve.__doc__
"""
    modules = {
        "torchuot.sinkhorn._solve", "torchuot._typing.Tensor",
        "torchuot.sinkhorn._bicgstab", "torchuot.images._Problem", "torchuot.sinkhorn._implicit_potentials",
        "training.module.FlowMatchingModule._fm_step",
    }
    assert _private_uses(src) == modules
    attributes = frozenset(_own_private_attributes())
    assert {"_ops", "_solve", "_normalise", "_Problem", "_fm_step"} <= attributes
    assert _private_uses(src, attributes) == modules | {"._ops"}


def test_tests_use_no_private_names():
    """Tests exercise the public API (issue 14): no ``from torchuot... import _name``, no
    ``module._name`` on an imported module of torchuot / training / models, no ``obj._attr`` named
    like a private member of theirs (see PRIVATE_ALLOWED for the known debts)."""
    attributes = frozenset(_own_private_attributes())
    uses = {(str(path.relative_to(REPO)), name) for path in sorted((REPO / "tests").rglob("*.py"))
            for name in _private_uses(path.read_text(), attributes)}
    assert not uses - PRIVATE_ALLOWED, sorted(uses - PRIVATE_ALLOWED)
