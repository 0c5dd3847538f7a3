"""Names of the score table's prefix columns: written by the scorer (`mia_fast.scoring.prefix`), read
by the attacks (`mia_fast.attacks.PrefixAttack`) and the audit report, so they live below all three.

The Min-K% and temperature column names live in `mia_fast.aggregate`, beside the reductions that
compute them.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Sequence, Union

import numpy as np

__all__ = ["PrefixSetting", "check_prefix_tokens", "loss_prefix_column", "n_tokens_prefix_column", "prefix_settings",
           "DC_PDD_COLUMN"]

#: A prefix setting: a count of tokens (int >= 0) or a fraction of the text's tokens (float in (0, 1)).
PrefixSetting = Union[int, float]

_LOSS_PREFIX = re.compile(r"^loss_prefix(\d+|0\.\d+)$")


def check_prefix_tokens(values: Any) -> tuple[PrefixSetting, ...]:
    """Validate prefix settings: counts (integers >= 0) and fractions (in (0, 1)), distinct.

    Parameters
    ----------
    values : sequence of int or float
        Integer-valued numbers are token counts (``16`` and ``16.0`` alike, ``0`` = no prefix);
        other numbers are fractions of each text's tokens and must lie strictly between 0 and 1.

    Returns
    -------
    tuple
        The settings in the given order, counts as ``int`` and fractions as ``float``.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"prefix_tokens: expected a sequence of numbers, got {type(values).__name__}")
    out: list[PrefixSetting] = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"prefix_tokens: expected token counts (integers >= 0) or fractions in (0, 1), got {v!r}")
        x = float(v)
        if x < 0:
            raise ValueError(f"prefix_tokens: expected token counts (integers >= 0) or fractions in (0, 1), got {v!r} "
                             "(negative)")
        if x.is_integer():
            out.append(int(x))
        elif x < 1:
            out.append(x)
        else:
            raise ValueError(f"prefix_tokens: expected token counts (integers >= 0) or fractions in (0, 1), got {v!r} "
                             "(a fraction above 1)")
    if len(set(out)) != len(out):
        raise ValueError(f"prefix_tokens: expected distinct settings, got {list(values)}")
    return tuple(out)


def _tag(setting: PrefixSetting) -> str:
    return str(setting) if isinstance(setting, int) else f"{setting:g}"


def loss_prefix_column(setting: PrefixSetting) -> str:
    """Column of the continuation's mean NLL after a prefix (``loss_prefix16``, ``loss_prefix0.25``)."""
    return f"loss_prefix{_tag(setting)}"


def n_tokens_prefix_column(setting: PrefixSetting) -> str:
    """Column of the continuation's number of scored tokens (``n_tokens_prefix16``)."""
    return f"n_tokens_prefix{_tag(setting)}"


def prefix_settings(columns: Sequence[str]) -> list[PrefixSetting]:
    """The prefix settings whose ``loss_prefix*`` column is among ``columns``, in column order."""
    out: list[PrefixSetting] = []
    for col in columns:
        m = _LOSS_PREFIX.match(str(col))
        if m:
            tag = m.group(1)
            out.append(float(tag) if "." in tag else int(tag))
    return out


# The per-sequence DC-PDD column (written by `mia_fast.scoring.frequency`, read by `mia_fast.attacks.DCPDDAttack`).
DC_PDD_COLUMN = "dc_pdd"
