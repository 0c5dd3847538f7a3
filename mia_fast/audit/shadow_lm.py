"""Tiny causal language models as audit targets and LiRA reference models.

- `train_tokenizer`: a byte-level BPE tokenizer trained on the pool, ``<|endoftext|>`` as
  BOS/EOS/PAD;
- `tiny_lm_config` (GPT-2) and `tiny_llama_config` (SmolLM2-shaped Llama): small configurations;
- `train_causal_lm`: a plain, seeded AdamW loop; every text is ``<|endoftext|>`` + its tokens,
  truncated to ``max_length``, and the loss covers real tokens only;
- `save_causal_lm`: ``save_pretrained`` (safetensors) with the tokenizer alongside, so that
  ``AutoModelForCausalLM.from_pretrained(d)`` and ``AutoTokenizer.from_pretrained(d)`` load it;
- `train_reference_lms`: K models on the halves of ``keep``, resumable (see `mia_fast.audit.shadow`);
- `causal_lm_losses`: per-text mean loss with the same tokenisation (the LOSS attack's score);
- `LM_PRESETS` / `lm_preset`: measured settings for the demo (see the presets' comments).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import (
        GPT2Config,
        LlamaConfig,
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

from .shadow import PathLike, check_keep, check_training, derive_seed, seeded, texts_sha256, train_reference_models

__all__ = [
    "EOT_TOKEN",
    "LM_PRESETS",
    "lm_preset",
    "train_tokenizer",
    "tiny_lm_config",
    "tiny_llama_config",
    "encode_texts",
    "train_causal_lm",
    "save_causal_lm",
    "train_reference_lms",
    "causal_lm_losses",
]

logger = logging.getLogger(__name__)

EOT_TOKEN = "<|endoftext|>"
_IGNORE = -100
# Batches are drawn from blocks of this many batches sorted by length (less padding).
_LENGTH_GROUP_BATCHES = 16

# Settings measured on a 2-core CPU with the 926 pydoc paragraphs of Python 3.11
# (`mia_fast.data.pydoc_paragraphs`), one model trained on a random half (463 texts, ~23k tokens),
# one torch thread, after a warm-up:
#   demo  ~17 s per model (~12 s with 2 idle threads), LOSS AUC 0.85 on its own IN vs OUT halves;
#   quick ~3.5 s per model (~3 s with 2 idle threads), LOSS AUC 0.72.
# The tokenizer is trained on the whole pool (shared by the target and the reference models).
# Score with the preset's max_length: the models never see positions beyond it.
# `MIA_FAST_RUN_SLOW=1 python -m pytest tests/test_shadow.py -k preset -s` measures them again.
LM_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "vocab_size": 4096,
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128},
        "train": {"epochs": 6, "lr": 5e-3, "batch_size": 8, "max_length": 128, "weight_decay": 0.0},
    },
    "quick": {
        "vocab_size": 4096,
        "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32},
        "train": {"epochs": 3, "lr": 2e-2, "batch_size": 8, "max_length": 32, "weight_decay": 0.0},
    },
}


# --------------------------------------------------------------------------------------------
# tokenizer and configurations


def _check_texts(name: str, texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name}: expected a sequence of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name}: expected at least one text, got an empty sequence")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{name}: expected a sequence of str, item {bad} is {type(texts[bad]).__name__}")
    return list(texts)


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int = 4096,
    *,
    min_frequency: int = 2,
    model_max_length: Optional[int] = None,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer trained on ``texts``, with ``<|endoftext|>`` (id 0) as BOS, EOS and PAD.

    Training is deterministic: the same texts give the same vocabulary and merges.

    Parameters
    ----------
    texts : sequence of str
        The pool (N >= 1 texts).
    vocab_size : int
        Target vocabulary size, at least 257 (the 256 byte symbols and ``<|endoftext|>``); a small
        pool can give fewer merges, use ``len(tokenizer)`` for the model.
    min_frequency : int
        Pairs seen fewer times are not merged.
    model_max_length : int, optional
        The context of the models it will serve (recorded in the saved tokenizer).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pool = _check_texts("texts", texts)
    if vocab_size < 257:
        raise ValueError(f"vocab_size: expected at least 257 (256 bytes + {EOT_TOKEN}), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(pool, trainer=trainer)
    extra = {} if model_max_length is None else {"model_max_length": int(model_max_length)}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT_TOKEN, eos_token=EOT_TOKEN, pad_token=EOT_TOKEN, unk_token=None, **extra
    )


def tiny_lm_config(
    vocab_size: int,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 128,
    *,
    eot_token_id: int = 0,
    dropout: float = 0.0,
) -> GPT2Config:
    """A small GPT-2 configuration (tied embeddings, no dropout by default: members get memorised).

    Parameters
    ----------
    vocab_size : int
        ``len(tokenizer)``.
    n_layer, n_embd, n_head, n_positions : int
        Depth, width, attention heads (dividing ``n_embd``), context length.
    eot_token_id : int
        Id of ``<|endoftext|>`` (BOS, EOS and PAD); 0 for `train_tokenizer`.
    dropout : float
        Residual, embedding and attention dropout.

    Returns
    -------
    transformers.GPT2Config
    """
    from transformers import GPT2Config

    _check_heads(n_embd, n_head, "n_embd", "n_head")
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eot_token_id,
        eos_token_id=eot_token_id,
        pad_token_id=eot_token_id,
    )


def tiny_llama_config(
    vocab_size: int,
    n_layer: int = 2,
    hidden_size: int = 128,
    n_head: int = 4,
    n_kv_head: int = 2,
    n_positions: int = 128,
    *,
    intermediate_size: Optional[int] = None,
    eot_token_id: int = 0,
) -> LlamaConfig:
    """A small Llama configuration shaped like SmolLM2 (tied embeddings, grouped-query attention).

    SmolLM2-135M: 30 layers, hidden 576, intermediate 1536 (x 8/3), 9 heads, 3 KV heads,
    RoPE theta 1e5, RMSNorm eps 1e-5; this keeps the ratios at a tiny size.

    Parameters
    ----------
    vocab_size : int
        ``len(tokenizer)``.
    n_layer, hidden_size, n_head, n_kv_head, n_positions : int
        Depth, width, query heads (dividing ``hidden_size``), key/value heads (dividing
        ``n_head``), context length.
    intermediate_size : int, optional
        MLP width; default ``8/3 * hidden_size`` rounded up to a multiple of 8.
    eot_token_id : int
        Id of ``<|endoftext|>`` (BOS, EOS and PAD).

    Returns
    -------
    transformers.LlamaConfig
    """
    from transformers import LlamaConfig

    _check_heads(hidden_size, n_head, "hidden_size", "n_head")
    _check_heads(n_head, n_kv_head, "n_head", "n_kv_head")
    if intermediate_size is None:
        intermediate_size = 8 * math.ceil(hidden_size * 8 / 3 / 8)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=n_positions,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=eot_token_id,
        eos_token_id=eot_token_id,
        pad_token_id=eot_token_id,
    )


def _check_heads(width: int, heads: int, width_name: str, heads_name: str) -> None:
    if heads < 1 or width % heads:
        raise ValueError(f"{heads_name}: expected a positive divisor of {width_name}={width}, got {heads}")


def lm_preset(name: str, pool_texts: Sequence[str]) -> tuple[PreTrainedTokenizerFast, GPT2Config, dict[str, Any]]:
    """Tokenizer, GPT-2 configuration and training arguments of a named preset.

    Parameters
    ----------
    name : {'demo', 'quick'}
        A key of `LM_PRESETS`.
    pool_texts : sequence of str
        The pool the tokenizer is trained on.

    Returns
    -------
    tokenizer : transformers.PreTrainedTokenizerFast
    config : transformers.GPT2Config
    train_kwargs : dict
        Keyword arguments of `train_causal_lm` (``epochs``, ``lr``, ``batch_size``, ...).
    """
    if name not in LM_PRESETS:
        raise ValueError(f"name: expected one of {sorted(LM_PRESETS)}, got {name!r}")
    preset = LM_PRESETS[name]
    tokenizer = train_tokenizer(pool_texts, preset["vocab_size"], model_max_length=preset["model"]["n_positions"])
    config = tiny_lm_config(len(tokenizer), **preset["model"], eot_token_id=tokenizer.bos_token_id)
    return tokenizer, config, dict(preset["train"])


# --------------------------------------------------------------------------------------------
# data


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with the BOS token (``<|endoftext|>``) prepended, truncated to ``max_length``.

    Returns
    -------
    list of list of int
        One list of length ``min(max_length, 1 + n_tokens)`` per text.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("tokenizer: expected a tokenizer with a BOS token (bos_token_id), got bos_token_id=None")
    if max_length < 2:
        raise ValueError(f"max_length: expected at least 2 (BOS + one token), got {max_length}")
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    return [[bos] + row for row in ids]


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(B, T)`` input ids and the ``(B, T)`` attention mask (int64)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        mask[i, : len(r)] = 1
    return ids, mask


def _shifted_targets(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token targets ``(B, T-1)``: ``ids[:, 1:]`` with padding set to the ignore index."""
    return ids[:, 1:].masked_fill(mask[:, 1:] == 0, _IGNORE)


def _length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random epoch of index batches, each drawn from a block of similar lengths (less padding)."""
    order = torch.randperm(len(lengths), generator=generator)
    block = batch_size * _LENGTH_GROUP_BATCHES
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), block):
        chunk = order[start : start + block]
        chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


# --------------------------------------------------------------------------------------------
# training


def _context(config: PretrainedConfig) -> Optional[int]:
    """The context length of a model configuration (GPT-2: n_positions, Llama: max_position_embeddings)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _check_max_length(max_length: int, config: PretrainedConfig) -> None:
    context = _context(config)
    if context is not None and max_length > context:
        raise ValueError(f"max_length: expected at most the model's context {context}, got {max_length}")


def _train_lm(model: PreTrainedModel, rows: list[list[int]], pad_id: int, *, epochs: int, lr: float, batch_size: int,
              weight_decay: float, seed: int, device: torch.device) -> float:
    """AdamW over ``rows`` for ``epochs``; returns the last epoch's mean token loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(r) for r in rows])
    model.train()
    epoch_loss = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in _length_grouped_batches(lengths, batch_size, generator):
            ids, mask = _pad([rows[i] for i in batch.tolist()], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            targets = _shifted_targets(ids, mask)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   ignore_index=_IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            n = int((targets != _IGNORE).sum())
            total, count = total + float(loss.detach()) * n, count + n
        epoch_loss = total / max(count, 1)
    model.eval()
    return epoch_loss


def train_causal_lm(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainedConfig,
    *,
    epochs: int = 6,
    lr: float = 5e-3,
    batch_size: int = 8,
    seed: int = 0,
    max_length: int = 128,
    weight_decay: float = 0.0,
    device: Union[str, torch.device] = "cpu",
) -> PreTrainedModel:
    """Train a causal LM from scratch on ``texts`` (AdamW, gradient clipping at 1).

    Each text is ``<|endoftext|>`` followed by its tokens, truncated to ``max_length``; batches
    are right-padded with an attention mask and the loss covers real tokens only. Under one seed
    (initialisation, shuffling) the weights are bitwise reproducible on CPU with the same number
    of torch threads. On a shared 2-core machine one thread (``torch.set_num_threads(1)``) is
    much faster than two for these tiny models.

    Parameters
    ----------
    texts : sequence of str
        Training texts (N >= 1).
    tokenizer : transformers.PreTrainedTokenizerFast
        With a BOS token (see `train_tokenizer`).
    config : transformers.PretrainedConfig
        E.g. `tiny_lm_config` or `tiny_llama_config`; ``max_length`` may not exceed its context.
    epochs, lr, batch_size, seed, max_length, weight_decay
        Training settings (the defaults are those of ``LM_PRESETS["demo"]``).
    device : str or torch.device

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode, on ``device``; ``model.train_loss_`` holds the last epoch's mean token loss.
    """
    from transformers import AutoModelForCausalLM

    pool = _check_texts("texts", texts)
    check_training(epochs, lr, batch_size)
    _check_max_length(max_length, config)
    rows = [r for r in encode_texts(tokenizer, pool, max_length) if len(r) >= 2]
    if not rows:
        raise ValueError("texts: expected at least one text with a token, got only empty texts")
    dev = torch.device(device)
    with seeded(seed, dev):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).to(dev)  # saving edits the config
        model.train_loss_ = _train_lm(model, rows, tokenizer.pad_token_id, epochs=epochs, lr=lr,
                                      batch_size=batch_size, weight_decay=weight_decay, seed=seed, device=dev)
    logger.debug("trained a causal LM on %d texts: last epoch's loss %.4f", len(rows), model.train_loss_)
    return model


def save_causal_lm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: PathLike) -> None:
    """``save_pretrained`` of the model (safetensors) and of the tokenizer into ``directory``."""
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    with _quiet_transformers():
        model.save_pretrained(directory, **kwargs)
        tokenizer.save_pretrained(directory)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Without transformers' own progress bars (library code draws none), restored on exit."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------
# reference sets


def _json_config(config: PretrainedConfig) -> dict:
    out = json.loads(config.to_json_string(use_diff=False))
    out.pop("transformers_version", None)
    return out


def _tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the tokenizer's definition, without its call-time truncation and padding state."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    special = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
    return texts_sha256([json.dumps(spec, sort_keys=True), json.dumps(special)])


def train_reference_lms(
    pool_texts: Sequence[str],
    keep: np.ndarray,
    out_dir: PathLike,
    *,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    train_kwargs: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    progress: bool = False,
    device: Union[str, torch.device] = "cpu",
    names: Optional[Sequence[str]] = None,
    on_model: Optional[Callable[[str], None]] = None,
) -> list[Path]:
    """Train K causal LMs, model k on ``[t for t, m in zip(pool_texts, keep[k]) if m]``; resumable.

    Model k (seed ``derive_seed(seed, k)``) is saved with its tokenizer to ``out_dir/ref_{k:03d}/`` (or
    ``out_dir/names[k]``);
    ``out_dir/keep.npy`` and ``out_dir/shadow.json`` describe the run. A rerun with the same
    arguments skips complete models and redoes interrupted ones (see `mia_fast.audit.shadow`).

    Parameters
    ----------
    pool_texts : sequence of str, length N
    keep : ndarray, shape (K, N), bool
        From `mia_fast.audit.shadow.make_keep`; K >= 2.
    out_dir : path
    config : transformers.PretrainedConfig
    tokenizer : transformers.PreTrainedTokenizerFast
        Shared by all models (train it on the whole pool).
    train_kwargs : mapping, optional
        Keyword arguments of `train_causal_lm` (``epochs``, ``lr``, ``batch_size``,
        ``max_length``, ``weight_decay``).
    seed : int
    progress : bool
        A tqdm progress bar over the models (for command-line use; otherwise only `logging`).
    device : str or torch.device
    names, on_model
        Directory names of the models and a per-model report (see
        `mia_fast.audit.shadow.train_reference_models`).

    Returns
    -------
    list of Path
        The K model directories.
    """
    pool = _check_texts("pool_texts", pool_texts)
    keep = check_keep(keep, len(pool), "pool_texts")
    kwargs = dict(train_kwargs or {})
    unknown = set(kwargs) - {"epochs", "lr", "batch_size", "max_length", "weight_decay"}
    if unknown:
        raise ValueError(f"train_kwargs: unexpected keys {sorted(unknown)}")
    run = {
        "kind": "causal_lm",
        "K": int(keep.shape[0]),
        "N": len(pool),
        "seed": int(seed),
        "config": _json_config(config),
        "train_kwargs": kwargs,
        "pool_sha256": texts_sha256(pool),
        "tokenizer_sha256": _tokenizer_sha256(tokenizer),
    }

    def train_one(k: int, keep_row: np.ndarray, directory: Path) -> dict:
        texts = [t for t, m in zip(pool, keep_row) if m]
        model_seed = derive_seed(seed, k)
        model = train_causal_lm(texts, tokenizer, config, seed=model_seed, device=device, **kwargs)
        save_causal_lm(model, tokenizer, directory)
        return {"seed": model_seed, "train_loss": model.train_loss_}

    return train_reference_models(keep, out_dir, train_one, run=run, progress=progress, desc="reference LMs",
                                  names=names, on_model=on_model)


# --------------------------------------------------------------------------------------------
# scoring


@torch.no_grad()
def causal_lm_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: Optional[int] = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Mean next-token loss of each text, tokenised as in training (BOS prepended, truncated).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    tokenizer : transformers.PreTrainedTokenizerFast
    texts : sequence of str, length N
    max_length : int, optional
        Default: the model's context.
    batch_size : int

    Returns
    -------
    ndarray, shape (N,), float64
        Mean of ``-log p(token)`` over each text's predicted tokens (NaN for an empty text).
    """
    from ..api import token_stats

    if max_length is None:
        max_length = _context(model.config) or 128
    _check_max_length(max_length, model.config)
    rows = encode_texts(tokenizer, _check_texts("texts", texts), max_length)
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths per batch
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        index = order[start : start + batch_size]
        ids, mask = _pad([rows[i] for i in index], tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        targets = _shifted_targets(ids, mask).to(device)
        stats = token_stats(logits[:, :-1].float(), targets, ignore_index=_IGNORE)
        nll = torch.where(stats.mask, -stats.logprob.double(), 0.0).sum(-1)
        out[index] = (nll / stats.mask.sum(-1)).cpu().numpy()
    return out
