"""``kernels/`` is installed as ``mia_fast.kernels``: importing it never imports triton, and the
checkout's directory never shadows another ``kernels`` package (transformers 5 imports Hugging
Face's ``kernels`` whenever it loads a model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The hand-over concerns the checkout's kernels/ directory; a run against an installed package from a
# copy of the tests has none.
checkout_only = pytest.mark.skipif(not (ROOT / "kernels" / "__init__.py").is_file(),
                                   reason="no checkout kernels/ beside these tests (installed-package run)")


def _run(code: str, *path: Path) -> str:
    """Run ``code`` in a fresh interpreter with ``path`` first on sys.path, from the checkout."""
    prelude = f"import sys; sys.path[:0] = {[str(p) for p in path]!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_importing_the_package_does_not_import_triton():
    out = _run("import torch, mia_fast, mia_fast.kernels, mia_fast.backends as b\n"
               "b.backend_reasons(torch.device('cpu'), torch.float32); print('triton' in sys.modules)")
    assert out == "False"


@checkout_only
def test_checkout_hands_top_level_kernels_to_the_installed_package(tmp_path):
    other = tmp_path / "site"
    (other / "kernels").mkdir(parents=True)
    (other / "kernels" / "__init__.py").write_text("WHO = 'installed'\n")
    out = _run("import kernels, mia_fast.kernels as ours\n"
               "print(getattr(kernels, 'WHO', kernels.__file__), ours.__name__, sys.modules['kernels'] is kernels)",
               ROOT, other)
    assert out == "installed mia_fast.kernels True"


@checkout_only
def test_checkout_kernels_stays_itself_without_another():
    out = _run("sys.path[:] = [p for p in sys.path if 'packages' not in p]\n"
               "import kernels; print(kernels.__file__)", ROOT)
    assert Path(out) == ROOT / "kernels" / "__init__.py"
