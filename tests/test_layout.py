"""The package's layers (README "Layout"): every import points down, and no two modules import each other.

From the bottom up: the kernel layer (`api`, `backends`, `reference`, `stats`, `aggregate`, the
Triton `kernels`) with the helpers `columns`, `atomic`, `metrics` (and its blind classifier
`shift`); then `attacks` (read score tables only) and `scoring` (corpus -> score tables); then
`spans` (reads score directories); `answers` (decisions and dataset inference from score
tables); then `audit` (trains models and calls the rest); `cli` and `info` on top. Imports
inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mia_fast

PACKAGE = Path(mia_fast.__file__).resolve().parent

# What each group may never import (groups are the first component below mia_fast).
KERNEL_LAYER = {"api", "backends", "cpu_units", "reference", "stats", "aggregate", "columns", "atomic", "metrics", "shift",
                "_version", "kernels", "_C"}
FORBIDDEN = {
    "kernel layer": {"attacks", "scoring", "spans", "audit", "cli", "info"},
    "attacks": {"scoring", "spans", "audit", "cli", "info"},
    "scoring": {"attacks", "spans", "audit", "cli", "info"},
    "spans": {"attacks", "audit", "cli", "info"},
    "audit": {"spans", "cli", "info"},
    "answers": {"scoring", "spans", "audit", "cli", "info"},
}
# Model code stays out of the attacks, which read score tables only.
FORBIDDEN_EXTERNAL = {"attacks": {"transformers", "torch.nn"}}


def _modules() -> dict[str, Path]:
    import mia_fast.kernels

    out = {}
    for root, prefix in ((PACKAGE, "mia_fast"), (Path(mia_fast.kernels.__file__).resolve().parent, "mia_fast.kernels")):
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            if rel[0] == "_bench" or "__pycache__" in rel:
                continue
            parts = [prefix, *rel]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    out["mia_fast._C"] = PACKAGE / "_C"  # the C++ extension: a module that imports nothing of ours
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything ``name`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import atomic` imports the module mia_fast.atomic, not the package's namespace
            submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
            found |= submodules if len(submodules) == len(node.names) else submodules | {target}
    return found


def _group(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "package"
    top = parts[1]
    return "kernel layer" if top in KERNEL_LAYER else top


IMPORTS = {name: _imports(name, path) if path.suffix == ".py" else set() for name, path in MODULES.items()}


def test_the_layout_is_the_documented_one():
    groups = {_group(n) for n in MODULES}
    assert groups == {"package", "kernel layer", "attacks", "scoring", "spans", "audit", "answers", "cli", "info",
                      "__main__"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_points_up(name):
    group = _group(name)
    internal = {i for i in IMPORTS[name] if i == "mia_fast" or i.startswith("mia_fast.")}
    bad = sorted(i for i in internal if i != "mia_fast" and _group(i) in FORBIDDEN.get(group, set()))
    assert bad == [], f"{name} ({group}) imports {bad}"
    if group != "package":  # only the package itself re-exports; modules import what they use directly
        assert "mia_fast" not in internal, f"{name} imports the mia_fast package itself"
    external = FORBIDDEN_EXTERNAL.get(group, set())
    bad_external = sorted(i for i in IMPORTS[name] if any(i == e or i.startswith(e + ".") for e in external))
    assert bad_external == [], f"{name} ({group}) imports {bad_external}"


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph ``module -> modules it imports`` ([] when there is none)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return []


def test_no_import_cycle():
    """Between modules (package ``__init__`` files, which only re-export their children, aside)."""
    inits = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    edges = {n: {i for i in IMPORTS[n] if i in MODULES and i not in inits and i != n} for n in MODULES if n not in inits}
    assert find_cycle(edges) == []


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    """The checks themselves, on the old spans modules (which imported each other) and a made-up module."""
    old_spans = {"spans": {"spans_text", "spans_html"}, "spans_html": {"spans"}, "spans_text": set()}
    assert find_cycle(old_spans) == ["spans", "spans_html", "spans"]
    module = tmp_path / "a.py"
    module.write_text("from .b import x\n\n\ndef f():\n    from ..audit.report import run_attacks\n")
    found = _imports("mia_fast.scoring.a", module)
    assert {"mia_fast.scoring.b", "mia_fast.audit.report"} <= found
    assert _group("mia_fast.audit.report") in FORBIDDEN[_group("mia_fast.scoring.a")]
