"""Run every attack on score tables and write the report (``mia-fast attack`` and ``mia-fast demo``).

Inputs are per-sequence score tables (`mia_fast.scoring.run.read_scores`, `score_corpus`): the
target model's table with membership labels, and optionally K reference models' tables on the
same samples with the ``keep`` matrix (reference model x sample -> was a member), plus a
population the target and reference models never trained on (for RMIA). Outputs: ``metrics.json``
keyed by attack name, ``scores.parquet`` (one column per attack), ``roc.png`` (log-log ROC of every
attack down to the resolution floor) and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import atomic
from ..attacks import (
    RMIA,
    GradNormAttack,
    LiRA,
    LossAttack,
    MinK,
    MinKPlusPlus,
    ConReCaLLAttack,
    LowercaseAttack,
    NeighbourhoodAttack,
    PACAttack,
    DCPDDAttack,
    PrefixAttack,
    QuantileRegressionAttack,
    ReCaLLAttack,
    SaMIAAttack,
    ReferenceAttack,
    ShadowClassifierAttack,
    TemperatureAttack,
    ZlibAttack,
)
from ..columns import loss_prefix_column, n_tokens_prefix_column, prefix_settings
from ..metrics import ResolutionWarning, ShiftCheck, beats_blind_baseline, evaluate, plot_roc

__all__ = ["AuditData", "run_attacks", "write_report", "format_table", "save_keep", "load_keep", "LM_STATISTICS"]

log = logging.getLogger(__name__)

# Per-sequence statistics LiRA can model, each oriented so that larger = more member-like.
LM_STATISTICS: dict[str, tuple[str, float]] = {"neg_loss": ("loss", -1.0), "phi_mean": ("phi_mean", 1.0)}


def _statistic(table: Any, name: str) -> np.ndarray:
    if name not in LM_STATISTICS:
        raise ValueError(f"statistic: expected one of {sorted(LM_STATISTICS)}, got {name!r}")
    col, sign = LM_STATISTICS[name]
    return sign * np.asarray(table[col], dtype=np.float64)


def _align(table: Any, ids: np.ndarray, name: str) -> Any:
    """``table`` reordered to ``ids`` (every id must be present)."""
    indexed = table.set_index(table["id"].astype(str), drop=False)
    missing = np.setdiff1d(ids, indexed.index.to_numpy())
    if missing.size:
        raise ValueError(f"{name}: lacks {missing.size} of the target's samples (first ids: {list(missing[:5])})")
    return indexed.loc[ids].reset_index(drop=True)


@dataclass
class AuditData:
    """The tables of one audit, aligned on the target's sample ids.

    Parameters
    ----------
    target : DataFrame
        The target model's per-sequence table, with ``id`` and ``label`` (1 = member).
    references : list of DataFrame
        K reference models' tables on the same samples (any order; aligned by ``id``).
    keep : ndarray of bool, shape (K, N), optional
        ``keep[k, n]``: target sample n was in reference model k's training set.
    population_target, population_references : DataFrame and list of DataFrame, optional
        A population no model trained on, scored by the target and by each reference model
        (RMIA's z samples).
    nonmembers : DataFrame, optional
        Texts known not to be in the target's training data, none of them among the target's
        samples, scored by the target model with the same options: quantile regression's fitting
        set (`QuantileRegressionAttack`).
    """

    target: Any
    references: list = field(default_factory=list)
    keep: Optional[np.ndarray] = None
    population_target: Any = None
    population_references: list = field(default_factory=list)
    nonmembers: Any = None

    def __post_init__(self) -> None:
        if "label" not in self.target:
            raise ValueError("target: expected a 'label' column (1 = member, 0 = non-member); score the corpus with "
                             "--label-field")
        self.ids = self.target["id"].astype(str).to_numpy()
        self.labels = np.asarray(self.target["label"], dtype=np.int64)
        self.references = [_align(t, self.ids, f"references[{k}]") for k, t in enumerate(self.references)]
        if self.keep is not None:
            self.keep = np.asarray(self.keep, dtype=bool)
            want = (len(self.references), len(self.ids))
            if self.keep.shape != want:
                raise ValueError(f"keep: expected shape {want} (reference models x target samples), got {self.keep.shape}")
        if (self.population_target is None) != (not self.population_references):
            raise ValueError("population_references: give the population's tables of the target and of every "
                             "reference model together")
        if self.population_references and len(self.population_references) != len(self.references):
            raise ValueError(f"population_references: expected {len(self.references)} tables (one per reference "
                             f"model), got {len(self.population_references)}")
        if self.population_target is not None:
            pid = self.population_target["id"].astype(str).to_numpy()
            self.population_references = [
                _align(t, pid, f"population_references[{k}]") for k, t in enumerate(self.population_references)
            ]
        if self.nonmembers is not None:
            _check_nonmembers(self.nonmembers, self.target)


def _check_nonmembers(nonmembers: Any, target: Any) -> None:
    """Known non-members must be non-members and none of the evaluated samples (else the fit sees them)."""
    n = int((np.asarray(nonmembers["label"]) == 1).sum()) if "label" in nonmembers else 0
    if n:
        raise ValueError(f"nonmembers: expected known non-members only, got {n} rows labelled 1 (member)")
    shared = np.intersect1d(nonmembers["id"].astype(str).to_numpy(), target["id"].astype(str).to_numpy())
    if shared.size:
        raise ValueError(f"nonmembers: {shared.size} ids are also among the target's samples (first: "
                         f"{list(shared[:3])}); the non-members a quantile is fitted on must not be evaluated")
    if "text_hash" in nonmembers and "text_hash" in target:
        same = np.intersect1d(nonmembers["text_hash"].astype(str).to_numpy(), target["text_hash"].astype(str).to_numpy())
        if same.size:
            raise ValueError(f"nonmembers: {same.size} texts are also among the target's samples (under other ids); "
                             "the non-members a quantile is fitted on must not be evaluated")


def _mean_reference(data: AuditData) -> Any:
    table = data.target[["id"]].copy()
    table["loss"] = np.mean([np.asarray(t["loss"], dtype=np.float64) for t in data.references], axis=0)
    return table


def _prefix_attacks(table: Any, scores: dict[str, np.ndarray], notes: dict[str, str]) -> None:
    """ReCaLL and continuation-loss attacks on the columns of ``mia-fast score --context-file / --prefix-tokens``."""
    columns = [str(c) for c in table.columns]
    if "recall" in columns:
        scores["recall"] = ReCaLLAttack().fit().score_samples(table)
        notes["recall"] = "ReCaLL: loss after the scoring run's fixed context / plain loss, larger = member"
    for setting in prefix_settings(columns):
        if setting == 0:  # the whole text: the LOSS attack
            continue
        name = loss_prefix_column(setting)
        prefix = f"{setting} tokens" if isinstance(setting, int) else f"{setting:g} of its tokens"
        empty = int(np.isnan(np.asarray(table[name], dtype=np.float64)).sum())
        if empty:
            notes[name] = f"not run: {empty} texts have no token after their first {prefix}"
            continue
        scores[name] = PrefixAttack(setting).fit().score_samples(table)
        notes[name] = f"LOSS on each text's tokens after its first {prefix}"
        if n_tokens_prefix_column(setting) in columns:
            notes[name] += f" (median {np.median(np.asarray(table[n_tokens_prefix_column(setting)])):g} tokens left)"


def _variant_attacks(table: Any, scores: dict[str, np.ndarray], notes: dict[str, str]) -> None:
    """The attacks on text-variant columns (`mia_fast.scoring.variants`) that the table carries."""
    columns = [str(c) for c in table.columns]
    if "loss_lowercase" in columns:
        scores["lowercase"] = LowercaseAttack().fit().score_samples(table)
        notes["lowercase"] = "-loss / loss of the lowercased text (Carlini et al. 2021)"
    if "loss_member_context" in columns and "loss_context" in columns:
        scores["con_recall"] = ConReCaLLAttack().fit().score_samples(table)
        notes["con_recall"] = ("Con-ReCaLL: (loss after non-member context - loss after member context) / loss, "
                               "gamma = 1")
    for name, attack, note, empty in (
        ("neighbourhood", NeighbourhoodAttack(), "mean loss of masked-LM neighbours - loss (Mattern et al. 2023)",
         "texts have no neighbour (no candidate substitution)"),
        ("pac", PACAttack(), "-(polarized distance - mean over word-swapped copies) (Ye et al. 2024)",
         "texts have no scored token"),
    ):
        col = "loss_neighbours" if name == "neighbourhood" else "pac"
        if col in columns:
            missing = int(np.isnan(np.asarray(table[col], dtype=np.float64)).sum())
            if missing:
                notes[name] = f"not run: {missing} {empty}"
                continue
            scores[name] = attack.fit().score_samples(table)
            notes[name] = note
    if "dc_pdd" in columns and not np.isnan(np.asarray(table["dc_pdd"], dtype=np.float64)).any():
        scores["dc_pdd"] = DCPDDAttack().fit().score_samples(table)
        notes["dc_pdd"] = "DC-PDD: token probability x log(1/frequency in the reference corpus), capped (Zhang et al. 2024)"
    for name, zlib in (("samia", False), ("samia_zlib", True)):
        if name in columns:
            missing = int(np.isnan(np.asarray(table[name], dtype=np.float64)).sum())
            if missing:
                notes[name] = f"not run: {missing} texts too short to split into a prefix and a suffix"
                continue
            scores[name] = SaMIAAttack(zlib=zlib).fit().score_samples(table)
            notes[name] = ("SaMIA: mean ROUGE-1 recall of sampled continuations against the true suffix"
                           + (" x zlib size of each candidate" if zlib else ""))


def _quantile_attack(data: AuditData, base: str, alpha: float, random_state: int, scores: dict[str, np.ndarray],
                     notes: dict[str, str]) -> None:
    """Quantile regression fitted on ``data.nonmembers``; its note states the false-positive rate it
    meets on the target's labelled non-members, against the ``alpha`` it was fitted for."""
    attack = QuantileRegressionAttack(base, alpha=alpha, random_state=random_state).fit(data.nonmembers)
    name = f"quantile_{base}"
    scores[name] = attack.score_samples(data.target)
    flagged = attack.predict(data.target).astype(bool)
    out = data.labels == 0
    notes[name] = (f"quantile regression (Bertran et al. 2023): {base} against its predicted {1 - alpha:g} quantile "
                   f"given {', '.join(attack.features_)}, fitted on {attack.n_nonmembers_} known non-members; "
                   f"flags {flagged[out].mean():.1%} of the target's non-members (alpha {alpha:g}) and "
                   f"{flagged[~out].mean():.1%} of its members")


def run_attacks(data: AuditData, *, statistic: str = "neg_loss", k: float = 0.2, random_state: int = 0,
                quantile_base: str = "loss", quantile_alpha: float = 0.05) -> tuple[dict, dict]:
    """Score the target's samples with every attack the inputs allow.

    Parameters
    ----------
    data : AuditData
    statistic : {'neg_loss', 'phi_mean'}
        The per-sequence statistic of LiRA and RMIA (larger = more member-like).
    k : float
        Fraction of Min-K% and Min-K%++ (its column must be in the tables).
    random_state : int
        Seed of the shadow classifier and of quantile regression.
    quantile_base, quantile_alpha : str, float
        Base score and false-positive rate of quantile regression (`QuantileRegressionAttack`),
        run as ``quantile_{base}`` when ``data.nonmembers`` is given.

    Returns
    -------
    scores : dict of str to ndarray (N,)
        Attack name -> scores, higher = more likely member. Tables scored with
        ``--context-file`` add ``recall`` (`ReCaLLAttack`), with ``--prefix-tokens`` one
        ``loss_prefix{k}`` (`PrefixAttack`) per non-zero setting whose texts all keep a token;
        with ``--temperatures``, ``temperature`` (`TemperatureAttack`); with ``--gradients``,
        ``grad_norm`` (`GradNormAttack`); with text variants, their attacks (``lowercase``,
        ``con_recall``, ...; `mia_fast.scoring.variants`).
    notes : dict of str to str
        Attack name -> what variant ran and why (e.g. LiRA's variance choice).
    """
    t = data.target
    scores: dict[str, np.ndarray] = {
        "loss": LossAttack().fit().score_samples(t),
        "zlib": ZlibAttack().fit().score_samples(t),
        f"min_k_{k:g}": MinK(k).fit().score_samples(t),
        f"min_k_pp_{k:g}": MinKPlusPlus(k).fit().score_samples(t),
    }
    notes: dict[str, str] = {}
    _prefix_attacks(t, scores, notes)
    _variant_attacks(t, scores, notes)
    if hasattr(t, "columns") and "grad_norm" in t.columns:  # scored with --gradients
        scores["grad_norm"] = GradNormAttack().fit().score_samples(t)
        notes["grad_norm"] = "-log of the per-text gradient norm (white-box)"
    temperature_columns = [c for c in t.columns if c.startswith("loss_t")] if hasattr(t, "columns") else []
    if temperature_columns:  # scored with --temperatures
        attack = TemperatureAttack().fit()
        scores["temperature"] = attack.score_samples(t)
        notes["temperature"] = (f"slope of the loss against log(tau) over tau = "
                                f"{', '.join(f'{x:g}' for x in attack.temperatures_)}")
    if data.nonmembers is not None:
        _quantile_attack(data, quantile_base, quantile_alpha, random_state, scores, notes)
    if data.references:
        ref = _mean_reference(data)
        scores["reference_loss_diff"] = ReferenceAttack("loss_diff").fit(ref).score_samples(t)
        scores["reference_logppl_ratio"] = ReferenceAttack("logppl_ratio").fit(ref).score_samples(t)
        notes["reference_loss_diff"] = notes["reference_logppl_ratio"] = (
            f"reference loss = mean over the {len(data.references)} reference models"
        )
    if data.references and data.keep is not None:
        K = len(data.references)
        shadow = ShadowClassifierAttack("logistic", random_state=random_state)
        scores["shadow_classifier"] = shadow.fit(data.references, list(data.keep)).score_samples(t)
        notes["shadow_classifier"] = f"logistic regression on {K} shadow models' statistics ({', '.join(shadow.features)})"
        ref_stats = np.stack([_statistic(r, statistic) for r in data.references])
        target_stats = _statistic(t, statistic)
        for name, mode, variance in (
            ("lira_online", "online", "auto"),
            ("lira_online_fixed_var", "online", "fixed"),
            ("lira_offline", "offline_cdf", "auto"),
            ("lira_offline_fixed_var", "offline_cdf", "fixed"),
        ):
            try:
                lira = LiRA(mode=mode, variance=variance).fit(ref_stats, data.keep)
            except ValueError as err:
                notes[name] = f"not run: {err}"
                continue
            scores[name] = lira.score_samples(target_stats)
            notes[name] = f"{mode}, variance={lira.variance_used_}, statistic={statistic}, {K} reference models"
            if lira.n_variance_fallback_:
                notes[name] += (f"; {lira.n_variance_fallback_} samples with a single IN or OUT model use the "
                                "pooled std")
        if data.population_target is not None:
            # Pr(x | model) = exp(-loss), the geometric-mean token probability, given as its log
            neg_loss = lambda tables: np.stack([-np.asarray(r["loss"], dtype=np.float64) for r in tables])  # noqa: E731
            pop = neg_loss([data.population_target])[0]
            # Online: p(x) over all reference models. Offline: over the OUT models with a = 1; the
            # linear a-correction (Zarifzadeh et al.) assumes classifier-like Pr(x|model) near 1 and,
            # with per-sequence LM probabilities near exp(-loss) ~ 0.01, turns RMIA into LOSS.
            for name, offline, a in (("rmia", False, 1.0), ("rmia_offline", True, 1.0)):
                try:
                    rmia = RMIA(offline=offline, a=a, log_input=True).fit(
                        neg_loss(data.references), data.keep, population_reference=neg_loss(data.population_references)
                    )
                except ValueError as err:
                    notes[name] = f"not run: {err}"
                    continue
                scores[name] = rmia.score_samples(neg_loss([t])[0], pop)
                notes[name] = (f"{'offline (OUT models, a = 1)' if offline else 'online (all reference models)'}, "
                               f"Pr(x|model) = exp(-loss), {len(pop)} population samples no model trained on")
    return scores, notes


def _percent(x: float) -> str:
    return f"{100 * x:g}%"


def format_table(metrics: dict[str, dict], fprs: Sequence[float] = (0.01, 0.001)) -> str:
    """A markdown table: attack x AUC [CI], TPR at each FPR bound, TPR@0, precision@50% recall."""
    head = ["attack", "AUC [95% CI]"] + [f"TPR@{_percent(f)}FPR" for f in fprs] + ["TPR@0FPR", "prec@50%rec"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics.items():
        ci = m.get("auc_ci")
        cells = [name, f"{m['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                 + (" ‡" if m.get("beats_blind_baseline") is False else "")]
        for f in fprs:
            below = f in m.get("fprs_below_floor", [])
            cells.append(f"{100 * m[f'tpr@{_percent(f)}fpr']:.1f}%" + (" †" if below else ""))
        cells += [f"{100 * m['tpr@0fpr']:.1f}%", f"{m['precision@50%recall']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Union[str, Path],
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    *,
    ids: Optional[Sequence[str]] = None,
    notes: Optional[dict[str, str]] = None,
    meta: Optional[dict[str, Any]] = None,
    title: str = "Membership inference audit",
    shift: Union[ShiftCheck, str, None] = None,
) -> dict[str, dict]:
    """Evaluate every attack and write ``metrics.json``, ``scores.parquet``, ``roc.png``, ``report.md``.

    ``shift`` is the evaluation set's `mia_fast.metrics.shift_check` (or why it did not run): it
    goes under ``metrics.json["shift_check"]`` and at the top of ``report.md``, and every attack
    gets ``beats_blind_baseline`` (marked ‡ in the table when its AUC does not exceed the blind
    baseline's interval).

    Returns
    -------
    dict
        Attack name -> `mia_fast.evaluate` metrics (what ``metrics.json`` holds under "attacks").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    fprs = (0.001, 0.01, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)  # the floor is stated in the report instead
        metrics = {name: evaluate(labels, s, fprs=fprs) for name, s in scores.items()}
    notes = notes or {}
    for name in metrics:
        if name in notes:
            metrics[name]["note"] = notes[name]
        if isinstance(shift, ShiftCheck):
            metrics[name]["beats_blind_baseline"] = beats_blind_baseline(metrics[name]["auc"], shift)
    floor = 1.0 / max(1, int((labels == 0).sum()))
    payload = {"attacks": metrics, "n_samples": int(labels.size), "n_members": int(labels.sum()),
               "fpr_floor": floor, **({"meta": meta} if meta else {})}
    if shift is not None:
        payload["shift_check"] = shift.to_dict() if isinstance(shift, ShiftCheck) else {"not_run": shift}
    _write_text(out / "metrics.json", json.dumps(payload, indent=2, sort_keys=False) + "\n")
    table = pd.DataFrame({"id": list(ids) if ids is not None else np.arange(labels.size).astype(str), "label": labels,
                          **{name: np.asarray(s, dtype=np.float64) for name, s in scores.items()}})
    tmp = atomic.temporary_path(out / "scores.parquet")
    table.to_parquet(tmp, index=False)
    atomic.commit(tmp, out / "scores.parquet")
    fig, ax = plt.subplots(figsize=(6, 5))
    colors = plt.get_cmap("tab20").colors
    for i, (name, s) in enumerate(scores.items()):  # 20 distinct colours, then dashed
        plot_roc(labels, s, ax=ax, label=name, color=colors[(2 * i) % 20 + (i // 10) % 2], ls="-" if i < 20 else "--")
    ax.set_title(f"{title}: log-log ROC (floor 1/{int(round(1 / floor))})", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    lines = [f"# {title}", "", *_shift_lines(shift), format_table(metrics), "",
             f"{labels.size} samples ({int(labels.sum())} members). Resolution floor: FPR = 1/{int(round(1 / floor))} = "
             f"{100 * floor:.2g}%; a TPR at a lower FPR bound (marked †) is the TPR at FPR = 0.", ""]
    if notes:
        lines += ["## Variants", ""] + [f"- `{name}`: {text}" for name, text in notes.items()] + [""]
    _write_text(out / "report.md", "\n".join(lines))
    return metrics


def _shift_lines(shift: Union[ShiftCheck, str, None]) -> list[str]:
    """The report's opening section on the evaluation set itself."""
    if shift is None:
        return []
    if not isinstance(shift, ShiftCheck):
        return [f"**Shift check**: not run ({shift}).", ""]
    lines = [f"**Shift check** ({shift.method}): {shift.summary()}."]
    if shift.confounded:
        member = ", ".join(f"`{g}`" for g, _ in shift.member_ngrams[:8])
        nonmember = ", ".join(f"`{g}`" for g, _ in shift.nonmember_ngrams[:8])
        lines += ["", f"What tells the sets apart: members {member}; non-members {nonmember}. An attack's AUC on "
                  "this set mixes membership with this shift; build the set from one distribution (e.g. a random "
                  "split of one source)."]
    lines += ["", f"‡: the attack's AUC does not exceed the blind baseline's interval (upper end "
              f"{shift.auc_ci[1]:.3f}).", ""]
    return lines


def _write_text(path: Path, text: str) -> None:
    atomic.write_bytes(path, text.encode("utf-8"))


def save_keep(path: Union[str, Path], keep: np.ndarray, ids: Sequence[str]) -> None:
    """Save a keep matrix (reference model x sample) with the sample ids it refers to (``.npz``)."""
    keep = np.asarray(keep, dtype=bool)
    if keep.ndim != 2 or keep.shape[1] != len(ids):
        raise ValueError(f"keep: expected shape (K, {len(ids)}) for {len(ids)} ids, got {keep.shape}")
    np.savez(path, keep=keep, ids=np.asarray([str(i) for i in ids]))


def load_keep(path: Union[str, Path], ids: Sequence[str]) -> np.ndarray:
    """Load a keep matrix saved by `save_keep`, reordered to ``ids`` (every id must be present).

    Raises FileNotFoundError or ValueError naming the file and what it lacks: the arrays ``keep``
    (K, N) of booleans (or 0/1) and ``ids`` (N,) of distinct ids.
    """
    expected = "a .npz archive saved by save_keep, with 'keep' (K, N) booleans and 'ids' (N,) distinct ids"
    if not Path(path).is_file():
        raise FileNotFoundError(f"keep: expected {expected}; {str(path)!r} was not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"keep: expected {expected}; {str(path)!r} cannot be read ({err})") from None
    if "keep" not in arrays or "ids" not in arrays:
        raise ValueError(f"keep: expected {expected}; {str(path)!r} holds {sorted(arrays) or 'no arrays'}")
    keep, saved = arrays["keep"], arrays["ids"].astype(str)
    if keep.ndim != 2 or saved.ndim != 1 or keep.shape[1] != len(saved):
        raise ValueError(f"keep: expected {expected}; {str(path)!r} has keep {keep.shape} and ids {saved.shape}")
    if keep.dtype != bool:
        if not np.isin(keep, (0, 1)).all():
            raise ValueError(f"keep: expected {expected}; {str(path)!r} has keep values other than 0 and 1")
        keep = keep.astype(bool)
    if len(set(saved)) != len(saved):
        raise ValueError(f"keep: expected {expected}; {str(path)!r} repeats ids")
    position = {s: i for i, s in enumerate(saved)}
    missing = [i for i in ids if str(i) not in position]
    if missing:
        raise ValueError(f"keep: {path} has no column for {len(missing)} of the target's ids (first: {missing[:5]})")
    return keep[:, [position[str(i)] for i in ids]]
