"""The ``mia-fast`` command line (also ``python -m mia_fast``)."""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ._version import __version__

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import collect_info, format_info

    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _bench_script() -> Optional[Path]:
    """benchmarks/bench_token_stats.py of a checkout, else the copy an installed package carries."""
    here = Path(__file__).resolve().parent
    for script in (here.parent / "benchmarks" / "bench_token_stats.py", here / "_bench" / "bench_token_stats.py"):
        if script.is_file():
            return script
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    script = _bench_script()
    if script is None:
        print("mia-fast bench: bench_token_stats.py is neither in the checkout (benchmarks/) nor in the "
              "installed package (mia_fast/_bench/); reinstall mia_fast", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [str(script), *args.bench_args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:  # the script ends with sys.exit(status)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


_FORMATS = ("auto", "jsonl", "csv", "tsv", "parquet", "text", "hf_dataset")
_DTYPES = ("fp32", "bf16", "fp16")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _progress_bar(job, enabled: bool, out_dir: Path):
    """A tqdm bar over input records (with a total when the input is small enough to count),
    starting at the records of the shards that a resumed run finds done in ``out_dir``."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    from .scoring.run import _completed_shards

    total = None
    path = Path(job.input)
    if path.is_file() and path.stat().st_size <= 256 << 20:
        total = sum(1 for _ in job.records("skip"))
    done = _completed_shards(out_dir) * job.shard_size
    bar = tqdm(total=total, initial=min(done, total) if total is not None else done, unit="rec",
               dynamic_ncols=True, file=sys.stderr)
    tokens = [0]

    def update(records: int, new_tokens: int) -> None:
        tokens[0] += new_tokens
        bar.update(records)
        elapsed = bar.format_dict["elapsed"] or 1e-9
        bar.set_postfix_str(f"{tokens[0] / elapsed:,.0f} tok/s")

    return bar, update


NEIGHBOURS_DEFAULT = 100  # `mia_fast.scoring.neighbours.Neighbours`' default


def _variant_specs(args: argparse.Namespace) -> tuple:
    """The text-variant families the score command's flags ask for (`mia_fast.scoring.variants`)."""
    from .scoring.augment import PAC
    from .scoring.frequency import DCPDD
    from .scoring.neighbours import Neighbours
    from .scoring.prefix import read_context_file
    from .scoring.samia import SaMIA
    from .scoring.variants import Lowercase, MemberContext

    def spec(flags: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except ValueError as err:  # the option's field name, with the flags that set it
            raise ValueError(f"{flags}: {err}") from None

    for flag, value in (("--pac", args.pac), ("--samia-samples", args.samia_samples)):
        if value < 0:
            raise ValueError(f"{flag}: expected a number >= 0 (0: off), got {value}")
    specs: list = []
    if args.lowercase:
        specs.append(Lowercase())
    if args.neighbour_model is not None:
        specs.append(spec("--neighbours/--neighbour-*", lambda: Neighbours(
            masked_lm=args.neighbour_model, n_neighbours=args.neighbours, rule=args.neighbour_rule,
            top_k=args.neighbour_top_k, seed=args.variant_seed)))
    elif args.neighbours != NEIGHBOURS_DEFAULT:
        raise ValueError("--neighbours: given without --neighbour-model (the masked LM that proposes them)")
    if args.pac:
        specs.append(spec("--pac/--pac-swap-fraction", lambda: PAC(
            n_augmentations=args.pac, swap_fraction=args.pac_swap_fraction, seed=args.variant_seed)))
    if args.frequency_corpus is not None:
        specs.append(spec("--frequency-corpus/--dc-pdd-a", lambda: DCPDD(
            args.frequency_corpus, a=args.dc_pdd_a, text_field=args.frequency_text_field)))
    if args.samia_samples:
        specs.append(spec("--samia-*", lambda: SaMIA(
            n_samples=args.samia_samples, prefix_fraction=args.samia_prefix_fraction,
            max_new_tokens=args.samia_max_new_tokens, temperature=args.samia_temperature,
            top_k=args.samia_top_k, seed=args.variant_seed)))
    if args.member_context_tokens is not None and args.member_context_file is None:
        raise ValueError("--member-context-tokens: given without --member-context-file")
    if args.member_context_file is not None:
        if args.context_file is None:
            raise ValueError("--member-context-file: Con-ReCaLL contrasts it with a non-member context; "
                             "give --context-file too")
        text = read_context_file(args.member_context_file, "--member-context-file")
        specs.append(spec("--member-context-tokens", lambda: MemberContext(text, args.member_context_tokens)))
    return tuple(specs)


def dtype_note(dtype: str, device: str) -> Optional[str]:
    """One line about ``--dtype`` on this CPU: the faster bf16 setting and what it may cost where fp32
    leaves matrix units unused, that cost where bf16 was chosen, a warning where bf16 would be
    emulated; None otherwise (and off the CPU)."""
    from .cpu_units import matrix_units

    if not str(device).startswith("cpu"):
        return None
    units = matrix_units()
    cost = ("rounding the weights to bf16 can erase part of a fine-tune's signal (on a full fine-tune of "
            "SmolLM2-135M it cut the AUC of LOSS, zlib, Min-K% and Min-K%++ by 0.010-0.014)")
    if dtype == "fp32" and units.bf16:
        return (f"note: this CPU has bf16 matrix units torch uses ({units.summary()}): --dtype bf16 scored 2.5-3.2x "
                f"faster than fp32 on such a CPU, but {cost}. fp32 stays the default so that an audit's numbers "
                "do not depend on the machine; --compare-dtype bf16 measures the difference on a sample of this "
                "corpus.")
    if dtype == "bf16" and units.bf16:
        return f"note: --dtype bf16: {cost}; --compare-dtype fp32 measures the difference on a sample of this corpus"
    if dtype == "bf16":
        return (f"warning: --dtype bf16: this CPU has no bf16 matrix units torch uses ({units.summary()}), so "
                "bf16 is emulated and slower than fp32 here")
    return None


def _cmd_score(args: argparse.Namespace) -> int:
    from .scoring.corpus import BadRecordError
    from .scoring.lock import DirectoryBusyError
    from .scoring.prefix import read_context_file
    from .scoring.run import ScoreJob, score_to_directory
    from .scoring.scorer import ScoreOptions

    _quiet_transformers()
    try:
        options = ScoreOptions(max_length=args.max_length, stride=args.stride, batch_tokens=args.batch_tokens,
                               first_token=args.first_token, ks=args.ks, sigma_floor=args.sigma_floor,
                               per_token=args.per_token,
                               prefix_tokens=args.prefix_tokens, context_tokens=args.context_tokens,
                               context_text=read_context_file(args.context_file) if args.context_file else None,
                               gradient_params=_gradient_params(args), temperatures=args.temperatures,
                               variants=_variant_specs(args))
        job = ScoreJob(model=args.model, input=args.input, gguf_file=args.gguf_file, dtype=args.dtype,
                       head=args.head, input_format=args.format, text_field=args.text_field,
                       id_field=args.id_field, label_field=args.label_field, text_unit=args.text_unit,
                       shard_size=args.shard_size, options=options, max_record_chars=args.max_record_chars or None)
        if args.compare_dtype is not None:
            return _compare_dtypes(args, job)
        if args.engine == "ray":
            return _score_on_ray(args, options)
        bar, update = _progress_bar(job, args.progress if args.progress is not None else sys.stderr.isatty(),
                                    Path(args.out))
        try:
            summary = score_to_directory(job, args.out, device=args.device, trust_remote_code=args.trust_remote_code,
                                         on_bad_row=args.on_bad_row, progress=update)
        finally:
            if bar is not None:
                bar.close()
    except KeyboardInterrupt:
        print(f"mia-fast score: interrupted; completed shards are kept in {args.out}. "
              "Rerun the same command to resume.", file=sys.stderr)
        return 130
    except (BadRecordError, ValueError, TypeError, ImportError, DirectoryBusyError, FileNotFoundError,
            NotADirectoryError, PermissionError) as err:
        print(f"mia-fast score: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file not found, not writable, a full disk: completed shards are kept
        print(f"mia-fast score: error: {_os_error(err)}; completed shards are kept in {args.out}", file=sys.stderr)
        return 2
    if summary["rows"] == 0:
        print(f"mia-fast score: error: no row was scored ({summary['rejects']} records rejected, see "
              f"{Path(args.out) / 'rejects'})", file=sys.stderr)
        return 1
    rate = summary["tokens_per_s_this_run"]
    print(f"scored {summary['rows']} rows, {summary['tokens']} tokens ({summary['rejects']} rejected) -> {args.out}"
          f"; this run: {summary['tokens_this_run']} tokens in {summary['seconds_this_run']:.1f} s"
          f" (+{summary['load_seconds']:.1f} s loading the model)"
          + (f", {rate:,.0f} tokens/s" if rate else "") + f", head: {summary['head']}")
    note = dtype_note(args.dtype, args.device)  # after the run: a failed run prints its error alone
    if note:
        print(note, file=sys.stderr)
    return 0


def _compare_dtypes(args: argparse.Namespace, job) -> int:
    """``score --compare-dtype``: the sample scored both ways; the report printed and written to --out."""
    from .audit.dtype_fidelity import compare_dtypes

    if args.engine == "ray":
        raise ValueError("--compare-dtype: runs on this machine; expected --engine local, got 'ray'")
    report = compare_dtypes(job, args.compare_dtype, sample=args.compare_sample, device=args.device,
                            trust_remote_code=args.trust_remote_code)
    md, js = report.write(Path(args.out))
    print(report.to_markdown() + f"\nwritten: {md}, {js}")
    return 0


def _os_error(err: OSError) -> str:
    """An OSError as one line naming the file: 'path: reason'."""
    if err.filename is None or err.strerror is None:
        return str(err)
    return f"{err.filename}: {err.strerror}"


def _gradient_params(args: argparse.Namespace) -> Optional[str]:
    """The parameter selection of the grad_norm column (None without --gradients)."""
    if not args.gradients:
        if args.gradient_params is not None:
            raise ValueError(f"--gradient-params {args.gradient_params!r}: given without --gradients")
        return None
    return args.gradient_params or "all"


def _score_on_ray(args: argparse.Namespace, options) -> int:
    from .scoring.distributed import require_ray, score_dataset

    ray = require_ray()
    ray.init(address=args.ray_address, include_dashboard=False, ignore_reinit_error=True)
    summary = score_dataset(args.input, args.model, args.out, text_field=args.text_field, id_field=args.id_field,
                            label_field=args.label_field, options=options, num_workers=args.num_workers,
                            num_gpus_per_worker=1 if args.device.startswith("cuda") else 0,
                            block_records=args.shard_size, dtype=args.dtype, head=args.head,
                            input_format=args.format, text_unit=args.text_unit, gguf_file=args.gguf_file,
                            max_record_chars=args.max_record_chars or None,
                            trust_remote_code=args.trust_remote_code)
    print(f"scored {summary['rows']} rows, {summary['tokens']} tokens -> {args.out}; this run: "
          f"{summary['tokens_this_run']} tokens in {summary['seconds_this_run']:.1f} s with "
          f"{args.num_workers} Ray workers, head: {summary['head']}")
    return 0


def _add_score_parser(sub) -> None:
    from .aggregate import DEFAULT_KS, SIGMA_FLOOR
    from .scoring.corpus import MAX_RECORD_CHARS

    p = sub.add_parser("score", help="score a corpus with a causal LM into a resumable score directory",
                       description="Per-sequence (and per-token) membership statistics of a corpus under a causal "
                       "LM, written as Parquet shards; rerunning the same command resumes an interrupted run.")
    p.add_argument("--model", required=True, help="local model directory (safetensors) or .gguf file")
    p.add_argument("--input", required=True, help="corpus: JSONL, CSV/TSV, Parquet, text, or a saved HF dataset")
    p.add_argument("--out", required=True, help="score directory (created; resumed when it exists)")
    p.add_argument("--gguf-file", help="GGUF file name inside the --model directory")
    p.add_argument("--dtype", default="fp32", choices=_DTYPES, help="dtype the model runs in")
    p.add_argument("--compare-dtype", choices=_DTYPES,
                   help="instead of scoring the corpus, score a random sample of it with --dtype and with this dtype "
                   "and report the per-document differences and each attack's AUC under both (with --label-field); "
                   "the report goes to --out as dtype-comparison.md and .json")
    p.add_argument("--compare-sample", type=int, default=200, help="documents in the --compare-dtype sample")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the checkpoint")
    p.add_argument("--head", default="auto", choices=["auto", "fused", "logits"],
                   help="fused: hidden states + unembedding, no logits (auto: unless the head needs the logits)")
    p.add_argument("--format", default="auto", choices=_FORMATS,
                   help="input format (auto: from the file name)")
    p.add_argument("--text-field", default="text", help="field (column) holding each record's text")
    p.add_argument("--id-field", help="field holding each record's id (default: the record's number)")
    p.add_argument("--label-field", help="membership ground truth (1 = member, 0 = non-member)")
    p.add_argument("--text-unit", default="line", choices=["line", "paragraph"], help="documents of a text file")
    p.add_argument("--max-record-chars", type=int, default=MAX_RECORD_CHARS,
                   help="longest record text in characters; a longer record is a bad row (an error, or a reject "
                   "with --on-bad-row=skip). Memory to score a record grows with its length; 0: no limit")
    p.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward batch")
    p.add_argument("--max-length", type=int, help="tokens per model input (default: the model's context)")
    p.add_argument("--stride", type=int, help="sliding-window stride for longer texts (default: max-length / 2)")
    p.add_argument("--first-token", default="auto", choices=["auto", "bos", "skip"],
                   help="bos: prepend BOS so every token is scored; skip: the first token is not scored; auto: "
                   "what tokenizer(text) does (bos only where the tokenizer adds a BOS itself)")
    p.add_argument("--ks", type=_floats, default=DEFAULT_KS, help="Min-K%% fractions, e.g. 0.05,0.1,0.2")
    p.add_argument("--sigma-floor", type=float, default=SIGMA_FLOOR,
                   help="Min-K%%++: sigma is clipped below at this value (the clipped tokens are counted in "
                   "n_sigma_clipped)")
    p.add_argument("--per-token", action="store_true", help="also write the per-token table")
    p.add_argument("--temperatures", type=_floats, default=(), metavar="TAU,...",
                   help="also compute the statistics of softmax(z / tau) at these temperatures in the same pass "
                        "(columns loss_t<tau>, entropy_t<tau>; e.g. 0.5,2), for the temperature attack")
    p.add_argument("--prefix-tokens", type=_floats, default=(), metavar="K,...",
                   help="own-prefix settings, e.g. 0,16,32 (token counts) or 0.25,0.5 (fractions of each text's "
                   "tokens): columns loss_prefixK and n_tokens_prefixK of the text's tokens after its first K "
                   "(same forward pass)")
    p.add_argument("--context-file", metavar="FILE",
                   help="text file with a fixed context (e.g. known non-member paragraphs): each text is scored "
                   "again after it, columns loss_context and recall = loss_context / loss (ReCaLL)")
    p.add_argument("--context-tokens", type=int, metavar="N",
                   help="keep only the last N tokens of the --context-file (default: all)")
    v = p.add_argument_group("text variants", "derived inputs scored in the same batches as the texts, "
                             "reduced into columns per text (one model load, one resumable directory)")
    v.add_argument("--lowercase", action="store_true",
                   help="also score each text lowercased: column loss_lowercase (lowercase attack)")
    v.add_argument("--member-context-file", metavar="FILE",
                   help="text file with known member paragraphs: each text is scored again after it, column "
                   "loss_member_context; with --context-file, the Con-ReCaLL attack")
    v.add_argument("--member-context-tokens", type=int, metavar="N",
                   help="keep only the last N tokens of the --member-context-file (default: all)")
    v.add_argument("--neighbour-model", metavar="DIR",
                   help="local Hugging Face masked LM (e.g. a BERT) proposing one-word substitutions: each text's "
                   "neighbours are scored too, columns loss_neighbours, n_neighbours (neighbourhood attack)")
    v.add_argument("--neighbours", type=int, default=NEIGHBOURS_DEFAULT, metavar="N",
                   help=f"neighbours per text (default {NEIGHBOURS_DEFAULT}); each costs a forward pass of the text")
    v.add_argument("--neighbour-rule", default="dropout", choices=["dropout", "mask"],
                   help="dropout: dropout on the replaced token's embedding (the paper); mask: the mask token")
    v.add_argument("--neighbour-top-k", type=int, default=5, metavar="K",
                   help="replacements kept per position, ranked over all positions")
    v.add_argument("--pac", type=int, default=0, metavar="N",
                   help="PAC: score N word-swapped copies of each text too, column pac (5 in the paper); 0: off")
    v.add_argument("--pac-swap-fraction", type=float, default=0.3, metavar="A",
                   help="PAC: each copy makes max(1, floor(A x words)) swaps of two words")
    v.add_argument("--frequency-corpus", metavar="FILE",
                   help="reference corpus (any input format) whose token frequencies, counted with the target's "
                   "tokenizer and cached, calibrate DC-PDD: column dc_pdd (no extra forward pass)")
    v.add_argument("--frequency-text-field", default="text", help="text field of --frequency-corpus")
    v.add_argument("--dc-pdd-a", type=float, default=0.01, metavar="A", help="DC-PDD: upper bound of a token's score")
    v.add_argument("--variant-seed", type=int, default=0,
                   help="seed of generated variants (neighbours, PAC copies, SaMIA samples); each text draws "
                   "from sha256(seed, text), so results do not depend on shards or batches")
    v.add_argument("--samia-samples", type=int, default=0, metavar="N",
                   help="SaMIA: sample N continuations of the first half of each text's words and compare them "
                   "with the true second half (columns samia, samia_zlib; 10 in the paper). Generation costs "
                   "about N x the suffix's length in decoding steps per text; 0: off")
    v.add_argument("--samia-prefix-fraction", type=float, default=0.5, metavar="F",
                   help="SaMIA: fraction of each text's words given as the prompt")
    v.add_argument("--samia-max-new-tokens", type=int, metavar="N",
                   help="SaMIA: tokens generated per candidate (default: each text's suffix length)")
    v.add_argument("--samia-temperature", type=float, default=1.0, metavar="T", help="SaMIA: sampling temperature")
    v.add_argument("--samia-top-k", type=int, default=50, metavar="K", help="SaMIA: sample among the top K tokens")
    p.add_argument("--gradients", action="store_true",
                   help="also the column grad_norm: the gradient norm of each text's loss (its first window), "
                   "for the gradient-norm attack; costs a backward pass per text")
    p.add_argument("--gradient-params", metavar="SPEC",
                   help="parameters of grad_norm: all (default), head, last, or comma-separated globs over "
                   "parameter names, e.g. 'lm_head.*,transformer.h.11.*'")
    p.add_argument("--shard-size", type=int, default=1000, help="input records per output shard")
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"],
                   help="error: stop at the first bad record, naming file and line; skip: write it to rejects/")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: score with a pool of Ray actors (pip install 'mia_fast[ray]')")
    p.add_argument("--ray-address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray actors, each holding one model (--engine ray)")
    p.set_defaults(func=_cmd_score)


def _quiet_transformers() -> None:
    """No per-file progress bars or advice from transformers inside our own output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _cmd_demo(args: argparse.Namespace) -> int:
    from .audit.demo import run_demo
    from .audit.report import format_table

    _quiet_transformers()
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    print(f"mia-fast demo{' --quick' if args.quick else ''}: a membership-inference audit of a GPT-2 model "
          f"trained here on Python's own documentation (no download, no GPU) -> {args.out}", flush=True)
    result = run_demo(args.out, quick=args.quick, n_reference=args.reference_models, seed=args.seed,
                      progress=progress, on_step=lambda msg: print(msg, flush=True))
    metrics = result["metrics"]
    floor = next(iter(metrics.values()))["fpr_floor"]
    print()
    print(format_table(metrics))
    print(f"\n† below the resolution floor: with {round(1 / floor)} non-members the smallest measurable FPR is "
          f"{100 * floor:.2g}%, so TPR at 0.1% FPR is the TPR at FPR = 0.")
    secs = result["seconds"]
    print(f"time: train {secs['train']:.0f} s, score {secs['score']:.0f} s, attacks {secs['attack']:.0f} s, "
          f"total {secs['total']:.0f} s")
    print(f"report: {Path(args.out) / 'report.md'}, ROC plot: {Path(args.out) / 'roc.png'}, "
          f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def _read_table(path: str, allow_incomplete: bool = False):
    import pandas as pd

    from .scoring.run import read_scores

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such score directory or .parquet table")
    if p.is_dir():
        return read_scores(p, allow_incomplete=allow_incomplete)
    if p.suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    raise FileNotFoundError(f"expected a score directory or a .parquet table, got {path!r}")


def _read_aligned(first: str, others: Sequence[str], allow_incomplete: bool) -> tuple[Any, list[Any]]:
    """The first table and the others, each checked to hold the first's texts with its tokenization."""
    from .scoring.run import check_same_corpus

    table = _read_table(first, allow_incomplete)
    rest = [_read_table(p, allow_incomplete) for p in others]
    for path, other in zip(others, rest):
        check_same_corpus(table, other, names=(first, path))
    return table, rest


def _quantile_nonmembers(args: argparse.Namespace, target: Any) -> Any:
    """The ``--quantile-nonmembers`` table, checked to be scored like the target (None without it)."""
    from .attacks import QuantileRegressionAttack
    from .scoring.run import check_same_model

    if args.quantile_nonmembers is None:
        if args.quantile_base is not None or args.quantile_alpha is not None:
            raise ValueError("--quantile-base / --quantile-alpha: given without --quantile-nonmembers")
        return None
    args.quantile_base = "loss" if args.quantile_base is None else args.quantile_base
    args.quantile_alpha = 0.05 if args.quantile_alpha is None else args.quantile_alpha
    probe = QuantileRegressionAttack(args.quantile_base, alpha=args.quantile_alpha)
    for check, flag in ((probe._check_base, "--quantile-base"), (probe._check_alpha, "--quantile-alpha")):
        try:
            check()
        except ValueError as err:
            raise ValueError(f"{flag}: {str(err).split(': ', 1)[1]}") from None
    nonmembers = _read_table(args.quantile_nonmembers, args.allow_incomplete)
    check_same_model(target, nonmembers, names=(args.target, args.quantile_nonmembers))
    return nonmembers


def _cmd_attack(args: argparse.Namespace) -> int:
    from .audit.report import AuditData, format_table, load_keep, run_attacks, write_report

    try:
        target, references = _read_aligned(args.target, args.reference, args.allow_incomplete)
        keep = None
        if args.keep:
            keep = load_keep(args.keep, target["id"].astype(str).tolist())
        population_target, population_references = None, [_read_table(p) for p in args.population_reference]
        if args.population_target:  # (references without it are refused by AuditData)
            population_target, population_references = _read_aligned(
                args.population_target, args.population_reference, args.allow_incomplete)
        nonmembers = _quantile_nonmembers(args, target)
        data = AuditData(target=target, references=references, keep=keep, population_target=population_target,
                         population_references=population_references, nonmembers=nonmembers)
        scores, notes = run_attacks(data, statistic=args.statistic, k=args.k, random_state=args.seed,
                                    **({"quantile_base": args.quantile_base, "quantile_alpha": args.quantile_alpha}
                                       if nonmembers is not None else {}))
        shift = _target_shift_check(target, args.seed) if args.shift_check else "--no-shift-check"
        metrics = write_report(args.out, data.labels, scores, ids=data.ids, notes=notes, shift=shift,
                               meta={"target": args.target, "references": args.reference, "keep": args.keep,
                                     "quantile_nonmembers": args.quantile_nonmembers})
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"mia-fast attack: error: {err}", file=sys.stderr)
        return 2
    if isinstance(shift, str):
        print(f"shift check: not run ({shift})")
    else:
        print(f"shift check: {shift.summary()}")
    print(format_table(metrics))
    print(f"report: {Path(args.out) / 'report.md'}, ROC plot: {Path(args.out) / 'roc.png'}")
    return 0


def _add_attack_parsers(sub) -> None:
    demo = sub.add_parser("demo", help="the end-to-end audit on an embedded default (no download, no GPU)",
                          description="Trains a target GPT-2 and K reference models on random halves of Python's "
                          "own documentation paragraphs, scores them through the fused kernels, runs every attack "
                          "and writes the report (metrics.json, report.md, roc.png).")
    demo.add_argument("--quick", action="store_true", help="smaller models and pool: about a minute")
    demo.add_argument("--out", default="mia_fast_demo", help="output directory (default: ./mia_fast_demo)")
    demo.add_argument("--reference-models", type=int, help="K reference models (default 8, quick 4)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the splits, the training and the attacks")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bar over the models trained (default: when stderr is a terminal; "
                      "otherwise one line per model)")
    demo.set_defaults(func=_cmd_demo)

    p = sub.add_parser("attack", help="run the attacks on score directories and write the report",
                       description="Reads the target's scores (with a label column), optional reference models' "
                       "scores on the same samples with their keep matrix, and an optional population; writes "
                       "metrics.json, scores.parquet, roc.png and report.md.")
    p.add_argument("--target", required=True, help="score directory (or .parquet table) of the target model")
    p.add_argument("--reference", nargs="*", default=[], help="score directories of reference/shadow models")
    p.add_argument("--keep", help=".npz keep matrix (reference model x sample, with ids) of the reference models")
    p.add_argument("--population-target", help="target's scores of a population no model trained on (RMIA)")
    p.add_argument("--population-reference", nargs="*", default=[], help="each reference model's population scores")
    p.add_argument("--quantile-nonmembers", metavar="SCORES",
                   help="score directory (or .parquet) of texts known not to be in the target's training data, none "
                   "of them evaluated, scored by the target model with the same options: runs quantile regression")
    p.add_argument("--quantile-base",
                   help="base score of quantile regression: a column (loss, zlib, min_k_0.2, min_k_pp_0.2, dc_pdd, "
                   "...; default loss, taken as -loss)")
    p.add_argument("--quantile-alpha", type=float,
                   help="false-positive rate quantile regression is fitted for (default 0.05)")
    p.add_argument("--statistic", default="neg_loss", choices=["neg_loss", "phi_mean"], help="LiRA's statistic")
    p.add_argument("--k", type=float, default=0.2, help="Min-K%% fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random choices")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--shift-check", action=argparse.BooleanOptionalAction, default=True,
                   help="run the blind baseline on the target's texts (read again from its corpus file)")
    _add_allow_incomplete(p)
    p.set_defaults(func=_cmd_attack)


def _add_allow_incomplete(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-incomplete", action="store_true",
                   help="read the complete shards of score directories whose run has not completed (with a "
                   "warning) instead of refusing them")


def _target_shift_check(target: Any, seed: int) -> Any:
    """The shift check of a labelled target score table, its texts read again from its corpus file;
    a string saying why when it cannot run."""
    from .metrics import shift_check
    from .scoring.run import read_texts, text_hash

    if "label" not in target.columns:
        return "the target has no label column"
    manifest = target.attrs.get("manifest")
    if manifest is None:
        return "a plain table names no corpus file to read the texts from"
    texts = read_texts(manifest, set(target["row"].tolist()))
    missing = [r for r in target["row"] if r not in texts]
    if missing:
        where = manifest["identity"]["input"].get("path")
        return f"the texts of {len(missing)} rows could not be read again from {where}"
    ordered = [texts[r] for r in target["row"]]
    if "text_hash" in target.columns and [text_hash(t) for t in ordered] != list(target["text_hash"]):
        return "the corpus file's texts differ from those scored"
    try:
        return shift_check(ordered, target["label"].to_numpy(), random_state=seed)
    except ValueError as err:
        return str(err)


def _cmd_shift_check(args: argparse.Namespace) -> int:
    from .metrics import shift_check
    from .scoring.corpus import BadRecordError, Record, iter_records

    try:
        texts, labels = [], []
        for item in iter_records(args.input, format=args.format, text_field=args.text_field,
                                 label_field=args.label_field, text_unit=args.text_unit, on_bad_row="error"):
            if isinstance(item, Record):
                texts.append(item.text)
                labels.append(item.label)
        check = shift_check(texts, labels, margin=args.margin, random_state=args.seed)
    except (BadRecordError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"mia-fast shift-check: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .atomic import write_bytes

    write_bytes(out / "shift.json", (json.dumps(check.to_dict(), indent=2) + "\n").encode())
    print(check.summary())
    print(f"component AUCs: {', '.join(f'{k} {v:.3f}' for k, v in check.component_auc.items())}")
    print(f"members lean on: {', '.join(g for g, _ in check.member_ngrams[:10])}")
    print(f"non-members lean on: {', '.join(g for g, _ in check.nonmember_ngrams[:10])}")
    print(f"-> {out / 'shift.json'}")
    return 0


def _add_shift_parser(sub) -> None:
    from .metrics import DEFAULT_SHIFT_MARGIN

    p = sub.add_parser("shift-check", help="can members be told from non-members without the model? (blind baseline)",
                       description="Before any model runs: fits model-free classifiers (word and character n-gram "
                       "TF-IDF, simple text features; logistic regression, out of fold) on the texts and their "
                       "member/non-member labels, and reports their AUC with a bootstrap interval. A set whose "
                       "interval lies above 0.5 + margin is flagged confounded: its members and non-members differ "
                       "in distribution, and an attack's AUC on it measures that shift too. Writes OUT/shift.json "
                       "with the n-grams that give the shift away.")
    p.add_argument("--input", required=True, help="the evaluation set (JSONL, CSV/TSV, Parquet, ...)")
    p.add_argument("--format", default="auto", choices=_FORMATS,
                   help="input format (auto: from the file name)")
    p.add_argument("--text-field", default="text", help="field holding each record's text")
    p.add_argument("--label-field", required=True, help="membership label (1 = member, 0 = non-member)")
    p.add_argument("--text-unit", default="line", choices=["line", "paragraph"], help="documents of a text file")
    p.add_argument("--margin", type=float, default=DEFAULT_SHIFT_MARGIN,
                   help="flag when the AUC interval's lower end exceeds 0.5 + margin")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap")
    p.add_argument("--out", required=True, help="output directory (shift.json)")
    p.set_defaults(func=_cmd_shift_check)


def _read_directories(first: str, others: Sequence[str], allow_incomplete: bool) -> tuple[Any, list[Any]]:
    """Score directories only (no plain tables: their manifests are what is compared)."""
    for path in (first, *others):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"expected a score directory written by mia-fast score, got {path!r}")
    return _read_aligned(first, others, allow_incomplete)


def _cmd_decide(args: argparse.Namespace) -> int:
    from .answers import decide_table, write_decisions
    from .scoring.run import check_same_corpus

    try:
        target, references = _read_directories(args.target, args.reference, args.allow_incomplete)
        if args.calibration is not None:
            calibration, cal_references = _read_directories(args.calibration, args.calibration_reference,
                                                            args.allow_incomplete)
            if len(cal_references) != len(references):
                raise ValueError(f"--calibration-reference: expected one per --reference ({len(references)}), "
                                 f"got {len(cal_references)}")
            from .scoring.run import read_manifest

            _same_model(read_manifest(args.target), read_manifest(args.calibration), "--calibration")
            import pandas as pd

            for ref, cal_ref in zip(references, cal_references):
                check_same_corpus(calibration, cal_ref)
            references = [pd.concat([r, c], ignore_index=True) for r, c in zip(references, cal_references)]
        elif args.calibration_ids is not None:
            calibration = _read_ids(args.calibration_ids, "--calibration-ids")
        else:
            calibration = args.calibration_label
        with warnings.catch_warnings(record=True) as caught:  # said once each, as one line
            warnings.simplefilter("always")
            decisions = decide_table(target, args.attack, calibration, references=references or None,
                                     alpha=args.alpha, fdr=args.fdr)
        for warning in caught:
            print(f"mia-fast decide: warning: {warning.message}", file=sys.stderr)
        saved = write_decisions(decisions, args.out)
    except (ValueError, FileNotFoundError, TypeError, KeyError) as err:
        print(f"mia-fast decide: error: {err}", file=sys.stderr)
        return 2
    level = f"alpha {args.alpha:g} (per-document false-positive rate)" if args.alpha is not None else \
        f"FDR {args.fdr:g} (Benjamini-Hochberg over the {saved['n_tested']} documents tested)"
    print(f"{saved['n_member']} of {saved['n_tested']} documents called members at {level}; attack "
          f"{saved['attack']}, {saved['n_calibration']} known non-members (smallest p-value possible "
          f"{saved['p_value_floor']:.3g}) -> {Path(args.out) / 'decisions.parquet'}, "
          f"{Path(args.out) / 'decision.json'}")
    return 0


def _same_model(a: dict, b: dict, what: str) -> None:
    """Two score directories of one model: the same weights' fingerprint."""
    if a["identity"]["model"].get("sha256") != b["identity"]["model"].get("sha256"):
        raise ValueError(f"{what}: expected scores of the same model as the target, got another model "
                         f"({b['identity']['model'].get('path')} vs {a['identity']['model'].get('path')})")


def _cmd_dataset_inference(args: argparse.Namespace) -> int:
    from .answers import dataset_inference, write_dataset_inference
    from .scoring.run import read_manifest

    try:
        suspect, _ = _read_directories(args.suspect, [], args.allow_incomplete)
        validation, _ = _read_directories(args.validation, [], args.allow_incomplete)
        _same_model(read_manifest(args.suspect), read_manifest(args.validation), "--validation")
        _check_same_tokenization(suspect, validation)
        references = []
        for pair in args.reference:
            parts = pair.split(",")
            if len(parts) != 2:
                raise ValueError(f"--reference: expected SUSPECT_DIR,VALIDATION_DIR, got {pair!r}")
            _, (ref_s,) = _read_directories(args.suspect, [parts[0]], args.allow_incomplete)
            _, (ref_v,) = _read_directories(args.validation, [parts[1]], args.allow_incomplete)
            references.append((ref_s, ref_v))
        result = dataset_inference(
            suspect, validation, references=references or None, test=args.test, n_splits=args.n_splits,
            alpha=args.alpha, random_state=args.seed, n_permutations=args.permutations,
            features=args.features.split(",") if args.features else None, control=args.control,
            control_split=args.control_split,
        )
        write_dataset_inference(result, args.out, meta={"suspect": args.suspect, "validation": args.validation,
                                                        "references": args.reference})
    except (ValueError, FileNotFoundError, TypeError, KeyError) as err:
        print(f"mia-fast dataset-inference: error: {err}", file=sys.stderr)
        return 2
    verdict = "MEMBER: the suspect set was likely trained on" if result.member else "not shown to be trained on"
    print(f"{verdict}: p = {result.p_value:.3g} ({result.test}, {len(result.split_p_values)} splits combined) at "
          f"alpha {result.alpha:g}; {result.n_suspect} suspect vs {result.n_validation} validation documents")
    print(f"control (validation vs validation): {result.control_message}")
    print(f"-> {Path(args.out) / 'result.json'}, {Path(args.out) / 'report.md'}, "
          f"{Path(args.out) / 'p_value_vs_documents.png'}")
    return 0


def _check_same_tokenization(suspect: Any, validation: Any) -> None:
    """Suspect and validation sets are different texts, but must be tokenized and scored alike."""
    a, b = suspect.attrs["manifest"], validation.attrs["manifest"]
    from .scoring.run import _SAME_PARAMS

    problems = [f"{key} {a['settings'].get(key)!r} vs {b['settings'].get(key)!r} ({flag})"
                for key, flag in _SAME_PARAMS.items() if a["settings"].get(key) != b["settings"].get(key)]
    if a.get("tokenizer_sha256") != b.get("tokenizer_sha256"):
        problems.append("other tokenizers")
    if problems:
        raise ValueError("--validation: expected the suspect's tokenization and settings, got " + "; ".join(problems))


def _add_answer_parsers(sub) -> None:
    p = sub.add_parser("decide", help="per-document p-values against known non-members, with FDR control",
                       description="Runs an attack on the target's score directory and tests each document "
                       "against a calibration set of known non-members: p = (1 + #{calibration >= score}) / (n + 1), "
                       "Benjamini-Hochberg q-values over the documents tested, and a verdict at --alpha "
                       "(per-document false-positive rate) or --fdr (false-discovery rate). Writes "
                       "decisions.parquet (id, score, p_value, q_value, member) and decision.json.")
    p.add_argument("--target", required=True, help="the target model's score directory")
    p.add_argument("--attack", default="loss", help="attack whose scores are tested (an unknown name lists them)")
    p.add_argument("--reference", nargs="*", default=[],
                   help="reference models' score directories (reference_* attacks)")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibration-label", type=int, default=0,
                     help="known non-members: the target's documents with this label")
    cal.add_argument("--calibration-ids", metavar="FILE",
                     help="known non-members: these ids of the target (one per line)")
    cal.add_argument("--calibration", metavar="DIR", help="known non-members: a score directory of the same model")
    p.add_argument("--calibration-reference", nargs="*", default=[],
                   help="with --calibration and --reference: each reference model's scores of the calibration set")
    level = p.add_mutually_exclusive_group(required=True)
    level.add_argument("--alpha", type=float, help="per-document false-positive rate")
    level.add_argument("--fdr", type=float, help="false-discovery rate over the documents tested")
    p.add_argument("--out", required=True, help="output directory")
    _add_allow_incomplete(p)
    p.set_defaults(func=_cmd_decide)

    p = sub.add_parser("dataset-inference", help="was a whole collection trained on? (with a built-in control)",
                       description="Tests whether the model's statistics tell a suspect set from a validation set of "
                       "the same distribution known not to be trained on (Maini et al. 2024): a regularised "
                       "logistic regression over every per-document statistic is learnt on one half and tested on "
                       "the other (Welch or permutation test), over several random splits combined validly "
                       "(twice the median p-value). The same procedure on validation vs validation is reported as "
                       "a control. Writes result.json, report.md and p_value_vs_documents.png.")
    p.add_argument("--suspect", required=True, help="score directory of the collection claimed to be trained on")
    p.add_argument("--validation", required=True,
                   help="score directory (same model) of texts of the same distribution known not to be")
    p.add_argument("--reference", nargs="*", default=[], metavar="SUSPECT_DIR,VALIDATION_DIR",
                   help="a reference model's score directories of both sets (adds calibrated features)")
    p.add_argument("--test", default="auto", choices=["auto", "welch", "permutation"],
                   help="auto: permutation when a tested half has fewer than 200 documents, else Welch")
    p.add_argument("--n-splits", type=int, default=10, help="random A/B splits combined")
    p.add_argument("--alpha", type=float, default=0.05, help="level of the verdict")
    p.add_argument("--permutations", type=int, default=999, help="permutations of the permutation test")
    p.add_argument("--features", help="comma-separated columns to use (default: every model statistic present)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="run the validation-vs-validation control")
    p.add_argument("--control-split", default="random", choices=["random", "ordered"],
                   help="how the validation set is halved for the control (ordered also catches drift in row order)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and permutations")
    p.add_argument("--out", required=True, help="output directory")
    _add_allow_incomplete(p)
    p.set_defaults(func=_cmd_dataset_inference)


def _read_ids(path: str, flag: str = "--nonmember-ids") -> list[str]:
    """Document ids from a text file, one per line (blank lines ignored)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{flag}: expected a text file of ids (one per line), got {path!r} (not found)")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cmd_spans(args: argparse.Namespace) -> int:
    from .spans import locate_spans, write_spans

    _quiet_transformers()
    out = Path(args.out) if args.out else Path(args.score_dir) / "spans"
    try:
        report = locate_spans(
            args.score_dir, reference=args.reference, nonmember_label=args.nonmember_label,
            nonmember_ids=_read_ids(args.nonmember_ids) if args.nonmember_ids else None, threshold=args.threshold,
            window=args.window, alpha=args.alpha, merge_gap=args.merge_gap, min_length=args.min_length,
            signal=args.signal, allow_incomplete=args.allow_incomplete,
        )
        paths = write_spans(report, out, html_max_documents=args.html_max_documents)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"mia-fast spans: error: {err}", file=sys.stderr)
        return 2
    cal = report.calibration
    n_spans = sum(len(d.spans) for d in report.documents)
    n_docs = sum(1 for d in report.documents if d.spans)
    how = "explicit" if cal.source == "user" else f"{cal.source}, {cal.n_null_documents} documents, alpha {cal.alpha:g}"
    print(f"{n_spans} spans in {n_docs} of {len(report.documents)} documents; signal {cal.signal}, "
          f"threshold {cal.threshold:.4g} ({how}) -> {paths['json']}, {paths['html']}")
    return 0


def _add_spans_parser(sub) -> None:
    from .spans import DEFAULT_ALPHA, DEFAULT_MERGE_GAP, DEFAULT_MIN_LENGTH, DEFAULT_WINDOW, SIGNALS

    p = sub.add_parser("spans", help="locate memorised spans inside documents from per-token scores",
                       description="Smooths a per-token membership signal (target - reference log-prob with "
                       "--reference, else the target's log-prob), flags the tokens above a threshold calibrated on "
                       "known non-members and writes spans.json and spans.html. Needs a score directory written "
                       "with --per-token.")
    p.add_argument("score_dir", help="the target model's score directory (scored with --per-token)")
    p.add_argument("--reference", help="a reference model's score directory of the same corpus (same tokenizer)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--nonmember-label", type=int, metavar="LABEL",
                       help="calibrate on the documents with this label (default: 0 when there is a label column)")
    group.add_argument("--nonmember-ids", metavar="FILE", help="calibrate on these document ids (one per line)")
    p.add_argument("--threshold", type=float, help="explicit threshold on the smoothed signal (no calibration)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="tokens of the running mean")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="per-token false positive rate on non-members")
    p.add_argument("--merge-gap", type=int, default=DEFAULT_MERGE_GAP,
                   help="merge runs separated by fewer unflagged tokens than this")
    p.add_argument("--min-length", type=int, default=DEFAULT_MIN_LENGTH, help="shortest span kept, in tokens")
    p.add_argument("--signal", default="auto", choices=list(SIGNALS),
                   help="auto: reference_diff with --reference, else logprob")
    p.add_argument("--html-max-documents", type=int, default=200, help="documents shown on spans.html")
    p.add_argument("--out", help="output directory (default: SCORE_DIR/spans)")
    _add_allow_incomplete(p)
    p.set_defaults(func=_cmd_spans)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or its help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default in ((), [])
        if not action.option_strings or unset or "default" in text:
            return text
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mia-fast", description="Membership-inference scoring engine.")
    parser.add_argument("--version", action="version", version=f"mia-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="versions, built backends (and why not), SIMD level in use")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_cmd_info)
    _add_score_parser(sub)
    _add_attack_parsers(sub)
    _add_spans_parser(sub)
    _add_shift_parser(sub)
    _add_answer_parsers(sub)
    bench = sub.add_parser(
        "bench",
        help="token-statistics throughput vs torch eager, torch.compile and the memory roofline",
        description="Runs benchmarks/bench_token_stats.py; arguments after `bench` are passed to it "
        "(e.g. `mia-fast bench --quick`, `mia-fast bench --help`).",
        add_help=False,
    )
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mia-fast``; returns the process exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":  # everything after `bench` belongs to the benchmark script
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
