"""A tiny masked LM (BERT) with a WordPiece tokenizer trained on `lm_fixtures.prose`, built without
downloads; shared by the neighbourhood tests."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

import lm_fixtures as fx

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@functools.lru_cache(maxsize=None)
def wordpiece_tokenizer(vocab_size: int = 600, model_max_length: int = 64):
    """An uncased BERT-style WordPiece tokenizer (``[CLS] ... [SEP]``) trained on `fx.prose`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(fx.prose(), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", model_max_length=model_max_length)


def tiny_bert(vocab_size: int, max_positions: int = 64, seed: int = 0):
    """A random 2-layer BertForMaskedLM (hidden 32)."""
    from transformers import BertConfig, BertForMaskedLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=max_positions, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=0)
    return BertForMaskedLM(cfg)


def train_mlm(model, tokenizer, texts, *, steps: int = 150, batch_size: int = 16, lr: float = 3e-3, seed: int = 0):
    """A few MLM steps (15% of tokens masked, BERT's 80/10/10 rule); returns the model in eval mode."""
    torch.manual_seed(seed)
    enc = tokenizer(list(texts), truncation=True, max_length=tokenizer.model_max_length, padding=True,
                    return_tensors="pt", return_special_tokens_mask=True)
    ids, attention, special = enc["input_ids"], enc["attention_mask"], enc["special_tokens_mask"].bool()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, ids.shape[0], (batch_size,), generator=g)
        x, att, sp = ids[rows].clone(), attention[rows], special[rows]
        chosen = (torch.rand(x.shape, generator=g) < 0.15) & ~sp & att.bool()
        labels = torch.where(chosen, x, torch.full_like(x, -100))
        r = torch.rand(x.shape, generator=g)
        x[chosen & (r < 0.8)] = tokenizer.mask_token_id
        rand = chosen & (r >= 0.8) & (r < 0.9)
        x[rand] = torch.randint(len(SPECIALS), len(tokenizer), (int(rand.sum()),), generator=g)
        loss = model(input_ids=x, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def trained_mlm(steps: int = 150):
    """`tiny_bert` trained briefly on `fx.prose` with `wordpiece_tokenizer`: (model, tokenizer)."""
    tok = wordpiece_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_mlm(tiny_bert(len(tok), max_positions=tok.model_max_length), tok, fx.prose(), steps=steps)
    finally:
        torch.set_num_threads(threads)
    return model, tok


def save_mlm(directory) -> Path:
    """Save `trained_mlm` (safetensors) and its tokenizer into ``directory``; returns it."""
    model, tok = trained_mlm()
    path = Path(directory)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
