"""Token-level localisation of memorised spans in scored documents (``mia-fast spans``).

A document can be memorised in part only (a quoted passage, the first half of an article). From
the per-token table of a score directory (``mia-fast score ... --per-token``) this module finds
the runs of tokens the model knows far better than it should:

1. a per-token membership signal, higher = more likely memorised (`token_signal`):

   - ``reference_diff`` (with a reference model's score directory of the same corpus, same
     tokenizer): ``logprob_target - logprob_reference``, the token-level form of the reference
     attack. The reference absorbs how predictable the token is in general.
   - ``logprob`` (target only, the default without a reference): the target's ``log p_y``. A
     verbatim span has ``log p_y`` near 0 where new text of the same kind sits at several nats
     below; the calibration on non-members sets the level that counts as "unusually confident".
   - ``min_k_pp`` (target only): Min-K%++'s per-token z-score ``(log p_y + entropy) / sigma``.
     It is not the default: it tends to 0 as a token is memorised outright (``p_y -> 1`` sends
     both ``log p_y + entropy`` and ``sigma`` to 0, the ratio like ``sqrt(1 - p_y)``), so it
     under-weights exactly the most verbatim spans;

2. smoothing by a centred running mean over ``window`` tokens, truncated at the document's ends
   (`running_mean`);
3. a threshold calibrated on known non-members (`calibrate_threshold`): the ``1 - alpha``
   quantile of the smoothed signal over every token of the non-member documents, so that about a
   fraction ``alpha`` of non-member tokens is flagged (a per-token false positive rate). Without
   non-members the threshold must be given explicitly: an uncalibrated threshold is meaningless;
4. spans (`find_spans`): maximal runs of tokens above the threshold, merged across gaps of fewer
   than ``merge_gap`` tokens, and kept when at least ``min_length`` tokens long.

Character offsets (`mia_fast.spans.text`): the texts are read again from the corpus file named in
the manifest (while its SHA-256 matches) and re-tokenized with the model's tokenizer, checking the
ids against the stored tokens.

`locate_spans` does it all for score directories; `spans_from_tables` works on the tables.
`write_spans` writes ``spans.json`` and the ``spans.html`` page (`mia_fast.spans.html`).

Modules, each importing only those listed before it: `model` (the result types), `text` (texts
and character offsets), `locate` (the method), `html` (the page), `output` (the files).
"""

from .locate import calibrate_threshold, find_spans, locate_spans, running_mean, spans_from_tables, token_signal
from .model import (
    DEFAULT_ALPHA,
    DEFAULT_MERGE_GAP,
    DEFAULT_MIN_LENGTH,
    DEFAULT_WINDOW,
    SIGNALS,
    Calibration,
    DocumentSpans,
    Span,
    SpanReport,
)
from .output import write_spans

__all__ = [
    "DEFAULT_WINDOW",
    "DEFAULT_ALPHA",
    "DEFAULT_MERGE_GAP",
    "DEFAULT_MIN_LENGTH",
    "SIGNALS",
    "Calibration",
    "Span",
    "DocumentSpans",
    "SpanReport",
    "token_signal",
    "running_mean",
    "calibrate_threshold",
    "find_spans",
    "spans_from_tables",
    "locate_spans",
    "write_spans",
]
