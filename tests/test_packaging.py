"""What users install is what is tested (design.md §8).

- The wheel holds every module of ``mia_fast/`` and ``kernels/`` (installed as ``mia_fast.kernels``),
  ``py.typed``, the C++ extension and the licence; the sdist holds every source it needs to build
  and test on its own. The artefacts are ``MIA_FAST_WHEEL`` / ``MIA_FAST_SDIST`` when set (CI builds
  them once with the PyPA ``build`` front end), else they are built here from the source tree.
- With ``MIA_FAST_TEST_INSTALLED=1`` (CI's run of this suite against the installed wheel, from a
  directory outside the checkout) ``mia_fast`` must be imported from site-packages.
- Every module imports, and ``mia-fast --version``, ``mia-fast info`` and the package metadata agree.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import mia_fast

# The checkout that the artefacts are built from. The installed run's tests are a copy outside the
# checkout, so CI names it; it is only read, never put on sys.path.
SOURCE = Path(os.environ.get("MIA_FAST_SOURCE_TREE", Path(__file__).resolve().parents[1]))
OPTIONAL = {"triton", "ray"}  # modules that need an extra ([gpu], [ray]) may miss only these


def _has_source() -> bool:
    return (SOURCE / "setup.py").is_file() and (SOURCE / "mia_fast" / "__init__.py").is_file()


def _py_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def expected_wheel_modules(source: Path) -> set[str]:
    """The wheel paths of every ``.py`` under ``mia_fast/`` and ``kernels/`` of a source tree."""
    names = {f"mia_fast/{p.as_posix()}" for p in _py_files(source / "mia_fast")}
    names |= {f"mia_fast/kernels/{p.as_posix()}" for p in _py_files(source / "kernels")}
    return names


def expected_sdist_files(source: Path) -> set[str]:
    """What an sdist needs to build the wheel and run the tests: sources, headers, metadata, tests."""
    names = {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"}
    names |= {f"csrc/{p.name}" for p in (source / "csrc").iterdir() if p.suffix in (".h", ".cpp")}
    for top in ("mia_fast", "kernels", "tests", "benchmarks"):
        names |= {f"{top}/{p.as_posix()}" for p in _py_files(source / top)}
    return names


def missing_from(archive_names: set[str], expected: set[str]) -> list[str]:
    return sorted(expected - archive_names)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> tuple[Path, Path]:
    wheel, sdist = os.environ.get("MIA_FAST_WHEEL"), os.environ.get("MIA_FAST_SDIST")
    if wheel and sdist:
        return Path(wheel), Path(sdist)
    if not _has_source():
        pytest.fail(f"no source tree at {SOURCE} and no MIA_FAST_WHEEL / MIA_FAST_SDIST to check")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: setuptools and pybind11 come with the test extra, so no index is needed here.
    env = {**os.environ, "MIA_FAST_STRICT_BUILD": "1"}
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(SOURCE)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def _sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as t:
        return {name.split("/", 1)[1] for name in t.getnames() if "/" in name}


def test_wheel_holds_every_module(artefacts):
    if not _has_source():
        pytest.skip("the list of modules comes from the source tree")
    names = _wheel_names(artefacts[0])
    assert missing_from(names, expected_wheel_modules(SOURCE)) == []
    assert "mia_fast/py.typed" in names
    assert {"mia_fast/_bench/bench_token_stats.py", "mia_fast/_bench/_common.py"} <= names  # mia-fast bench
    assert any(re.fullmatch(r"mia_fast/_C\.[^/]+\.(so|pyd)", n) for n in names), "the C++ extension is missing"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "kernels/", "csrc/")) for n in names)


def test_sdist_holds_every_source(artefacts):
    if not _has_source():
        pytest.skip("the list of sources comes from the source tree")
    assert missing_from(_sdist_names(artefacts[1]), expected_sdist_files(SOURCE)) == []


def test_the_check_finds_a_module_left_out(tmp_path):
    """The completeness check itself: a tree with one module more than the wheel is reported."""
    for rel in ("mia_fast/__init__.py", "mia_fast/scoring/__init__.py", "mia_fast/scoring/new_format.py",
                "kernels/__init__.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    wheel = {"mia_fast/__init__.py", "mia_fast/scoring/__init__.py", "mia_fast/kernels/__init__.py"}
    assert missing_from(wheel, expected_wheel_modules(tmp_path)) == ["mia_fast/scoring/new_format.py"]


def test_wheel_version_is_the_package_version(artefacts):
    with zipfile.ZipFile(artefacts[0]) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        version = re.search(r"^Version: (\S+)$", z.read(meta).decode(), re.MULTILINE).group(1)
    assert version == mia_fast.__version__
    assert artefacts[1].name == f"mia_fast-{version}.tar.gz"


def test_installed_package_is_the_one_tested():
    """CI's installed run: mia_fast, its kernels and its extension come from site-packages."""
    if os.environ.get("MIA_FAST_TEST_INSTALLED") != "1":
        pytest.skip("a run against the checkout (MIA_FAST_TEST_INSTALLED=1 checks an installed package)")
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    import mia_fast.kernels
    from mia_fast import backends

    ext = backends.cpp_extension()
    assert ext is not None, backends.cpp_import_error()
    for module in (mia_fast, mia_fast.kernels, ext):
        path = Path(module.__file__).resolve()
        assert any(path.is_relative_to(s) for s in site), f"{module.__name__} imported from {path}, not site-packages"
        assert not path.is_relative_to(SOURCE.resolve()), f"{module.__name__} imported from the source tree {path}"


def test_every_module_imports():
    """Every module of the installed package imports; only an extra's own package may be missing."""
    names = {m.name for m in pkgutil.walk_packages(mia_fast.__path__, "mia_fast.")}
    if _has_source():  # an editable install maps mia_fast.kernels, which walk_packages cannot see
        for path in expected_wheel_modules(SOURCE):
            names.add(path.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
    assert "mia_fast.kernels.token_stats" in names and "mia_fast.attacks.lira" in names
    for name in sorted(names - {"mia_fast.__main__"}):  # __main__ runs the command line
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name not in OPTIONAL:
                raise


def test_one_version_everywhere():
    assert importlib.metadata.version("mia_fast") == mia_fast.__version__
    cli = subprocess.run([sys.executable, "-m", "mia_fast", "--version"], capture_output=True, text=True, check=True)
    assert cli.stdout.strip() == f"mia-fast {mia_fast.__version__}"
    from mia_fast.info import collect_info

    assert collect_info()["versions"]["mia_fast"] == mia_fast.__version__
