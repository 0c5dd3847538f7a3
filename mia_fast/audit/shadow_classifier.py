"""Small image classifiers as audit targets and LiRA reference models (MNIST-5k, sklearn digits).

- `MLPClassifier`, `CNNClassifier`, `build_classifier`: small torch models over flattened
  square grey-scale images ``(N, side * side)``;
- `train_classifier`: a plain, seeded AdamW loop (bitwise reproducible on CPU);
- `save_classifier` / `load_classifier`: ``model.safetensors`` (``safetensors.torch.save_file``,
  no pickle) and ``classifier.json`` (the architecture);
- `train_reference_classifiers`: K models on the halves of ``keep``, resumable (see
  `mia_fast.audit.shadow`);
- `classifier_stats` / `reference_classifier_stats`: LiRA's statistic
  ``phi = log p_y - log(1 - p_y)`` (`mia_fast.TokenStats.phi`) of each sample under each query, a
  query being a pixel shift of the image (``(0, 0)`` = the image itself; digits are never flipped);
- `CLASSIFIER_PRESETS`: measured settings for MNIST-5k.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .shadow import PathLike, check_keep, check_training, derive_seed, seeded, train_reference_models

__all__ = [
    "CLASSIFIER_PRESETS",
    "SHIFT_QUERIES",
    "MLPClassifier",
    "CNNClassifier",
    "build_classifier",
    "train_classifier",
    "save_classifier",
    "load_classifier",
    "train_reference_classifiers",
    "classifier_stats",
    "reference_classifier_stats",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "classifier.json"
# The image itself and its four 1-pixel shifts (zero fill): 5 queries per sample.
SHIFT_QUERIES: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))

# Settings measured on a 2-core CPU with MNIST-5k (`mia_fast.audit.data.mnist_5k`), one model trained on a
# random half (2,500 images), one torch thread:
#   mlp ~3.7 s per model, train accuracy 1.00, test 0.92, LOSS (= phi) AUC 0.55 on IN vs OUT;
#   cnn ~10 s per model, train accuracy 0.98, test 0.95, LOSS AUC 0.52 (generalises better).
# MNIST gives a small LOSS signal; per-example calibration (LiRA) is what finds members there.
# `MIA_FAST_RUN_SLOW=1 python -m pytest tests/test_shadow.py -k preset -s` measures them again.
CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    "mlp": {"arch": "mlp", "hidden": 256, "epochs": 30, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0},
    "cnn": {"arch": "cnn", "hidden": 128, "epochs": 10, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0},
}


# --------------------------------------------------------------------------------------------
# models


def _square_side(n_features: int, name: str) -> int:
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"{name}: expected flattened square images (side * side features), got {n_features} features")
    return side


class MLPClassifier(nn.Module):
    """``n_features -> hidden -> ReLU -> n_classes``.

    Parameters
    ----------
    n_features, n_classes, hidden : int
    """

    def __init__(self, n_features: int, n_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.config = {"arch": "mlp", "n_features": n_features, "n_classes": n_classes, "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` of flattened images ``(B, n_features)``."""
        return self.net(x)


class CNNClassifier(nn.Module):
    """Two 3 x 3 convolutions (16, 32 channels) each followed by ReLU and 2 x 2 max-pooling, then
    ``hidden -> ReLU -> n_classes``; for square grey-scale images (28 x 28, 8 x 8, ...).

    Parameters
    ----------
    n_features : int
        ``side * side``.
    n_classes, hidden : int
    """

    def __init__(self, n_features: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.config = {"arch": "cnn", "n_features": n_features, "n_classes": n_classes, "hidden": hidden}
        self.side = _square_side(n_features, "n_features")
        pooled = self.side // 2 // 2
        if pooled < 1:
            raise ValueError(f"n_features: expected images of at least 4 x 4 for the CNN, got {self.side} x {self.side}")
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * pooled * pooled, hidden), nn.ReLU(),
                                  nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` of flattened images ``(B, side * side)``."""
        return self.head(self.features(x.reshape(-1, 1, self.side, self.side)))


_ARCHS = {"mlp": MLPClassifier, "cnn": CNNClassifier}


def build_classifier(arch: str, n_features: int, n_classes: int, hidden: Optional[int] = None) -> nn.Module:
    """A freshly initialised `MLPClassifier` (``arch="mlp"``) or `CNNClassifier` (``arch="cnn"``)."""
    if arch not in _ARCHS:
        raise ValueError(f"arch: expected one of {sorted(_ARCHS)}, got {arch!r}")
    return _ARCHS[arch](n_features, n_classes) if hidden is None else _ARCHS[arch](n_features, n_classes, hidden)


# --------------------------------------------------------------------------------------------
# data validation


def _check_xy(X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X: expected a non-empty 2-d array (N, n_features), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise TypeError(f"X: expected a floating-point array, got dtype {X.dtype}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y: expected shape ({X.shape[0]},) (one label per row of X), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y: expected integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"y: expected labels >= 0, got {int(y.min())}")
    return X, y


def _n_classes(y: np.ndarray, n_classes: Optional[int]) -> int:
    needed = int(y.max()) + 1
    if n_classes is None:
        return needed
    if n_classes < needed:
        raise ValueError(f"n_classes: expected at least {needed} (max label + 1), got {n_classes}")
    return int(n_classes)


# --------------------------------------------------------------------------------------------
# training


def _fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
         weight_decay: float, seed: int) -> float:
    """AdamW on cross-entropy; returns the last epoch's mean training loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    epoch_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            batch = batch.to(X.device)
            loss = F.cross_entropy(model(X[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        epoch_loss = total / len(y)
    model.eval()
    return epoch_loss


@torch.no_grad()
def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    correct = sum(int((model(X[s : s + batch_size]).argmax(-1) == y[s : s + batch_size]).sum())
                  for s in range(0, len(y), batch_size))
    return correct / len(y)


def train_classifier(
    X: np.ndarray,
    y: np.ndarray,
    *,
    arch: str = "mlp",
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    hidden: Optional[int] = None,
    n_classes: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Train a small classifier from scratch (AdamW, cross-entropy, no augmentation).

    Under one seed (initialisation, shuffling) the weights are bitwise reproducible on CPU with
    the same number of threads.

    Parameters
    ----------
    X : ndarray, shape (N, n_features), float
        Flattened images (square for ``arch="cnn"``), e.g. scaled to ``[0, 1]``.
    y : ndarray, shape (N,), int
        Labels in ``[0, n_classes)``.
    arch : {'mlp', 'cnn'}
    epochs, lr, batch_size, seed, weight_decay
        Training settings.
    hidden : int, optional
        Width of the hidden dense layer (default 256 for the MLP, 128 for the CNN).
    n_classes : int, optional
        Default ``y.max() + 1``; pass it when a subset may miss a class.
    device : str or torch.device

    Returns
    -------
    torch.nn.Module
        In eval mode on ``device``, with ``config`` (the architecture), ``train_loss_`` and
        ``train_accuracy_``.
    """
    X, y = _check_xy(X, y)
    check_training(epochs, lr, batch_size)
    classes = _n_classes(y, n_classes)
    if arch == "cnn":
        _square_side(X.shape[1], "X")
    dev = torch.device(device)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y, dtype=torch.int64, device=dev)
    with seeded(seed, dev):
        model = build_classifier(arch, X.shape[1], classes, hidden).to(dev)
        model.train_loss_ = _fit(model, Xt, yt, epochs=epochs, lr=lr, batch_size=batch_size,
                                 weight_decay=weight_decay, seed=seed)
    model.train_accuracy_ = _accuracy(model, Xt, yt)
    return model


def save_classifier(model: nn.Module, directory: PathLike) -> None:
    """Write ``model.safetensors`` (the state dict) and ``classifier.json`` into ``directory``."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("arch") not in _ARCHS:
        raise TypeError(f"model: expected an MLPClassifier or CNNClassifier, got {type(model).__name__}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_classifier(directory: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The classifier saved by `save_classifier` in ``directory``, in eval mode."""
    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"directory: expected {CONFIG_NAME} and {WEIGHTS_NAME} in {path}")
    config = json.loads((path / CONFIG_NAME).read_text())
    model = build_classifier(config["arch"], config["n_features"], config["n_classes"], config["hidden"])
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME), device=str(torch.device(device))))
    return model.to(device).eval()


_TRAIN_KEYS = ("arch", "epochs", "lr", "batch_size", "weight_decay", "hidden")


def train_reference_classifiers(
    X: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    out_dir: PathLike,
    *,
    train_kwargs: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    progress: bool = False,
    device: Union[str, torch.device] = "cpu",
) -> list[Path]:
    """Train K classifiers, model k on the rows ``keep[k]`` of ``(X, y)``; resumable.

    Model k (seed ``derive_seed(seed, k)``) is saved to ``out_dir/ref_{k:03d}/`` by
    `save_classifier`; ``out_dir/keep.npy`` and ``out_dir/shadow.json`` describe the run. A rerun
    with the same arguments skips complete models and redoes interrupted ones.

    Parameters
    ----------
    X : ndarray, shape (N, n_features), float
    y : ndarray, shape (N,), int
    keep : ndarray, shape (K, N), bool
        From `mia_fast.audit.shadow.make_keep`; K >= 2.
    out_dir : path
    train_kwargs : mapping, optional
        Keyword arguments of `train_classifier` among ``arch``, ``epochs``, ``lr``,
        ``batch_size``, ``weight_decay``, ``hidden`` (e.g. ``CLASSIFIER_PRESETS["mlp"]``).
    seed : int
    progress : bool
        A tqdm progress bar over the models (for command-line use; otherwise only `logging`).
    device : str or torch.device

    Returns
    -------
    list of Path
        The K model directories.
    """
    X, y = _check_xy(X, y)
    keep = check_keep(keep, len(y), "X")
    kwargs = dict(train_kwargs or {})
    unknown = set(kwargs) - set(_TRAIN_KEYS)
    if unknown:
        raise ValueError(f"train_kwargs: unexpected keys {sorted(unknown)}, expected some of {list(_TRAIN_KEYS)}")
    classes = _n_classes(y, None)
    run = {"kind": "classifier", "K": int(keep.shape[0]), "N": len(y), "seed": int(seed),
           "n_classes": classes, "train_kwargs": kwargs}

    def train_one(k: int, keep_row: np.ndarray, directory: Path) -> dict:
        model_seed = derive_seed(seed, k)
        model = train_classifier(X[keep_row], y[keep_row], seed=model_seed, n_classes=classes, device=device,
                                 **kwargs)
        save_classifier(model, directory)
        return {"seed": model_seed, "train_loss": model.train_loss_, "train_accuracy": model.train_accuracy_}

    return train_reference_models(keep, out_dir, train_one, run=run, data_arrays=(X, y), progress=progress,
                                  desc="reference classifiers")


# --------------------------------------------------------------------------------------------
# LiRA statistics


def _shift_images(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images ``(B, H, W)`` moved by ``dy`` rows and ``dx`` columns, zero-filled (no wrap-around)."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        images[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def _check_shifts(shifts: Sequence[Sequence[int]], side: int) -> list[tuple[int, int]]:
    out = [tuple(int(v) for v in s) for s in shifts]
    if not out or any(len(s) != 2 or max(abs(s[0]), abs(s[1])) >= side for s in out):
        raise ValueError(f"shifts: expected a non-empty list of (dy, dx) pixel shifts smaller than {side}, got {shifts}")
    return out  # type: ignore[return-value]


@torch.no_grad()
def classifier_stats(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    shifts: Sequence[Sequence[int]] = ((0, 0),),
    batch_size: int = 1024,
) -> np.ndarray:
    """LiRA's statistic of every sample under every query: ``phi = log p_y - log(1 - p_y)``.

    Computed with `mia_fast.token_stats` (``.phi``), exact as ``p_y -> 1``. A query is the image
    shifted by ``(dy, dx)`` pixels with zero fill; ``(0, 0)`` is the image itself, and
    ``SHIFT_QUERIES`` adds the four 1-pixel shifts ("averaging over queries" in LiRA).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, n_features)`` float32 to logits ``(B, n_classes)``; put in eval mode.
    X : ndarray, shape (N, n_features), float
        Flattened square images (any shape when ``shifts`` is only ``(0, 0)``).
    y : ndarray, shape (N,), int
    shifts : sequence of (int, int)
        Q queries.
    batch_size : int

    Returns
    -------
    ndarray, shape (Q, N), float64
    """
    from ..api import token_stats

    X, y = _check_xy(X, y)
    queries = [(0, 0)]
    if [tuple(s) for s in shifts] != queries:  # shifted queries need square images
        queries = _check_shifts(shifts, _square_side(X.shape[1], "X"))
    device = next(model.parameters()).device
    model.eval()
    out = np.empty((len(queries), len(y)), dtype=np.float64)
    for start in range(0, len(y), batch_size):
        xb = torch.as_tensor(X[start : start + batch_size], dtype=torch.float32, device=device)
        yb = torch.as_tensor(y[start : start + batch_size], dtype=torch.int64, device=device)
        for q, (dy, dx) in enumerate(queries):
            if (dy, dx) != (0, 0):
                side = math.isqrt(xb.shape[1])
                xq = _shift_images(xb.reshape(-1, side, side), dy, dx).reshape(xb.shape)
            else:
                xq = xb
            logits = model(xq).float()
            out[q, start : start + len(yb)] = token_stats(logits, yb).phi.double().cpu().numpy()
    return out


def reference_classifier_stats(
    model_dirs: Sequence[PathLike],
    X: np.ndarray,
    y: np.ndarray,
    *,
    shifts: Sequence[Sequence[int]] = ((0, 0),),
    batch_size: int = 1024,
    device: Union[str, torch.device] = "cpu",
) -> np.ndarray:
    """`classifier_stats` of each saved model: the ``reference_stats`` of `LiRA.fit`.

    Returns
    -------
    ndarray, shape (K, Q, N), float64
    """
    if len(model_dirs) == 0:
        raise ValueError("model_dirs: expected at least one model directory, got none")
    return np.stack([
        classifier_stats(load_classifier(d, device), X, y, shifts=shifts, batch_size=batch_size)
        for d in model_dirs
    ])
