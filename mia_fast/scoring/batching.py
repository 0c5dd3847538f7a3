"""Sliding windows over long token sequences and length-bucketed batches under a token budget.

A text of T tokens ``t_0 .. t_{T-1}`` (``t_0`` may be a prepended BOS) has the prediction
targets ``t_1 .. t_{T-1}``: position j is predicted from ``t_0 .. t_{j-1}``. A model with a
context of C tokens sees windows ``[a_k, b_k)`` with ``a_k = k * stride`` and
``b_k = min(a_k + C, T)``, stopping at the first window that reaches T. Window k scores the
targets ``j`` in ``[max(a_k + 1, b_{k-1}), b_k)`` (with ``b_{-1} = 0``): consecutive windows
tile ``1 .. T-1`` exactly, so every target is scored once, and every target after the first
window has at least ``C - stride`` tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

__all__ = ["Window", "windows", "bucket_batches"]


@dataclass(frozen=True)
class Window:
    """One model input: tokens ``[start, end)`` of sequence ``seq``, scoring targets ``[score_from, end)``."""

    seq: int
    start: int
    end: int
    score_from: int

    @property
    def length(self) -> int:
        return self.end - self.start


def windows(n_tokens: int, context: int, stride: int, seq: int = 0) -> list[Window]:
    """The sliding windows of one sequence of ``n_tokens`` tokens (see the module docstring).

    Parameters
    ----------
    n_tokens : int
        Length T of the token sequence (a BOS included).
    context : int
        Longest input the model takes (C >= 2).
    stride : int
        Shift between window starts, ``1 <= stride <= C - 1``.
    seq : int
        Index of the sequence, carried into each window.

    Returns
    -------
    list of Window
        Empty when the sequence has fewer than 2 tokens (nothing to predict).
    """
    if context < 2:
        raise ValueError(f"context: expected at least 2 tokens, got {context}")
    if not 1 <= stride <= context - 1:
        raise ValueError(f"stride: expected 1 <= stride <= context - 1 = {context - 1}, got {stride}")
    out: list[Window] = []
    if n_tokens < 2:
        return out
    start, prev_end = 0, 0
    while True:
        end = min(start + context, n_tokens)
        out.append(Window(seq, start, end, max(start + 1, prev_end)))
        if end == n_tokens:
            return out
        prev_end = end
        start += stride


def bucket_batches(
    lengths: Sequence[int], batch_tokens: int, max_rows: int = 1024, max_padding: float = 0.1
) -> Iterator[list[int]]:
    """Group inputs of similar length into batches whose padded size stays under a token budget.

    Inputs are sorted by decreasing length (stable, so ties keep their order) and cut greedily:
    a batch of rows padded to its longest row holds at most ``batch_tokens`` tokens (one input
    longer than the budget forms a batch alone), at most ``max_rows`` rows, and at most a share
    ``max_padding`` of padding (a padded token costs a full token of model compute).

    Parameters
    ----------
    lengths : sequence of int
        Length of each input.
    batch_tokens : int
        Budget of padded tokens per batch.
    max_rows : int
        Cap on rows per batch.
    max_padding : float in [0, 1)
        Cap on the share of padding positions in a batch.

    Yields
    ------
    list of int
        Indices into ``lengths``, longest first.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens: expected a positive token budget, got {batch_tokens}")
    if not 0.0 <= max_padding < 1.0:
        raise ValueError(f"max_padding: expected a share in [0, 1), got {max_padding}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    real = 0
    for i in order:
        if batch:
            width = lengths[batch[0]]
            padded = (len(batch) + 1) * width
            if padded > batch_tokens or len(batch) == max_rows or padded - real - lengths[i] > max_padding * padded:
                yield batch
                batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        yield batch
