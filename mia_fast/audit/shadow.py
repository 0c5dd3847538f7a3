"""Reference ("shadow") model sets for membership inference audits: splits and the resumable loop.

Following Carlini et al., "Membership Inference Attacks From First Principles" (LiRA), K reference
models of one configuration are each trained on a random half of a pool, so that every sample is
a member (IN) of about half of the models. This module holds what the language-model and the
classifier paths share:

- `make_keep`: the ``(K, N)`` membership matrix, built exactly as in the LiRA reference code;
- `make_target_membership`: the separate random half the audited target model trains on;
- `derive_seed` and `seeded`: per-model seeds and a scope that makes training reproducible;
- `train_reference_models`: the resumable per-model loop. Model k is written into a temporary
  directory which is renamed to ``out_dir/ref_{k:03d}`` once complete (the completion marker is
  the last file written), so an interrupted run leaves either a complete model or none, and a
  rerun skips the complete ones. ``out_dir/keep.npy`` and ``out_dir/shadow.json`` (the run's
  parameters and per-model status) are written alongside.

The model-specific code lives in `mia_fast.audit.shadow_lm` (causal LMs) and
`mia_fast.audit.shadow_classifier` (image classifiers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .. import atomic

__all__ = [
    "COMPLETE_MARKER",
    "MANIFEST_NAME",
    "KEEP_NAME",
    "make_keep",
    "make_target_membership",
    "derive_seed",
    "seeded",
    "reference_dirs",
    "atomic_directory",
    "train_reference_models",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# train_one(k, keep_row, directory) trains model k on its IN samples, saves it into `directory`
# and returns a JSON-serialisable summary (recorded in the marker and in shadow.json).
TrainOne = Callable[[int, np.ndarray, Path], Mapping[str, Any]]

COMPLETE_MARKER = "COMPLETE.json"
MANIFEST_NAME = "shadow.json"
KEEP_NAME = "keep.npy"
_TEMP_INFIX = ".tmp-"


# --------------------------------------------------------------------------------------------
# splits


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def make_keep(n_models: int, n_samples: int, seed: int) -> np.ndarray:
    """Membership matrix of K reference models over N samples, as in the LiRA reference code.

    ``keep = RandomState(seed).uniform(0, 1, size=(K, N)).argsort(0) < K // 2``: each sample is
    IN for exactly ``K // 2`` models (half of them when K is even), and each model trains on about
    half of the samples. For the same seed this is the matrix of the reference code
    (``np.random.seed(seed); np.random.uniform(...)``).

    Parameters
    ----------
    n_models : int
        K >= 2.
    n_samples : int
        N >= 1.
    seed : int

    Returns
    -------
    ndarray, shape (K, N), bool
        ``keep[k, n]``: sample n is in model k's training set.
    """
    k = _check_count("n_models", n_models, 2)
    n = _check_count("n_samples", n_samples, 1)
    uniform = np.random.RandomState(seed).uniform(0, 1, size=(k, n))
    return uniform.argsort(0) < k // 2


def make_target_membership(n_samples: int, seed: int) -> np.ndarray:
    """Membership of the audited target model: a random half of the pool, separate from `make_keep`.

    Use a seed different from the reference models' one.

    Parameters
    ----------
    n_samples : int
        N >= 2.
    seed : int

    Returns
    -------
    ndarray, shape (N,), bool
        Exactly ``N // 2`` True entries (members), at random positions.
    """
    n = _check_count("n_samples", n_samples, 2)
    members = np.zeros(n, dtype=bool)
    members[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    return members


def derive_seed(seed: int, k: int) -> int:
    """Seed of model ``k`` of a run seeded by ``seed``: a 31-bit integer from ``SeedSequence(seed, (k,))``."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(k),)).generate_state(1, np.uint32)
    return int(state[0] >> np.uint32(1))


@contextlib.contextmanager
def seeded(seed: int, device: Union[str, torch.device] = "cpu") -> Iterator[None]:
    """Scope in which torch's generators are seeded with ``seed`` and restored on exit.

    Inside, ``torch.use_deterministic_algorithms(True)`` is on (CPU always; CUDA only when
    ``CUBLAS_WORKSPACE_CONFIG`` is set, as cuBLAS requires), so a training run repeated in the
    same environment (machine, library versions, number of torch threads) gives bitwise-identical
    weights. The caller's random state and determinism setting are restored on exit.
    """
    dev = torch.device(device)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    deterministic = dev.type != "cuda" or bool(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if not deterministic:
        logger.info("CUBLAS_WORKSPACE_CONFIG is not set: CUDA training is seeded but not bitwise reproducible")
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)


# --------------------------------------------------------------------------------------------
# validation shared by the LM and classifier paths


def check_keep(keep: object, n_samples: int, pool_name: str) -> np.ndarray:
    """``keep`` as a ``(K, N)`` bool array; ValueError naming it when the shape is wrong."""
    arr = np.asarray(keep)
    if arr.dtype != np.bool_:
        raise TypeError(f"keep: expected a bool array of shape (K, {n_samples}), got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != n_samples:
        raise ValueError(
            f"keep: expected shape (K, {n_samples}) (N = len({pool_name})), got {arr.shape}"
        )
    if arr.shape[0] < 2:
        raise ValueError(f"keep: expected at least K = 2 reference models (rows), got K = {arr.shape[0]}")
    empty = np.flatnonzero(~arr.any(axis=1))
    if empty.size:
        raise ValueError(f"keep: expected every model to train on at least one sample, row {int(empty[0])} is all False")
    return arr


def check_training(epochs: int, lr: float, batch_size: int) -> None:
    """ValueError naming the first of ``epochs``, ``lr``, ``batch_size`` that is out of range."""
    if epochs < 1:
        raise ValueError(f"epochs: expected at least 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected at least 1, got {batch_size}")


# --------------------------------------------------------------------------------------------
# files


def fingerprint(params: Mapping[str, Any], *arrays: np.ndarray) -> str:
    """SHA-256 of JSON-serialisable ``params`` and the bytes, dtypes and shapes of ``arrays``."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def texts_sha256(texts: list[str]) -> str:
    """SHA-256 of a list of texts (each length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically and durably (`mia_fast.atomic`)."""
    atomic.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = atomic.temporary_path(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    atomic.commit(tmp, path)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final``; on success it replaces ``final``.

    On an exception the temporary directory is removed and ``final`` is left as it was.
    """
    tmp = final.parent / f".{final.name}{_TEMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _fsync_files(directory: Path) -> None:
    """Flush the files of ``directory`` to disk (so that a renamed directory is never half-empty)."""
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove the temporary files and directories an interrupted run left in ``out_dir``."""
    for p in out_dir.glob(f".*{_TEMP_INFIX}*"):
        logger.info("removing %s, left by an interrupted run", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def reference_dirs(out_dir: PathLike, n_models: int, names: Optional[Sequence[str]] = None) -> list[Path]:
    """``[out_dir/ref_000, ..., out_dir/ref_{K-1}]``, or ``out_dir/<name>`` for the given names."""
    if names is None:
        return [Path(out_dir) / f"ref_{k:03d}" for k in range(n_models)]
    names = [str(n) for n in names]
    if len(names) != n_models or len(set(names)) != n_models:
        raise ValueError(f"names: expected {n_models} distinct names, got {names}")
    for name in names:
        if not name or name.startswith(".") or Path(name).name != name or name in (MANIFEST_NAME, KEEP_NAME):
            raise ValueError(f"names: expected plain directory names (no path, not hidden), got {name!r}")
    return [Path(out_dir) / name for name in names]


def read_marker(model_dir: Path) -> Optional[dict]:
    """The completion marker of a model directory, or None when the model is not complete."""
    try:
        return json.loads((model_dir / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _start_manifest(out_dir: Path, run: Mapping[str, Any], digest: str, dirs: list[Path]) -> dict:
    path = out_dir / MANIFEST_NAME
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") not in (None, digest):
            raise ValueError(
                f"out_dir: {out_dir} holds reference models of a different run (other data, split, "
                f"configuration or seed; see {path}); expected fingerprint {digest[:12]}, "
                f"found {str(old.get('fingerprint'))[:12]}. Use a new directory or remove it."
            )
    models = [{"name": d.name, "status": "pending"} for d in dirs]
    return {**run, "fingerprint": digest, "models": models}


# --------------------------------------------------------------------------------------------
# the resumable loop


def _progress(iterable: range, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="model")


def train_reference_models(
    keep: np.ndarray,
    out_dir: PathLike,
    train_one: TrainOne,
    *,
    run: Mapping[str, Any],
    data_arrays: tuple[np.ndarray, ...] = (),
    progress: bool = False,
    desc: str = "reference models",
    names: Optional[Sequence[str]] = None,
    on_model: Optional[Callable[[str], None]] = None,
) -> list[Path]:
    """Train and save K reference models, skipping those already complete in ``out_dir``.

    Parameters
    ----------
    keep : ndarray, shape (K, N), bool
        Validated membership matrix (see `make_keep`).
    out_dir : path
        Created if missing. Receives ``ref_{k:03d}/`` per model, ``keep.npy`` and ``shadow.json``.
    train_one : callable ``(k, keep[k], directory) -> dict``
        Trains model k and saves it into ``directory`` (a temporary directory renamed to
        ``ref_{k:03d}`` after the completion marker is written). Returns a JSON-serialisable
        summary.
    run : mapping
        JSON-serialisable description of the run (kind, K, N, seed, configuration, training
        arguments, data hashes). Together with ``keep`` and ``data_arrays`` it forms the run's
        fingerprint: a rerun resumes only a run with the same fingerprint.
    data_arrays : tuple of ndarray
        Extra arrays hashed into the fingerprint (the training data of classifiers).
    progress : bool
        A tqdm progress bar (otherwise only `logging`).
    desc : str
        Label of the progress bar.
    names : sequence of str, optional
        Directory names of the K models (default ``ref_000`` ...).
    on_model : callable(str), optional
        Called with one line per model (trained in how long, or skipped, and the time elapsed),
        e.g. to report progress where no progress bar can be shown.

    Returns
    -------
    list of Path
        The K model directories, in order.

    Raises
    ------
    ValueError
        ``out_dir`` holds models of a run with a different fingerprint.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_models = keep.shape[0]
    dirs = reference_dirs(out, n_models, names)
    digest = fingerprint(dict(run), keep, *data_arrays)
    manifest = _start_manifest(out, run, digest, dirs)
    _remove_stale_temporaries(out)
    _save_npy_atomic(out / KEEP_NAME, keep)
    write_json_atomic(out / MANIFEST_NAME, manifest)
    start = time.perf_counter()
    for k in _progress(range(n_models), progress, desc):
        marker = read_marker(dirs[k])
        # the same run and the same row of keep: a directory renamed or reused for another row is redone
        if marker is not None and marker.get("fingerprint") == digest and marker.get("k") == k:
            logger.info("%s: complete, skipped", dirs[k].name)
            done = "complete, skipped"
        else:
            marker = _train_and_save(k, keep[k], dirs[k], train_one, digest)
            done = f"trained on {marker['n_train']} samples in {marker['seconds']:.1f} s"
        if on_model is not None:
            on_model(f"{dirs[k].name}: {done} ({k + 1}/{n_models} models, {time.perf_counter() - start:.0f} s elapsed)")
        summary = {key: v for key, v in marker.items() if key != "fingerprint"}
        manifest["models"][k] = {"name": dirs[k].name, "status": "complete", **summary}
        write_json_atomic(out / MANIFEST_NAME, manifest)
    return dirs


def _train_and_save(k: int, keep_row: np.ndarray, final: Path, train_one: TrainOne, digest: str) -> dict:
    logger.info("%s: training on %d samples", final.name, int(keep_row.sum()))
    start = time.perf_counter()
    with atomic_directory(final) as tmp:
        summary = dict(train_one(k, keep_row, tmp))
        marker = {
            **summary,
            "k": k,
            "n_train": int(keep_row.sum()),
            "seconds": round(time.perf_counter() - start, 3),
            "fingerprint": digest,
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("%s: done in %.1f s", final.name, marker["seconds"])
    return marker
