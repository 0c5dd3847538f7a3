"""Corpus scoring: texts and a causal LM in, per-sequence (and per-token) score tables out.

The pipeline, one module a stage, each importing only the stages before it and the kernel layer
(`mia_fast.api`, `mia_fast.aggregate`), never `mia_fast.audit` or `mia_fast.spans`:

- `corpus`: streaming readers of JSONL, CSV/TSV, Parquet, text and saved HF datasets; every record
  numbered, every bad record reported (a new input format goes here);
- `batching`: sliding windows over long texts and length-bucketed batches under a token budget;
- `lm`: loading a causal LM (safetensors, GGUF) and its token statistics through the fused head;
- `prefix`, `gradients`: extra per-sequence signals (prefix/context losses, gradient norms);
- `scorer`: `TextScorer` and `score_corpus`, texts -> `Scores` tables (a new per-sequence column
  goes here or in `mia_fast.aggregate`);
- `run`: the resumable, atomic score directory of ``mia-fast score`` and `read_scores`;
- `distributed`: the same score directory written by a pool of Ray actors.
"""

from .corpus import BadRecordError, Record, Rejected, iter_records
from .lm import load_model
from .run import ScoreJob, read_manifest, read_scores, score_to_directory
from .scorer import Scores, ScoreOptions, TextScorer, score_corpus

__all__ = [
    "BadRecordError",
    "Record",
    "Rejected",
    "iter_records",
    "load_model",
    "ScoreJob",
    "read_manifest",
    "read_scores",
    "score_to_directory",
    "Scores",
    "ScoreOptions",
    "TextScorer",
    "score_corpus",
]
