"""The `mia-fast` command line: info (text and JSON), the bench pass-through, help, version and the
checks made before a model is loaded."""

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


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    for option, default in (("--text-field", "text"), ("--batch-tokens", "8192"), ("--dtype", "fp32"),
                            ("--ks", "0.05,0.1,0.2,0.3,0.5"), ("--on-bad-row", "error")):
        section = out[out.index(f"{option} "):]
        assert f"(default: {default})" in section[:300], option
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    assert "(default: 0)" in " ".join(capsys.readouterr().out.split())  # --seed: 0 is a default too


def test_version(capsys):
    from mia_fast import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mia-fast {__version__}"


def test_gguf_model_without_the_gguf_package(tmp_path, monkeypatch, capsys):
    """The message names the extra to install, and nothing is written before the model loads."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    monkeypatch.setitem(sys.modules, "gguf", None)  # importlib.util.find_spec("gguf") is then None
    out = tmp_path / "scores"
    assert main(["score", "--model", str(gguf), "--input", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "mia_fast[gguf]"' in err and "model.gguf" in err
    assert not out.exists()


def test_a_model_that_fails_to_load_leaves_no_directory(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()  # no config.json: transformers cannot load it
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    out = tmp_path / "scores"
    assert main(["score", "--model", str(model), "--input", str(corpus), "--out", str(out)]) == 2
    assert "mia-fast score: error" in capsys.readouterr().err
    assert not out.exists()
