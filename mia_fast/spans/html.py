"""The ``spans.html`` page of ``mia-fast spans``: a self-contained view of memorised spans.

One HTML file, inline CSS, no script and no external asset. Each document's text is shown with
its tokens shaded by the smoothed membership signal (background intensity; the threshold sits at
half intensity), the spans outlined, and a tooltip (``title``) per token with its position, raw
and smoothed signal. A legend explains the scale and a table summarises every document shown.
All text from the corpus goes through `html.escape`.
"""

from __future__ import annotations

import html
from typing import Optional

import numpy as np

from .model import Calibration, DocumentSpans, SpanReport

__all__ = ["render_html", "ColourScale"]

# Colour of the shading (red) and of the span outlines (blue).
_SHADE_RGB = (220, 38, 38)
_MAX_ALPHA = 0.85
_EXCERPT_CHARS = 160

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2937;
       margin: 24px auto; max-width: 1120px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin: 0 0 6px 0; }
.muted { color: #6b7280; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px 0; }
th, td { border: 1px solid #e5e7eb; padding: 3px 8px; text-align: right; }
th { background: #f3f4f6; }
td.id, th.id { text-align: left; }
.legend { border: 1px solid #e5e7eb; border-radius: 6px; padding: 12px 14px 4px 14px; background: #fafafa;
          font-size: 13px; }
.legend p { margin: 6px 0 8px 0; }
.scale { position: relative; width: 480px; height: 16px; border: 1px solid #d1d5db;
         background: linear-gradient(to right, rgba(220,38,38,0) 0%, rgba(220,38,38,0.425) 50%,
                                     rgba(220,38,38,0.85) 100%); }
.scale .mark { position: absolute; top: -4px; width: 2px; height: 24px; background: #111827; left: 50%; }
.ticks { position: relative; width: 482px; height: 16px; font-size: 11px; }
.ticks span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.ticks span.first { transform: none; }
.ticks span.last { transform: translateX(-100%); }
.doc { border: 1px solid #e5e7eb; border-radius: 6px; padding: 12px 16px; margin: 18px 0; }
.text { white-space: pre-wrap; font-size: 15px; line-height: 1.9; word-wrap: break-word; }
.tok { border-radius: 2px; }
.ctx { color: #9ca3af; }
.span { border: 2px solid #1d4ed8; border-radius: 3px; padding: 1px 0;
        -webkit-box-decoration-break: clone; box-decoration-break: clone; }
.spanbox { display: inline-block; width: 22px; height: 12px; border: 2px solid #1d4ed8; border-radius: 3px;
           vertical-align: middle; }
ol.spans { font-size: 13px; margin: 8px 0 0 0; }
ol.spans q { color: #374151; }
"""


class ColourScale:
    """Maps the smoothed signal to a shading intensity in [0, 1], piecewise linear.

    ``low`` (the non-members' median, or the median of all tokens without non-members) maps to 0,
    the threshold to 0.5 and ``high`` (the largest smoothed value shown, at least a little above
    the threshold) to 1.

    Parameters
    ----------
    low, threshold, high : float
        With ``low < threshold < high`` (adjusted when the data give equal values).
    """

    def __init__(self, low: float, threshold: float, high: float) -> None:
        span = max(abs(threshold) * 1e-3, 1e-6)
        self.threshold = float(threshold)
        self.low = float(min(low, threshold - span))
        self.high = float(max(high, threshold + span))

    @classmethod
    def for_report(cls, calibration: Calibration, documents: list[DocumentSpans]) -> "ColourScale":
        values = np.concatenate([d.smoothed for d in documents]) if documents else np.zeros(0)
        thr = calibration.threshold
        low = calibration.null_quantiles.get("0.5")
        if low is None:
            low = float(np.median(values)) if len(values) else thr - 1.0
        high = float(np.max(values)) if len(values) else thr + 1.0
        return cls(low, thr, high)

    def intensity(self, values: np.ndarray) -> np.ndarray:
        """Intensity in [0, 1] of each value, shape of ``values``."""
        v = np.asarray(values, dtype=np.float64)
        below = 0.5 * (v - self.low) / (self.threshold - self.low)
        above = 0.5 + 0.5 * (v - self.threshold) / (self.high - self.threshold)
        return np.clip(np.where(v <= self.threshold, below, above), 0.0, 1.0)


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _background(intensity: float) -> str:
    r, g, b = _SHADE_RGB
    return f"background-color:rgba({r},{g},{b},{_MAX_ALPHA * intensity:.3f})"


def _pieces(doc: DocumentSpans) -> tuple[str, list[str], str]:
    """Text before the first scored token, each token's text (gaps before it included), text after."""
    n = doc.n_tokens
    if doc.text is not None and doc.char_offsets is not None:
        text, offsets = doc.text, doc.char_offsets
        cursor = int(offsets[0, 0]) if n else len(text)
        head = text[:cursor]
        pieces = []
        for _, end in offsets.tolist():  # a gap before a token (e.g. a trimmed space) goes with it
            end = max(end, cursor)
            pieces.append(text[cursor:end])
            cursor = end
        return head, pieces, text[cursor:]
    if doc.token_text is not None:
        return "", list(doc.token_text), ""
    return "", [f"⟨{int(t)}⟩" for t in doc.tokens], ""


def _render_text(doc: DocumentSpans, scale: ColourScale) -> str:
    head, pieces, tail = _pieces(doc)
    shade = scale.intensity(doc.smoothed)
    index = {int(p): i for i, p in enumerate(doc.positions)}
    opens = {index[s.token_start]: (k, s) for k, s in enumerate(doc.spans, start=1)}
    closes = {index[s.token_end - 1] for s in doc.spans}
    out = [f'<span class="ctx" title="not scored">{_esc(head)}</span>'] if head else []
    for i, piece in enumerate(pieces):
        if i in opens:
            k, s = opens[i]
            out.append(f'<span class="span" id="doc-{doc.row}-span-{k}" title="span {k}: {s.n_tokens} tokens, '
                       f'mean signal {_fmt(s.mean_signal)}, score {_fmt(s.score)}">')
        title = (f"position {int(doc.positions[i])} · token {int(doc.tokens[i])} · signal {doc.signal[i]:.3g} · "
                 f"smoothed {doc.smoothed[i]:.3g}")
        out.append(f'<span class="tok" style="{_background(float(shade[i]))}" title="{_esc(title)}">'
                   f"{_esc(piece)}</span>")
        if i in closes:
            out.append("</span>")
    if tail:
        out.append(f'<span class="ctx">{_esc(tail)}</span>')
    return "".join(out)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"


def _render_span_list(doc: DocumentSpans) -> str:
    if not doc.spans:
        return '<p class="muted">No span above the threshold.</p>'
    items = []
    for k, s in enumerate(doc.spans, start=1):
        chars = f", characters {s.char_start}–{s.char_end}" if s.char_start is not None else ""
        quote = f": <q>{_esc(_excerpt(s.text))}</q>" if s.text else ""
        items.append(f'<li><a href="#doc-{doc.row}-span-{k}">tokens {s.token_start}–{s.token_end - 1}</a> '
                     f"({s.n_tokens} tokens{chars}), mean signal {_fmt(s.mean_signal)}, peak smoothed "
                     f"{_fmt(s.max_smoothed)}, score {_fmt(s.score)}{quote}</li>")
    return f'<ol class="spans">{"".join(items)}</ol>'


def _doc_meta(doc: DocumentSpans) -> str:
    label = "" if doc.label is None else f"label {doc.label} · "
    frac = doc.n_span_tokens / doc.n_tokens if doc.n_tokens else 0.0
    n = len(doc.spans)
    return (f"{label}row {doc.row} · {doc.n_tokens} tokens · {n} span{'' if n == 1 else 's'} · "
            f"{doc.n_span_tokens} span tokens ({100 * frac:.0f}%) · max smoothed {_fmt(float(doc.smoothed.max()))}"
            if doc.n_tokens else f"{label}row {doc.row} · no scored token")


def _render_document(doc: DocumentSpans, scale: ColourScale) -> str:
    return (f'<section class="doc" id="doc-{doc.row}"><h2>{_esc(doc.id)}</h2>'
            f'<div class="muted">{_doc_meta(doc)}</div>'
            f'<div class="text">{_render_text(doc, scale)}</div>{_render_span_list(doc)}</section>')


def _render_summary(docs: list[DocumentSpans]) -> str:
    rows = []
    for d in docs:
        best = max((s.score for s in d.spans), default=None)
        frac = d.n_span_tokens / d.n_tokens if d.n_tokens else 0.0
        rows.append(
            f'<tr><td class="id"><a href="#doc-{d.row}">{_esc(d.id)}</a></td><td>{"–" if d.label is None else d.label}'
            f"</td><td>{d.n_tokens}</td><td>{len(d.spans)}</td><td>{d.n_span_tokens} ({100 * frac:.0f}%)</td>"
            f"<td>{_fmt(float(d.smoothed.max()) if d.n_tokens else None)}</td><td>{_fmt(best)}</td></tr>"
        )
    return ('<table><tr><th class="id">document</th><th>label</th><th>tokens</th><th>spans</th>'
            f'<th>span tokens</th><th>max smoothed</th><th>best span score</th></tr>{"".join(rows)}</table>')


def _render_legend(cal: Calibration, scale: ColourScale) -> str:
    low_name = "the non-members' median" if cal.null_quantiles else "the median"
    ticks = (f'<span class="first" style="left:0%">{scale.low:.3g}</span>'
             f'<span style="left:50%">{cal.threshold:.3g} (threshold)</span>'
             f'<span class="last" style="left:100%">{scale.high:.3g}</span>')
    if cal.source == "user":
        how = "an explicit threshold"
    else:
        by = f"label {cal.nonmember_label}" if cal.source == "nonmember_label" else "the given ids"
        how = (f"the {1 - cal.alpha:g} quantile of the smoothed signal of {cal.n_null_tokens} tokens of "
               f"{cal.n_null_documents} known non-member documents ({by})")
    fpr = "" if cal.null_fpr is None else f"; non-member tokens above it: {100 * cal.null_fpr:.2g}%"
    signal = {"reference_diff": "target log-prob − reference log-prob", "logprob": "target log-prob",
              "min_k_pp": "Min-K%++ z-score"}.get(cal.signal, cal.signal)
    return (
        '<div class="legend"><div class="scale"><div class="mark"></div></div>'
        f'<div class="ticks">{ticks}</div>'
        f"<p>Token shading: the smoothed membership signal, from {low_name} (no colour) through the threshold (half "
        "intensity) to the highest value shown; darker = more likely memorised. Hover a token for its position "
        "and values.</p>"
        f'<p><span class="spanbox"></span> span: a run of tokens above the threshold, runs merged across gaps of '
        f"fewer than {cal.merge_gap} tokens, kept from {cal.min_length} tokens<br>"
        f"signal: {_esc(signal)}, running mean over {cal.window} tokens<br>"
        f"threshold {cal.threshold:.4g}: {_esc(how)}{fpr}"
        + (f"<br>reference: {_esc(cal.reference)}" if cal.reference else "")
        + "</p></div>"
    )


def render_html(report: SpanReport, *, max_documents: int = 200) -> str:
    """The ``spans.html`` page of a report.

    Parameters
    ----------
    report : SpanReport
    max_documents : int
        Documents shown: those with the best span score first, then the others by their peak
        smoothed signal (``spans.json`` lists them all).

    Returns
    -------
    str
        A complete HTML document.
    """
    docs = sorted(
        report.documents,
        key=lambda d: (-max((s.score for s in d.spans), default=-np.inf),
                       -(float(d.smoothed.max()) if d.n_tokens else -np.inf), d.row),
    )
    shown = docs[:max_documents]
    scale = ColourScale.for_report(report.calibration, shown)
    n_with = sum(1 for d in report.documents if d.spans)
    title = "Memorised spans" + (f" — {report.score_dir}" if report.score_dir else "")
    omitted = (f" Showing {len(shown)} of {len(docs)} documents (highest-scoring spans first); spans.json lists "
               "them all." if len(shown) < len(docs) else "")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f'<p class="muted">{len(docs)} documents, {sum(len(d.spans) for d in docs)} spans in {n_with} documents.'
        f"{omitted}</p>"
        f"{_render_legend(report.calibration, scale)}"
        f"{_render_summary(shown)}"
        + "".join(_render_document(d, scale) for d in shown)
        + "</body></html>\n"
    )
