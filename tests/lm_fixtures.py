"""Tiny causal LMs and tokenizers built from a config (no download), shared by the scoring tests."""

from __future__ import annotations

import functools
import logging

import torch



@functools.lru_cache(maxsize=None)
def prose(n: int = 120) -> tuple[str, ...]:
    """Real English paragraphs from Python's own documentation (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            para = " ".join(para.split())
            if 60 <= len(para) <= 600 and para not in out:
                out.append(para)
    return tuple(out[:n])


@functools.lru_cache(maxsize=None)
def tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on `prose`, with ``<|endoftext|>`` as BOS/EOS/pad."""
    from mia_fast.audit.shadow_lm import train_tokenizer

    return train_tokenizer(prose(), vocab_size)


def _quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def gpt2(n_positions: int = 64, seed: int = 0, **config):
    """A random 2-layer GPT-2 with the `tokenizer`'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet_transformers()
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer()), n_positions=n_positions,
        bos_token_id=0, eos_token_id=0, **config,
    )
    return GPT2LMHeadModel(cfg).eval()


def llama(seed: int = 0, **config):
    """A random SmolLM2-shaped (Llama, grouped-query attention, tied embeddings) 2-layer model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _quiet_transformers()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, **config,
    )
    return LlamaForCausalLM(cfg).eval()


def save_gpt2(path, n_positions: int = 48):
    """Save a random `gpt2` (safetensors) and the `tokenizer` into ``path``; returns ``path``."""
    gpt2(n_positions=n_positions).save_pretrained(path, safe_serialization=True)
    tokenizer().save_pretrained(path)
    return path


def mixed_length_texts(n: int) -> list[str]:
    """``n`` `prose` texts; every fifth joins three paragraphs, longer than a 48-token context
    (sliding windows)."""
    paras = prose()
    return [paras[i] if i % 5 else " ".join(paras[i : i + 3]) for i in range(n)]


def train_tiny_gpt2(members, tok, *, epochs: int = 12, n_positions: int = 128, batch_size: int = 8):
    """A 2-layer GPT-2 (n_embd 32) trained for seconds on ``members`` (BOS + text), on one thread
    (faster than two for a model this small)."""
    from mia_fast.audit.shadow_lm import tiny_lm_config, train_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_lm_config(len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=n_positions)
        return train_causal_lm(list(members), tok, cfg, epochs=epochs, lr=1e-2, batch_size=batch_size,
                               max_length=n_positions)
    finally:
        torch.set_num_threads(threads)


N_MEMBERS = 24


@functools.lru_cache(maxsize=None)
def trained_target():
    """`train_tiny_gpt2` on the first `N_MEMBERS` `prose` paragraphs, shared by the test modules
    (do not change it): (model, tokenizer, texts, labels) with the members and as many
    non-member paragraphs."""
    import numpy as np

    paras = prose()
    members, non_members = list(paras[:N_MEMBERS]), list(paras[N_MEMBERS : 2 * N_MEMBERS])
    tok = tokenizer()
    labels = np.array([1] * len(members) + [0] * len(non_members))
    return train_tiny_gpt2(members, tok), tok, members + non_members, labels
