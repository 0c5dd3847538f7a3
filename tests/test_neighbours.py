"""Neighbour texts for the neighbourhood attack (Mattern et al., 2023): one-word substitutions
proposed by a masked LM, reproducible per document, and the attack's direction."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lm_fixtures as fx
import mlm_fixtures as mf
from mia_fast.attacks.neighbourhood import NeighbourhoodAttack
from mia_fast.metrics import roc_auc
from mia_fast.scoring.augment import flatten_variants
from mia_fast.scoring.neighbours import (
    Neighbours,
    _MaskedLM,
    load_masked_lm,
    neighbour_loss,
    neighbour_texts,
)
from mia_fast.scoring.scorer import score_corpus
from mia_fast.stats import TokenStats

ODD = "Déjà  vu:\tthe CAFÉ's menu (v2.0) —  costs 3,50 €.\n\nSecond  paragraph,  with   spaces. "


@pytest.fixture(scope="module")
def mlm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield mf.trained_mlm()
    torch.set_num_threads(threads)


def _pieces(text: str) -> list[str]:
    return re.split(r"(\s+)", text)


def _changed_word(text: str, neighbour: str) -> int:
    """Index of the one word (run of non-whitespace) that differs; fails unless exactly one does
    and everything else, whitespace included, is byte-identical."""
    a, b = _pieces(text), _pieces(neighbour)
    assert len(a) == len(b), (text, neighbour)
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert len(diff) == 1, (text, neighbour)
    assert not a[diff[0]].isspace() and a[diff[0]] != "", (text, neighbour)
    return diff[0]


# --------------------------------------------------------------------------------------------
# options and loading


@pytest.mark.parametrize("kwargs, match", [
    ({"n_neighbours": 0}, "n_neighbours: expected an integer >= 1, got 0"),
    ({"n_neighbours": 2.5}, "n_neighbours"),
    ({"rule": "sample"}, r"rule: expected one of \('dropout', 'mask'\), got 'sample'"),
    ({"dropout": 1.0}, r"dropout: expected a probability in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, "dropout"),
    ({"dropout": True}, "dropout"),
    ({"top_k": 0}, "top_k"),
    ({"max_positions": 0}, "max_positions"),
    ({"max_length": 2}, "max_length: expected an integer >= 3"),
    ({"seed": -1}, "seed: expected a non-negative integer"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Neighbours(**kwargs)


def test_options_as_dict():
    opts = Neighbours(n_neighbours=7, seed=3)
    assert opts.as_dict() == {"name": "neighbours", "masked_lm": None, "n_neighbours": 7, "rule": "dropout",
                              "dropout": 0.7, "top_k": 5, "max_positions": None, "max_length": None, "seed": 3,
                              "batch_size": 32}
    assert Neighbours().n_neighbours == 100


def test_load_masked_lm_round_trip(mlm, tmp_path):
    model, tok = mlm
    mf.save_mlm(tmp_path / "mlm")
    loaded, loaded_tok = load_masked_lm(tmp_path / "mlm")
    assert not loaded.training and loaded_tok.is_fast
    opts = Neighbours(n_neighbours=8)
    texts = list(fx.prose()[:2])
    assert neighbour_texts(texts, loaded, loaded_tok, opts) == neighbour_texts(texts, model, tok, opts)


def test_load_masked_lm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path_or_name: .*does-not-exist"):
        load_masked_lm(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="path_or_name: expected a local Hugging Face masked LM"):
        load_masked_lm(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="got the file"):
        load_masked_lm(tmp_path / "file.bin")
    fx.save_gpt2(tmp_path / "causal")
    with pytest.raises(ValueError, match="path_or_name: expected a masked LM .* got a 'gpt2' model"):
        load_masked_lm(tmp_path / "causal")
    with pytest.raises(TypeError, match="path_or_name"):
        load_masked_lm(3)


def test_bad_arguments(mlm):
    model, tok = mlm
    with pytest.raises(TypeError, match="texts: expected a sequence of str, got str"):
        neighbour_texts("one text", model, tok)
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a str, got int"):
        neighbour_texts(["a", 1], model, tok)
    with pytest.raises(TypeError, match="options: expected a Neighbours"):
        neighbour_texts(["a"], model, tok, {"n_neighbours": 3})
    with pytest.raises(TypeError, match="model: expected a transformers masked LM"):
        neighbour_texts(["a"], object(), tok)


# --------------------------------------------------------------------------------------------
# what a neighbour is


def test_neighbours_change_one_word_and_keep_every_other_byte(mlm):
    model, tok = mlm
    texts = list(fx.prose()[:6]) + [ODD]
    out = neighbour_texts(texts, model, tok, Neighbours(n_neighbours=25))
    assert len(out) == len(texts)
    for text, neighbours in zip(texts, out):
        assert len(neighbours) == 25
        assert len(set(neighbours)) == len(neighbours) and text not in neighbours
        for nb in neighbours:
            _changed_word(text, nb)
    # casing, accents and odd whitespace outside the substituted span survive (an uncased
    # tokenizer would lose them if the token list were decoded)
    for nb in out[-1]:
        i = _changed_word(ODD, nb)
        for j, (x, y) in enumerate(zip(_pieces(ODD), _pieces(nb))):
            if j != i:
                assert x == y


def test_substitutions_respect_the_kind_of_token(mlm):
    """A word stays a word and punctuation stays punctuation (``program:`` never becomes ``programthe``)."""
    model, tok = mlm
    texts = list(fx.prose()[:8])
    for text, neighbours in zip(texts, neighbour_texts(texts, model, tok, Neighbours(n_neighbours=40))):
        for nb in neighbours:
            i = _changed_word(text, nb)
            old, new = _pieces(text)[i], _pieces(nb)[i]
            # the changed region (common prefix and suffix removed) is all-alphanumeric or all-punctuation on both sides
            p = 0
            while p < min(len(old), len(new)) and old[p] == new[p]:
                p += 1
            q = 0
            while q < min(len(old), len(new)) - p and old[-1 - q] == new[-1 - q]:
                q += 1
            a, b = old[p: len(old) - q], new[p: len(new) - q]
            if a and b:
                assert any(c.isalnum() for c in a) == any(c.isalnum() for c in b), (old, new)


def test_long_text_changes_only_inside_the_window(mlm):
    model, tok = mlm
    text = " ".join(fx.prose()[:4])
    enc = tok(text, truncation=True, max_length=tok.model_max_length, return_offsets_mapping=True)
    window_end = max(b for a, b in enc["offset_mapping"])
    assert window_end < len(text) // 2  # much of the text is beyond the 64-token window
    neighbours = neighbour_texts([text], model, tok, Neighbours(n_neighbours=60))[0]
    assert len(neighbours) == 60
    for nb in neighbours:
        _changed_word(text, nb)
        p = next(i for i, (x, y) in enumerate(zip(text, nb)) if x != y)
        assert p < window_end
        assert nb.endswith(text[window_end:])
    # a shorter window (max_length) moves the limit
    short = neighbour_texts([text], model, tok, Neighbours(n_neighbours=60, max_length=10))[0]
    end10 = max(b for a, b in tok(text, truncation=True, max_length=10, return_offsets_mapping=True)["offset_mapping"])
    assert short and all(nb.endswith(text[end10:]) for nb in short)


def test_short_texts_get_fewer_neighbours(mlm):
    model, tok = mlm
    out = neighbour_texts(["", "   ", "Names.", "x"], model, tok, Neighbours(n_neighbours=50, top_k=3))
    assert out[0] == [] and out[1] == []
    assert 1 <= len(out[2]) <= 2 * 3  # two tokens ("names", ".") with at most 3 candidates each
    assert len(out[3]) <= 3
    for nb in out[2]:
        _changed_word("Names.", nb)


def test_max_positions_limits_the_substituted_positions(mlm):
    model, tok = mlm
    text = fx.prose()[3]
    out = neighbour_texts([text], model, tok, Neighbours(n_neighbours=100, max_positions=3))[0]
    starts = {next(i for i, (x, y) in enumerate(zip(text, nb)) if x != y) for nb in out}
    assert 1 <= len(starts) <= 3 and len(out) <= 3 * 5


# --------------------------------------------------------------------------------------------
# reproducibility


def test_reproducible_and_independent_of_the_other_texts(mlm):
    model, tok = mlm
    a, b, c = fx.prose()[5], fx.prose()[6], ODD
    opts = Neighbours(n_neighbours=30, batch_size=7)
    alone = neighbour_texts([a], model, tok, opts)[0]
    assert neighbour_texts([a, b], model, tok, opts)[0] == alone
    assert neighbour_texts([c, b, a], model, tok, opts)[2] == alone
    assert neighbour_texts([a], model, tok, opts)[0] == alone
    # the seed matters under the dropout rule; the mask rule has no randomness
    assert neighbour_texts([a], model, tok, Neighbours(n_neighbours=30, batch_size=7, seed=1))[0] != alone
    m0 = neighbour_texts([a, b], model, tok, Neighbours(n_neighbours=30, rule="mask"))
    m1 = neighbour_texts([b, a], model, tok, Neighbours(n_neighbours=30, rule="mask", seed=9))
    assert m0[0] == m1[1] and m0[1] == m1[0]
    # the model's mode is restored
    model.train()
    neighbour_texts([a], model, tok, opts)
    assert model.training
    model.eval()


def test_head_fast_path_equals_the_full_forward(mlm):
    model, tok = mlm
    lm = _MaskedLM(model)
    assert lm.head is not None
    ids = torch.tensor([tok(fx.prose()[0])["input_ids"]] * 3)
    embeds = lm.embed(ids)
    pos = torch.tensor([1, 4, 7])
    with torch.no_grad():
        fast = lm.logits(embeds, pos)
        lm.head = None
        full = lm.logits(embeds, pos)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# reduction and attack


def test_neighbour_loss_by_hand():
    got = neighbour_loss([1.0, 3.0, np.nan, 2.0, 5.0], [0, 0, 1, 2, 0], 4)
    np.testing.assert_allclose(got, [3.0, np.nan, 2.0, np.nan])
    with pytest.raises(ValueError, match=r"parent: expected indices in \[0, n_parents=2\)"):
        neighbour_loss([1.0], [2], 2)
    with pytest.raises(ValueError, match="parent: expected the shape of values"):
        neighbour_loss([1.0, 2.0], [0], 2)
    texts, parent = flatten_variants([["a", "b"], [], ["c"]])
    assert texts == ["a", "b", "c"] and parent.tolist() == [0, 0, 2]


def test_attack_reads_two_columns():
    table = {"loss": np.array([2.0, 3.0]), "loss_neighbours": np.array([2.5, 2.9])}
    np.testing.assert_allclose(NeighbourhoodAttack().fit().score_samples(table), [0.5, -0.1])
    with pytest.raises(ValueError, match=r"X: expected the columns \['loss', 'loss_neighbours'\]"):
        NeighbourhoodAttack().score_samples({"loss": [1.0]})
    with pytest.raises(ValueError, match="X\\['loss_neighbours'\\]: expected finite values, got 1 NaN rows .*too short"):
        NeighbourhoodAttack().score_samples({"loss": [1.0, 2.0], "loss_neighbours": [np.nan, 1.0]})
    with pytest.raises(TypeError, match="TokenStats"):
        NeighbourhoodAttack().score_samples(TokenStats(*[torch.zeros(1, 1)] * 11))
    with pytest.raises(TypeError, match="X: expected a per-sequence table"):
        NeighbourhoodAttack().score_samples(np.zeros(3))


def test_direction_on_a_trained_model(mlm):
    """Members of a tiny GPT-2's training set have a lower loss than their neighbours."""
    model_mlm, tok_mlm = mlm
    target, tok, texts, labels = fx.trained_target()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        neighbours = neighbour_texts(texts, model_mlm, tok_mlm, Neighbours(n_neighbours=12))
        flat, parent = flatten_variants(neighbours)
        scores = score_corpus(target, tok, texts + flat, first_token="bos", per_token=True).sequences
    finally:
        torch.set_num_threads(threads)
    loss = scores.loss.to_numpy()
    table = {"loss": loss[: len(texts)], "loss_neighbours": neighbour_loss(loss[len(texts):], parent, len(texts))}
    auc = roc_auc(labels, NeighbourhoodAttack().score_samples(table))
    print(f"neighbourhood AUC {auc:.3f}, LOSS AUC {roc_auc(labels, -table['loss']):.3f}")
    assert auc > 0.5, auc
