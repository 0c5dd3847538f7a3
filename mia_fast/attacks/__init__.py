"""Membership inference attacks with the scikit-learn estimator contract (design.md §5).

``__init__`` stores parameters, ``fit`` returns the attack, learned attributes end in ``_`` and
``score_samples`` returns one float per sample, **higher = more likely member**, for every attack.
Evaluate the scores with `mia_fast.metrics` (or `mia_fast.evaluate`).

* `LossAttack`, `ZlibAttack`, `MinK`, `MinKPlusPlus`: one column of a per-sequence score table
  (or a `TokenStats` batch), nothing to fit.
* `ReferenceAttack`: the target's loss calibrated by a reference model's loss.
* `ShadowClassifierAttack`: a classifier trained on shadow models' per-sequence statistics.
* `LiRA`: per-sample IN/OUT Gaussians over reference models (online, offline one-sided CDF,
  offline two-sided logpdf).
* `RMIA`: pairwise likelihood ratios against population samples.
* `PrefixAttack`, `ReCaLLAttack`: the loss of a text's continuation after its own prefix, and the
  ratio of its loss after a fixed non-member context to its plain loss (`mia_fast.scoring.prefix`).
* `ConReCaLLAttack`: ReCaLL with a member context too (``loss_member_context``).
* `LowercaseAttack`: the loss of the text over that of its lowercased form (``loss_lowercase``).
* `NeighbourhoodAttack`: the mean loss of masked-LM neighbours minus the text's (``loss_neighbours``).
* `PACAttack`: minus PAC's polarized-distance calibration against word-swapped copies (``pac``).
* `DCPDDAttack`: token probabilities calibrated by their frequency in a reference corpus (``dc_pdd``).
* `QuantileRegressionAttack`: a base score minus its (1 - alpha) quantile predicted from text features,
  fitted on known non-members only.
* `SaMIAAttack`: ROUGE-1 of sampled continuations against the text's true suffix (black-box, text only;
  ``samia``, ``samia_zlib``; `mia_fast.scoring.samia`).
* `TemperatureAttack`: how little the loss moves across temperatures (`token_stats(..., temperatures=...)`).
* `GradNormAttack`: minus the log of the per-sample gradient norm (white-box; `mia_fast.scoring.gradients`).
"""

from .dc_pdd import DCPDDAttack
from .gradnorm import GradNormAttack
from .lira import LiRA
from .neighbourhood import NeighbourhoodAttack
from .pac import PACAttack
from .lowercase import LowercaseAttack
from .prefix import ConReCaLLAttack, PrefixAttack, ReCaLLAttack
from .quantile import QuantileRegressionAttack
from .reference_model import ReferenceAttack
from .rmia import RMIA
from .samia import SaMIAAttack
from .shadow_classifier import DEFAULT_SHADOW_FEATURES, ShadowClassifierAttack
from .temperature import TemperatureAttack
from .threshold import LossAttack, MinK, MinKPlusPlus, ZlibAttack

__all__ = [
    "LossAttack",
    "ZlibAttack",
    "MinK",
    "MinKPlusPlus",
    "ReferenceAttack",
    "ShadowClassifierAttack",
    "DEFAULT_SHADOW_FEATURES",
    "LiRA",
    "RMIA",
    "PrefixAttack",
    "ReCaLLAttack",
    "ConReCaLLAttack",
    "LowercaseAttack",
    "SaMIAAttack",
    "NeighbourhoodAttack",
    "PACAttack",
    "DCPDDAttack",
    "QuantileRegressionAttack",
    "GradNormAttack",
    "TemperatureAttack",
]
