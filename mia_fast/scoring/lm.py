"""Causal language models: loading, and per-token statistics through the model's own unembedding.

The fused path runs the model *body* (``model.base_model``: embeddings, blocks, final norm) and
hands its last hidden states with the output embedding to `token_stats_from_hidden`, so the
``(tokens, V)`` logits never exist. Heads that transform the logits (soft-capping, a logit scale,
anything that makes ``model(...).logits`` differ from ``lm_head(hidden)``) take the logits path
instead: the full forward, then `token_stats`. The choice is made once per model, from the
config and from a numerical probe, and said once in the log.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..api import token_stats, token_stats_from_hidden
from ..stats import TokenStats

__all__ = ["DTYPES", "torch_dtype", "LMScorer", "ModelLoadError", "load_model", "check_model_source", "check_device",
           "fused_head_problem"]

_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class ModelLoadError(ValueError):
    """A model or tokenizer that exists could not be loaded (damaged, truncated or unsupported files)."""

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

# Config attributes of heads that transform ``lm_head(hidden)`` before it becomes the logits,
# with the value at which they do nothing.
_LOGIT_TRANSFORMS: dict[str, Any] = {
    "final_logit_softcapping": None,  # Gemma 2/3: tanh soft-capping
    "logit_scale": None,  # Cohere: logits * logit_scale
    "logits_scaling": 1.0,  # Granite: logits / logits_scaling
    "output_logits_scaling": 1.0,
    "logit_softcapping": None,
}


def torch_dtype(name: Union[str, torch.dtype]) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name (`DTYPES`); a torch dtype passes through."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_model(
    path: Union[str, Path],
    *,
    gguf_file: Optional[str] = None,
    dtype: Union[str, torch.dtype] = "fp32",
    device: Union[str, torch.device] = "cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer from a local directory (safetensors) or a GGUF file.

    Parameters
    ----------
    path : str or Path
        A directory saved by ``save_pretrained`` (weights in safetensors; pickled weights are
        refused), or a ``.gguf`` file (then ``gguf_file`` is its name).
    gguf_file : str, optional
        Name of a GGUF file inside the directory ``path``.
    dtype : {'fp32', 'bf16', 'fp16'}
    device : str or torch.device
    trust_remote_code : bool
        Off unless asked: code shipped with a checkpoint is not run.

    Returns
    -------
    (model, tokenizer)
        The model in eval mode on ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = torch_dtype(dtype)
    path, gguf_file = check_model_source(path, gguf_file)
    device = check_device(device)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    where = str(path / gguf_file) if gguf_file else str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if gguf_file is None:
            kwargs["use_safetensors"] = True
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolved, **kwargs)
    except _load_errors() as err:
        raise ModelLoadError(f"model: could not load {where!r} ({type(err).__name__}: {err}); its files are "
                             "damaged, truncated or of an unsupported kind") from err
    model.to(device).eval()
    return model, tokenizer


def _load_errors() -> tuple[type[BaseException], ...]:
    """What transformers, safetensors and gguf raise for a damaged or unsupported checkpoint."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError, EOFError)
    try:
        from safetensors import SafetensorError

        errors += (SafetensorError,)
    except ImportError:
        pass
    return errors


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a torch.device that this machine has (ValueError naming it otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected e.g. 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device: {str(device)!r} was asked for, but {why} (torch {torch.__version__}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {str(device)!r} was asked for, but MPS is not available here")
    return dev


def check_model_source(path: Union[str, Path], gguf_file: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """Check a model's location before anything is loaded or written; returns ``(directory, gguf_file)``.

    Raises FileNotFoundError for a missing path or GGUF file, ValueError for a file that is not
    ``.gguf``, and ImportError naming the extra to install when a GGUF model meets no ``gguf``
    package (transformers would only say "Please install torch and gguf").
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model: expected a local model directory or .gguf file, got {str(path)!r} (not found)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model: a file must be a .gguf file, got {str(path)!r}")
        path, gguf_file = path.parent, path.name
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"gguf_file: expected a file inside {str(path)!r}, got {gguf_file!r} (not found)")
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"model: reading the GGUF file {gguf_file!r} needs the gguf package, which is not "
                              'installed: pip install "mia_fast[gguf]"')
        return path, gguf_file
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model: expected a directory saved by save_pretrained (with config.json) or a "
                                f".gguf file, got {str(path)!r}, which has no config.json")
    if next(path.glob("*.safetensors"), None) is None:
        pickled = sorted(p.name for pattern in _PICKLED for p in path.glob(pattern))
        if pickled:
            raise ValueError(
                f"model: {str(path)!r} holds only pickled weights ({', '.join(pickled[:3])}), which can run code "
                "when loaded and are refused; convert them once, where you trust the file, with "
                "AutoModelForCausalLM.from_pretrained(path).save_pretrained(path, safe_serialization=True)"
            )
        raise FileNotFoundError(f"model: {str(path)!r} has no weights (no *.safetensors file)")
    return path, gguf_file


def fused_head_problem(model) -> Optional[str]:
    """Why the fused path cannot stand in for ``model(...).logits``, or None if nothing is seen.

    Checks the structure (a body, a linear output embedding) and the config attributes of
    known logit transforms. `LMScorer` adds a numerical probe on the first batch.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"the output embedding is {type(head).__name__}, not a Linear layer"
    body = getattr(model, "base_model", model)
    if body is model:
        return "the model exposes no separate body (base_model)"
    configs = [model.config] + [c for c in (getattr(model.config, "text_config", None),) if c is not None]
    for cfg in configs:
        for key, neutral in _LOGIT_TRANSFORMS.items():
            value = getattr(cfg, key, neutral)
            if value is not None and value != neutral:
                return f"config.{key} = {value} transforms the logits"
    return None


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")


def context_length(model) -> Optional[int]:
    """The longest input the model takes, from its config (None when the config does not say)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    for key in CONTEXT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class LMScorer:
    """Per-token statistics of a causal LM on batches of token ids.

    Parameters
    ----------
    model : transformers causal LM (``AutoModelForCausalLM``), in eval mode.
    head : {'auto', 'fused', 'logits'}
        ``auto`` takes the fused path unless `fused_head_problem` or the first-batch probe
        objects; ``fused`` forces it; ``logits`` always runs the full forward.
    """

    model: Any
    head: str = "auto"
    reason: Optional[str] = None
    #: seconds spent in the model body (or, on the logits path, the whole forward) and after it
    body_seconds: float = 0.0
    stats_seconds: float = 0.0
    _probed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.head not in ("auto", "fused", "logits"):
            raise ValueError(f"head: expected 'auto', 'fused' or 'logits', got {self.head!r}")
        if self.head == "auto":
            self.reason = fused_head_problem(self.model)
            self.head = "fused" if self.reason is None else "logits"
            if self.reason is not None:
                log.warning("scoring through the full logits: %s", self.reason)
        else:
            self._probed = True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _unembedding(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        head = self.model.get_output_embeddings()
        return head.weight, head.bias

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _probe(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Compare ``model(...).logits`` with ``lm_head(body(...))`` on a few positions, once."""
        self._probed = True
        ids, am = input_ids[:1, :16], attention_mask[:1, :16]
        full = self.model(input_ids=ids, attention_mask=am, use_cache=False).logits.float()
        weight, bias = self._unembedding()
        mine = torch.nn.functional.linear(self._hidden(ids, am).float(), weight.float(), None if bias is None else bias.float())
        scale = 1.0 + full.abs().max().item()
        tol = (1e-3 if weight.dtype == torch.float32 else 3e-2) * scale
        err = (full - mine).abs().max().item()
        if not err <= tol:
            self.head = "logits"
            self.reason = f"the model's logits differ from lm_head(body hidden states) by {err:.3g} (> {tol:.3g})"
            log.warning("scoring through the full logits: %s", self.reason)

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor,
        temperatures: tuple[float, ...] = (),
    ) -> TokenStats:
        """Statistics of the scored positions of a batch, compacted.

        Parameters
        ----------
        input_ids, attention_mask : Tensor, shape (B, L)
        targets : Tensor, shape (B, L), int64
            Next-token targets, ``-100`` where not scored (padding, context-only positions).
        temperatures : tuple of float
            Temperatures of the tempered statistics (`mia_fast.token_stats`), none by default.

        Returns
        -------
        TokenStats
            Fields of shape (n,) for the n scored positions, in row-major order of ``targets``.
        """
        device = self.device
        input_ids, attention_mask, targets = (t.to(device) for t in (input_ids, attention_mask, targets))
        if not self._probed:
            self._probe(input_ids, attention_mask)
        scored = targets != -100
        picked = targets[scored]
        t0 = _now(device)
        if self.head == "fused":
            weight, bias = self._unembedding()
            hidden = self._hidden(input_ids, attention_mask)[scored]
            t1 = _now(device)
            stats = token_stats_from_hidden(hidden, weight, picked, bias=bias, temperatures=temperatures)
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            t1 = _now(device)
            # unscored rows (target -100) are never read: no copy of the scored rows is needed
            stats = token_stats(logits, targets, temperatures=temperatures).map(lambda f: f[scored])
        t2 = _now(device)
        self.body_seconds += t1 - t0
        self.stats_seconds += t2 - t1
        return stats.map(lambda f: f.cpu())
