"""The README's "Solver objects" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_solver_objects_example_runs():
    text = README.read_text()
    section = text[text.index("## Solver objects"):]
    section = section[:section.index("\n## ", 5)]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict = {}
    exec(compile(code, "README.md (Solver objects)", "exec"), ns)  # noqa: S102 - our own README
    res, res2, warm = ns["res"], ns["res2"], ns["warm"]
    assert res.converged and res2.converged and ns["res_c"].plan().shape == (100, 150)
    assert warm.n_iters < res.n_iters
    assert abs(float(res.value - res2.value)) < 1e-3 * abs(float(res.value))
    assert ns["loss"].options is ns["opts"]
