"""Per-sample gradient norms of a model's loss, the signal of the gradient-norm membership attack.

Members of the training set sit near an optimum of the training loss, so the gradient of their
own loss is small. For every sample this module computes the global L2 norm of
``d loss(sample) / d theta`` over a chosen subset ``theta`` of the model's parameters:

* causal LMs (`lm_gradient_norms`): the loss of one sequence is its mean next-token NLL over the
  scored tokens (position ``t`` predicts token ``t + 1``; a target is scored when it and its
  input position are real tokens of the attention mask);
* classifiers (`classifier_gradient_norms`): the cross-entropy of one sample.

Two ways to get there, with the same numbers:

* ``vmap``: ``torch.func.vmap(grad(...))`` over `torch.func.functional_call`: one batched forward
  and backward per micro-batch, materialising the micro-batch's per-sample gradients of the
  selected parameters (``batch_size`` bounds that memory);
* ``loop``: one forward and one ``torch.autograd.grad`` per sample (only the selected parameters
  require grad meanwhile, so an untied head backpropagates through the head only; a head tied
  to the input embedding needs the backward pass through the whole model).

On CPU, vmap is 15-40x faster than the loop for small classifiers (one row per sample: the loop
is all overhead) and about as fast as the loop for small causal LMs, whose per-sequence matmuls
are already large (``benchmarks/bench_gradnorm.py``).

``method="auto"`` runs ``vmap`` and falls back to the loop, saying why once in the log, when the
model cannot be vmapped (data-dependent control flow, ``.item()`` calls, a missing batching rule)
or a micro-batch runs out of memory.

Parameter selection (`select_parameters`): ``"all"``, the presets ``"head"`` (the unembedding or
output layer) and ``"last"`` (the last numbered block, what follows it, e.g. the final norm, and
the head), or `fnmatch` globs over ``named_parameters()`` names (``"lm_head.*"``,
``"transformer.h.1.*"``). Tied parameters (GPT-2's ``lm_head.weight`` is the input embedding)
are one tensor: they are counted once and their gradient sums every use; a glob may name them by
any of their names.

The model is put in eval mode (no dropout) for the computation and given back in its previous
mode; its parameters, their ``requires_grad`` flags and their ``.grad`` are left as they were.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "PARAM_PRESETS",
    "METHODS",
    "ParamSpec",
    "parse_param_spec",
    "select_parameters",
    "lm_gradient_norms",
    "classifier_gradient_norms",
]

log = logging.getLogger(__name__)

#: Named parameter selections besides globs.
PARAM_PRESETS: tuple[str, ...] = ("all", "last", "head")
#: Ways to compute the per-sample gradients.
METHODS: tuple[str, ...] = ("auto", "vmap", "loop")
#: A preset, a glob, a comma-separated list of them, or a sequence of presets and globs.
ParamSpec = Union[str, Sequence[str]]

# Per-sample gradients (+ the LM's logits and their gradient) held at once by one vmap
# micro-batch when ``batch_size`` is not given.
GRADIENT_MEMORY_BUDGET = 1 << 30
_MAX_LM_BATCH = 16
_MAX_CLASSIFIER_BATCH = 256
_IGNORE = -100
# The outermost numbered component of a parameter name: "transformer.h.11.attn.w" -> "11".
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")
# torch.func warns when an operator has no batching rule and runs it row by row (still correct).
_BATCHING_FALLBACK = r"There is a performance drop because we have not yet implemented the batching rule"
_logged: set[str] = set()


def _log_once(message: str) -> None:
    """A warning the first time ``message`` is seen in this process, debug afterwards."""
    if message in _logged:
        log.debug(message)
    else:
        _logged.add(message)
        log.warning(message)


# --------------------------------------------------------------------------------------------
# parameter selection


def parse_param_spec(params: ParamSpec, name: str = "params") -> tuple[str, ...]:
    """The presets and globs of a parameter specification.

    Parameters
    ----------
    params : str or sequence of str
        ``"all"``, ``"head"``, ``"last"``, a glob, a comma-separated list of these
        (``"head,transformer.h.1.*"``) or a sequence of them.
    name : str
        Argument name for error messages.

    Returns
    -------
    tuple of str
        The non-empty items, stripped, in order.
    """
    if isinstance(params, str):
        items = [p.strip() for p in params.split(",")]
    elif isinstance(params, Sequence) and all(isinstance(p, str) for p in params):
        items = [p.strip() for p in params]
    else:
        raise TypeError(
            f"{name}: expected 'all', 'head', 'last', a glob or a list of them (str), got {params!r}"
        )
    items = [p for p in items if p]
    if not items:
        raise ValueError(f"{name}: expected at least one preset or glob, got {params!r}")
    return tuple(items)


def _names(model: torch.nn.Module) -> tuple[dict[str, torch.nn.Parameter], dict[str, str]]:
    """Differentiable parameters under their first name, and every name (aliases too) -> that name."""
    canonical = {n: p for n, p in model.named_parameters() if p.is_floating_point()}
    by_id = {id(p): n for n, p in canonical.items()}
    aliases = {n: by_id[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if id(p) in by_id}
    return canonical, aliases


def _module_parameter_names(module: Optional[torch.nn.Module], canonical: dict[str, torch.nn.Parameter]) -> list[str]:
    if module is None:
        return []
    ids = {id(p) for p in module.parameters()}
    return [n for n, p in canonical.items() if id(p) in ids]


def _head_names(model: torch.nn.Module, canonical: dict[str, torch.nn.Parameter]) -> list[str]:
    """The output embedding's parameters, else those of the last module holding parameters."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = _module_parameter_names(head if isinstance(head, torch.nn.Module) else None, canonical)
    if names:
        return names
    last = None
    for module in model.modules():
        if any(p.is_floating_point() for p in module.parameters(recurse=False)):
            last = module
    if last is None:
        return []
    ids = {id(p) for p in last.parameters(recurse=False)}
    return [n for n, p in canonical.items() if id(p) in ids]


def _last_names(model: torch.nn.Module, canonical: dict[str, torch.nn.Parameter]) -> list[str]:
    """The last block of the longest numbered module list, every parameter after that list, the head."""
    order = list(canonical)
    lists: dict[str, dict[int, list[int]]] = {}  # prefix -> layer index -> positions in order
    for pos, name in enumerate(order):
        match = _LAYER_INDEX.search(name)
        if match:
            lists.setdefault(name[: match.start(1)], {}).setdefault(int(match.group(1)), []).append(pos)
    if not lists:
        raise ValueError(
            "params: 'last' needs parameters in a numbered module list (names like "
            f"'transformer.h.3.attn.weight'), got names such as {order[:6]}; select them with globs instead"
        )
    prefix = max(lists, key=lambda p: (len(lists[p]), max(max(v) for v in lists[p].values())))
    blocks = lists[prefix]
    last_block = [order[pos] for pos in blocks[max(blocks)]]
    end = max(pos for positions in blocks.values() for pos in positions)
    members = {pos for positions in blocks.values() for pos in positions}
    after = [order[pos] for pos in range(end + 1, len(order)) if pos not in members]
    return last_block + after + _head_names(model, canonical)


def select_parameters(model: torch.nn.Module, params: ParamSpec = "all") -> dict[str, torch.nn.Parameter]:
    """The parameters that a gradient norm is taken over.

    Parameters
    ----------
    model : torch.nn.Module
    params : str or sequence of str
        ``"all"``; ``"head"``: the output embedding (``get_output_embeddings()``), else the last
        module that holds parameters; ``"last"``: the last block of the model's longest numbered
        module list (``transformer.h.<i>``, ``model.layers.<i>``, ``<i>`` of a Sequential), every
        parameter registered after that list (the final norm) and the head; or `fnmatch` globs
        over parameter names (aliases of tied parameters included). Several may be combined in a
        list or a comma-separated string (their union).

    Returns
    -------
    dict of str -> Parameter
        Floating-point parameters in the model's order, each tensor once, under the first name
        ``model.named_parameters()`` gives it (a tied ``lm_head.weight`` appears as the input
        embedding's name).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    items = parse_param_spec(params)
    canonical, aliases = _names(model)
    if not canonical:
        raise ValueError(f"model: expected floating-point parameters, {type(model).__name__} has none")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            found = list(canonical)
        elif item == "head":
            found = _head_names(model, canonical)
        elif item == "last":
            found = _last_names(model, canonical)
        else:
            found = [aliases[n] for n in aliases if fnmatch.fnmatchcase(n, item)]
        if not found:
            sample = list(aliases)
            shown = ", ".join(sample[:8]) + (f", ... ({len(sample)} names)" if len(sample) > 8 else "")
            raise ValueError(
                f"params: {item!r} matches no parameter of {type(model).__name__}; expected one of "
                f"{PARAM_PRESETS} or a glob over names such as {shown}"
            )
        chosen.update(found)
    return {n: p for n, p in canonical.items() if n in chosen}


# --------------------------------------------------------------------------------------------
# model state


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode during the block; every submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _requires_grad_only(model: torch.nn.Module, selected: dict[str, torch.nn.Parameter]) -> Iterator[None]:
    """Only the selected parameters require grad during the block; the flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in selected.values()}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _float_dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _logits(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, an object with ``.logits`` or a tuple (first item)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"model: expected an output of logits (a tensor or an object with .logits), got {type(output).__name__}")


def _accepts(model: torch.nn.Module, keyword: str) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return method


def _check_batch_size(batch_size: Optional[int]) -> Optional[int]:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    return int(batch_size)


def _auto_batch_size(per_sample_elements: int, cap: int) -> int:
    """Samples per vmap micro-batch whose float32 gradients fit `GRADIENT_MEMORY_BUDGET`."""
    return int(max(1, min(cap, GRADIENT_MEMORY_BUDGET // max(1, 4 * per_sample_elements))))


# --------------------------------------------------------------------------------------------
# the two engines

# loss_fn(params, *row) -> scalar loss of one sample. ``params`` is a dict name -> tensor to
# substitute with functional_call (vmap), or None to call the model as it is (loop); ``row``
# holds one sample's tensors, without the batch dimension.
LossFn = Callable[..., torch.Tensor]


def _forward(model: torch.nn.Module, params: Optional[dict[str, torch.Tensor]], args: tuple, kwargs: dict) -> Any:
    if params is None:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, params, args, kwargs)


def _squared_norm(grads: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """Sum of the squared entries of every gradient (float64; a missing gradient counts 0)."""
    squares = [torch.linalg.vector_norm(g.float()).double().square() for g in grads if g is not None]
    if not squares:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(squares).sum()


def _vmap_norms(selected: dict[str, torch.nn.Parameter], loss_fn: LossFn, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
    """Gradient norms of a micro-batch with ``vmap(grad(loss_fn))``."""
    params = {n: p.detach() for n, p in selected.items()}

    def squared_norm(p: dict[str, torch.Tensor], *row: torch.Tensor) -> torch.Tensor:
        grads = torch.func.grad(loss_fn)(p, *row)
        return _squared_norm(list(grads.values()))

    in_dims = (None,) + (0,) * len(batch)
    with torch.no_grad(), warnings.catch_warnings():  # grad() ignores the outer no_grad
        warnings.filterwarnings("ignore", message=_BATCHING_FALLBACK)
        squares = torch.func.vmap(squared_norm, in_dims=in_dims)(params, *batch)
    return squares.sqrt().cpu().numpy()


def _loop_norms(
    model: torch.nn.Module, selected: dict[str, torch.nn.Parameter], loss_fn: LossFn, batch: tuple[torch.Tensor, ...]
) -> np.ndarray:
    """Gradient norms of a micro-batch, one forward and backward per sample."""
    tensors = list(selected.values())
    out = np.empty(batch[0].shape[0], dtype=np.float64)
    with torch.enable_grad(), _requires_grad_only(model, selected):
        for r in range(out.shape[0]):
            loss = loss_fn(None, *(t[r] for t in batch))
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            out[r] = float(_squared_norm(grads).sqrt())
    return out


def _gradient_norms(
    model: torch.nn.Module,
    selected: dict[str, torch.nn.Parameter],
    loss_fn: LossFn,
    batches: Sequence[tuple[np.ndarray, tuple[torch.Tensor, ...]]],
    n: int,
    method: str,
) -> np.ndarray:
    """Run ``batches`` (row indices, tensors) through vmap or the loop; (n,) norms in input order."""
    norms = np.full(n, np.nan, dtype=np.float64)
    use_vmap = method in ("auto", "vmap")
    with _eval_mode(model):
        for rows, batch in batches:
            if use_vmap:
                try:
                    norms[rows] = _vmap_norms(selected, loss_fn, batch)
                    continue
                except (RuntimeError, NotImplementedError) as exc:
                    if method == "vmap":
                        raise
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                    _log_once(
                        f"per-sample gradients of {type(model).__name__}: torch.func.vmap failed "
                        f"({type(exc).__name__}: {reason}); using one backward pass per sample"
                    )
                    use_vmap = False
            norms[rows] = _loop_norms(model, selected, loss_fn, batch)
    return norms


# --------------------------------------------------------------------------------------------
# causal LMs


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__} ({exc})") from None


def _check_lm_inputs(model: torch.nn.Module, input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _as_tensor(input_ids, "input_ids")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"input_ids: expected integer token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape (N, T), got {tuple(ids.shape)}")
    ids = ids.to(torch.int64)
    if attention_mask is None:
        mask = torch.ones_like(ids)
    else:
        mask = _as_tensor(attention_mask, "attention_mask")
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask: expected the shape of input_ids {tuple(ids.shape)}, got {tuple(mask.shape)}")
        if mask.dtype.is_floating_point or mask.dtype.is_complex or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"attention_mask: expected 0/1 (or bool) values, got dtype {mask.dtype} with other values")
        mask = mask.to(torch.int64)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embedding, "num_embeddings", None)
    real = ids[mask.bool()]
    if real.numel() and (int(real.min()) < 0 or (vocab is not None and int(real.max()) >= vocab)):
        raise ValueError(
            f"input_ids: expected token ids in [0, {vocab if vocab is not None else 'V'}), got values in "
            f"[{int(real.min())}, {int(real.max())}]"
        )
    empty = (_scored(mask).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise ValueError(
            f"input_ids: expected at least two real tokens per sequence (one scored target), got "
            f"{len(empty)} sequences without a scored token (rows {shown})"
        )
    # padding ids never reach a real position; 0 keeps any pad value (e.g. -100) a valid index
    return ids.masked_fill(mask == 0, 0), mask


def _scored(mask: torch.Tensor) -> torch.Tensor:
    """(..., T-1) bool: target t+1 is scored when it and its input position t are real tokens."""
    return (mask[..., 1:] == 1) & (mask[..., :-1] == 1)


def _right_padded(mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (padding only at the right end)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


class _EmbeddingsFirst(torch.nn.Module):
    """A causal LM fed ``inputs_embeds`` from its own input embedding.

    Under vmap, the model then sees no raw ``input_ids``: HF models inspect those with
    data-dependent Python checks (e.g. whether the last token is the pad token) that vmap cannot
    trace. The LM is a submodule, so its parameters are named ``lm.<name>``.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        return self.lm(inputs_embeds=self.lm.get_input_embeddings()(input_ids), **kwargs)


def _lm_loss_fn(model: torch.nn.Module, pass_mask: bool) -> LossFn:
    """Mean NLL of one sequence's scored next-token targets.

    The loop (``params`` None) calls the model on ``input_ids`` with the row's attention mask;
    vmap calls it through `_EmbeddingsFirst` when the model takes ``inputs_embeds``, with the
    mask only when ``pass_mask`` (padding not at the right end).
    """
    kwargs = {"use_cache": False} if _accepts(model, "use_cache") else {}
    takes_mask = _accepts(model, "attention_mask")
    embeds_first = (_accepts(model, "inputs_embeds") and hasattr(model, "get_input_embeddings")
                    and isinstance(model.get_input_embeddings(), torch.nn.Module))
    wrapper = _EmbeddingsFirst(model) if embeds_first else model
    prefix = "lm." if embeds_first else ""

    def loss_fn(params: Optional[dict[str, torch.Tensor]], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        extra = dict(kwargs)
        if takes_mask and (params is None or pass_mask):
            extra["attention_mask"] = mask.unsqueeze(0)
        if params is None:
            output = model(ids.unsqueeze(0), **extra)
        else:
            named = {prefix + name: value for name, value in params.items()}
            output = torch.func.functional_call(wrapper, named, (ids.unsqueeze(0),), extra)
        logits = _logits(output)[0, :-1]
        scored = _scored(mask)
        targets = ids[1:].masked_fill(~scored, _IGNORE)
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=_IGNORE, reduction="sum")
        return nll / scored.sum()

    return loss_fn


def lm_gradient_norms(
    model: torch.nn.Module,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    params: ParamSpec = "all",
    method: str = "auto",
    batch_size: Optional[int] = None,
) -> np.ndarray:
    """Per-sequence L2 norm of the gradient of a causal LM's mean token loss.

    The loss of sequence ``i`` is the mean NLL of its scored next-token targets: position ``t``
    predicts token ``t + 1``, scored when ``attention_mask`` is 1 at both (right padding and a
    left-padded sequence's pads are ignored). Each sequence is differentiated on its own, as if
    alone in the batch: right padding is trimmed (it cannot change a causal LM's earlier
    positions), and the model receives ``attention_mask`` only for rows with padding elsewhere.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM (a HF ``*ForCausalLM`` or any module mapping ``(1, T)`` ids to ``(1, T, V)``
        logits, as a tensor or an output with ``.logits``). Put in eval mode meanwhile.
    input_ids : Tensor or array, shape (N, T), integer
    attention_mask : Tensor or array, shape (N, T), 0/1, optional
        Default: every token is real. Every sequence needs at least one scored target.
    params : str or sequence of str
        Parameters the norm is taken over; see `select_parameters` (``"all"``, ``"head"``,
        ``"last"``, globs).
    method : {'auto', 'vmap', 'loop'}
        ``vmap``: batched per-sample gradients with `torch.func`; ``loop``: one backward per
        sequence; ``auto``: vmap, falling back to the loop (logged once) when vmap fails.
    batch_size : int, optional
        Sequences per vmap micro-batch (the per-sample gradients of the selected parameters and
        the logits of that many sequences are held at once). Default: what fits 1 GiB, at most 16
        (larger micro-batches were slower on CPU: their working set leaves the caches).

    Returns
    -------
    ndarray, shape (N,), float64
        The global L2 norm over the selected parameters, one per sequence (tied parameters
        counted once, with the gradient of all their uses).
    """
    method, batch_size = _check_method(method), _check_batch_size(batch_size)
    selected = select_parameters(model, params)
    ids, mask = _check_lm_inputs(model, input_ids, attention_mask)
    n = ids.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.float64)
    device = _device(model)
    lengths = mask.shape[1] - mask.flip(1).argmax(1)  # up to the last real token
    order = torch.argsort(lengths, descending=True, stable=True).numpy()
    if batch_size is None:
        vocab = _logits_width(model)
        per_sample = sum(p.numel() for p in selected.values()) + 3 * int(lengths.max()) * vocab
        batch_size = _auto_batch_size(per_sample, _MAX_LM_BATCH)
    size = 1 if method == "loop" else batch_size
    batches = []
    for start in range(0, n, size):
        rows = order[start : start + size]
        width = int(lengths[rows].max())
        sub_ids, sub_mask = ids[rows, :width], mask[rows, :width]
        batches.append((rows, (sub_ids.to(device), sub_mask.to(device)), _right_padded(sub_mask)))
    # one loss function per mask policy; micro-batches whose padding is all at the right need no mask
    losses = {flag: _lm_loss_fn(model, pass_mask=not flag) for flag in {b[2] for b in batches}}
    norms = np.full(n, np.nan, dtype=np.float64)
    for flag, loss_fn in losses.items():
        part = [(rows, tensors) for rows, tensors, right in batches if right == flag]
        result = _gradient_norms(model, selected, loss_fn, part, n, method)
        done = np.concatenate([rows for rows, _ in part])
        norms[done] = result[done]
    return norms


def _logits_width(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)


# --------------------------------------------------------------------------------------------
# classifiers


def _classifier_loss_fn(model: torch.nn.Module) -> LossFn:
    def loss_fn(params: Optional[dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = _logits(_forward(model, params, (x.unsqueeze(0),), {}))
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(f"model: expected logits of shape (1, C) for one sample, got {tuple(logits.shape)}")
        return torch.nn.functional.cross_entropy(logits.float(), y.unsqueeze(0))

    return loss_fn


def classifier_gradient_norms(
    model: torch.nn.Module,
    inputs: Any,
    labels: Any,
    *,
    params: ParamSpec = "all",
    method: str = "auto",
    batch_size: Optional[int] = None,
) -> np.ndarray:
    """Per-sample L2 norm of the gradient of a classifier's cross-entropy.

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch ``(B, ...)`` to logits ``(B, C)`` (a tensor, or an output with ``.logits``).
        Put in eval mode meanwhile (dropout off, batch norm on its running statistics).
    inputs : Tensor or array, shape (N, ...)
        Floating-point inputs are cast to the model's dtype; integer inputs (token ids) are kept.
    labels : Tensor or array, shape (N,), integer class indices in [0, C)
    params : str or sequence of str
        See `select_parameters`.
    method : {'auto', 'vmap', 'loop'}
        As in `lm_gradient_norms`.
    batch_size : int, optional
        Samples per vmap micro-batch. Default: what fits 1 GiB of per-sample gradients, at most 256.

    Returns
    -------
    ndarray, shape (N,), float64
    """
    method, batch_size = _check_method(method), _check_batch_size(batch_size)
    selected = select_parameters(model, params)
    x = _as_tensor(inputs, "inputs")
    y = _as_tensor(labels, "labels")
    if x.dim() < 1:
        raise ValueError("inputs: expected shape (N, ...), got a scalar")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"labels: expected integer class indices, got dtype {y.dtype}")
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"labels: expected shape ({x.shape[0]},) (one per input), got {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"labels: expected class indices >= 0, got {int(y.min())}")
    n = x.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.float64)
    device = _device(model)
    x = x.to(device, _float_dtype(model)) if x.dtype.is_floating_point else x.to(device)
    y = y.to(device, torch.int64)
    if batch_size is None:
        batch_size = _auto_batch_size(sum(p.numel() for p in selected.values()), _MAX_CLASSIFIER_BATCH)
    size = 1 if method == "loop" else batch_size
    rows = np.arange(n)
    batches = [(rows[s : s + size], (x[s : s + size], y[s : s + size])) for s in range(0, n, size)]
    return _gradient_norms(model, selected, _classifier_loss_fn(model), batches, n, method)
