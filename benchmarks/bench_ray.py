"""Distributed scoring on Ray Data vs the single-process job: tokens/s and overhead.

Scores the same corpus (paragraphs of Python's documentation) with a random GPT-2-shaped model
three ways, into fresh score directories:

* ``single``: `mia_fast.scoring.run.score_to_directory` (one process, model loaded once per run)
* ``ray-1``, ``ray-2``: `mia_fast.scoring.distributed.score_dataset` with 1 and 2 actors

Each repeat is end to end (model load, actor start-up, writing shards), rounds interleaved; the
figures are medians. Ray's cluster is started once, outside the timings (its start-up is printed
apart). On a 2-core machine 2 actors share the cores with the driver, so the Ray rows show
overhead more than speed-up. torch's threads are limited to ``--threads`` in every process.

    python benchmarks/bench_ray.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

MODELS = {
    "tiny": {"layers": 2, "d": 64, "heads": 2},
    "small": {"layers": 4, "d": 256, "heads": 4},
}


def _corpus(path: Path, n: int) -> None:
    from pydoc_data.topics import topics

    paras = [" ".join(p.split()) for k in sorted(topics) for p in topics[k].split("\n\n")]
    paras = [p for p in paras if len(p) >= 80]
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"d{i}", "text": paras[i % len(paras)], "label": i % 2}) + "\n")


def _model(path: Path, spec: dict) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from pydoc_data.topics import topics

    from mia_fast.audit.shadow_lm import train_tokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    tok = train_tokenizer([topics[k] for k in sorted(topics)][:400], 2048)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=spec["layers"], n_embd=spec["d"], n_head=spec["heads"], vocab_size=len(tok),
                     n_positions=256, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpus, 2 repeats, tiny model")
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--block-records", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs given to the local Ray cluster")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.records, args.repeats = "tiny", 300, 2

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by Ray's workers
    import ray
    import torch

    from mia_fast.scoring.distributed import score_dataset
    from mia_fast.scoring.run import ScoreJob, read_scores, score_to_directory
    from mia_fast.scoring.scorer import ScoreOptions

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        corpus, model = work / "corpus.jsonl", work / "model"
        _corpus(corpus, args.records)
        _model(model, MODELS[args.model])
        options = ScoreOptions(max_length=128)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start = time.perf_counter() - t0

        def single(out):
            job = ScoreJob(model=str(model), input=str(corpus), id_field="id", label_field="label",
                           shard_size=args.block_records, options=options)
            return score_to_directory(job, out)

        def on_ray(n):
            def run(out):
                return score_dataset(str(corpus), model, out, id_field="id", label_field="label", options=options,
                                     num_workers=n, num_cpus_per_worker=0.5, block_records=args.block_records)
            return run

        providers = {"single": single, "ray-1": on_ray(1), "ray-2": on_ray(2)}
        seconds: dict[str, list] = {k: [] for k in providers}
        tokens: dict[str, int] = {}
        frames = {}
        for r in range(args.repeats):
            for name, fn in providers.items():
                out = work / f"{name}-{r}"
                t = time.perf_counter()
                summary = fn(out)
                seconds[name].append(time.perf_counter() - t)
                tokens[name] = summary["tokens"]
                frames[name] = read_scores(out)
                shutil.rmtree(out)
        ref = frames["single"]
        same = all(list(f.row) == list(ref.row) and (f.loss - ref.loss).abs().max() < 1e-5 for f in frames.values())
        print(f"# bench_ray: {C.cpu_model()}, {os.cpu_count()} CPUs; model {args.model} {MODELS[args.model]}, "
              f"{args.records} records, {tokens['single']} tokens, shards of {args.block_records}, "
              f"torch threads/process {args.threads}, {args.repeats} repeats; ray {ray.__version__} "
              f"(cluster start {ray_start:.1f} s, not timed)")
        print(f"# outputs identical (rows; loss to 1e-5): {same}")
        base = statistics.median(seconds["single"])
        print(f"{'engine':8} {'median s':>9} {'min s':>7} {'max s':>7} {'tokens/s':>10} {'vs single':>10}")
        for name, xs in seconds.items():
            m = statistics.median(xs)
            print(f"{name:8} {m:9.2f} {min(xs):7.2f} {max(xs):7.2f} {tokens[name] / m:10.0f} {base / m:9.2f}x")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
