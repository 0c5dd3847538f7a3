"""The `mia-fast` command line: info (text and JSON) and the bench pass-through."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mia_fast.cli import main


def test_info_text(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "mia_fast" in out and "SIMD level" in out and "backends for cpu tensors" in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"versions", "cpu", "cuda", "backends"}
    assert info["backends"]["cpu"]["torch"] == "available"
    assert info["cpu"]["cpp_extension"] == "built"
    assert info["cpu"]["simd_level"] in info["cpu"]["simd_levels_available"]


def test_python_dash_m_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "mia_fast", "info"], capture_output=True, text=True, check=True).stdout
    assert "backends for cpu tensors" in out


def test_bench_passes_its_options_through(capsys):
    assert main(["bench", "--quick", "--vocab", "300", "--dtypes", "float32", "--repeats", "1", "--rows", "8"]) == 0
    assert "cpp/roofline" in capsys.readouterr().out


def test_unknown_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
