"""Build of mia_fast: the Python package, the Triton kernels as ``mia_fast.kernels`` and the C++
extension ``mia_fast._C`` (pybind11 only; torch is never needed to build).

The SIMD levels are compiled per translation unit (target pragmas in csrc/block_*.cpp) and chosen
at run time, so one wheel runs fast on any x86-64 CPU; nothing is built with -march=native.
Set ``MIA_FAST_STRICT_BUILD=0`` to install without the extension when no compiler is available
(the ``torch`` backend is then used); by default a failing build fails the install.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Every package under mia_fast/ is found, so a new subpackage can never be left out of the wheel; the
# Triton kernels live in kernels/ at the top of the checkout and are installed as mia_fast.kernels.
PACKAGES = find_packages(include=["mia_fast", "mia_fast.*"]) + [
    "mia_fast." + name for name in find_packages(include=["kernels", "kernels.*"])
]

# `mia-fast bench` runs benchmarks/bench_token_stats.py: an installed package carries it (and the
# helpers it imports) as mia_fast/_bench/, a data directory that is no importable package.
BENCH_FILES = ["benchmarks/_common.py", "benchmarks/bench_token_stats.py"]

CSRC = ["csrc/token_stats.cpp", "csrc/block_scalar.cpp", "csrc/block_avx2.cpp", "csrc/block_avx512.cpp",
        "csrc/amx_matmul.cpp", "csrc/binding.cpp"]


class StrictBuildExt(build_ext):
    """Fails loudly unless MIA_FAST_STRICT_BUILD=0, in which case a failed build is reported."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # setuptools raises several unrelated types for compile errors
            if os.environ.get("MIA_FAST_STRICT_BUILD", "1") != "0":
                raise
            sys.stderr.write(f"mia_fast: the C++ extension was not built ({exc}); using the torch backend\n")


class BuildPyWithBench(build_py):
    """The ordinary build_py, plus the token-statistics benchmark as mia_fast/_bench/ in the build."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, "mia_fast", "_bench")
        os.makedirs(target, exist_ok=True)
        for path in BENCH_FILES:
            shutil.copyfile(path, os.path.join(target, os.path.basename(path)))


extra_compile_args = ["-O3", "-fno-math-errno", "-fvisibility=hidden"] if os.name != "nt" else ["/O2"]

setup(
    ext_modules=[
        Pybind11Extension(
            "mia_fast._C",
            CSRC,
            include_dirs=["csrc"],
            depends=sorted(glob.glob("csrc/*.h")),  # a changed header rebuilds every unit
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-pthread", "-ldl"] if os.name != "nt" else [],
        )
    ],
    cmdclass={"build_ext": StrictBuildExt, "build_py": BuildPyWithBench},
    packages=PACKAGES,
    package_dir={"mia_fast.kernels": "kernels"},
    package_data={"mia_fast": ["py.typed"]},
)
