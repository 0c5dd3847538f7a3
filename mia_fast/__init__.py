"""mia_fast: a fast, correct scoring engine for membership inference attacks."""

from __future__ import annotations

from .api import default_num_threads, token_stats, token_stats_from_hidden
from .stats import TokenStats

__version__ = "0.1.0"

__all__ = ["TokenStats", "token_stats", "token_stats_from_hidden", "default_num_threads", "__version__"]
