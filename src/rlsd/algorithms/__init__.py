"""Algorithms as plug-ins: one module per method behind a registry; the trainer only dispatches here.

- `base.Algorithm`: what differs between methods (teacher prompt per row, rows to score, token advantages or
  the loss, metrics, own-field validation, capabilities). `registry`: names -> classes, user classes by path.
- One module per method: `grpo`, `rlsd`, `opsd`, `opd`, `sdpo` (self-distillation from a successful peer
  rollout, arXiv 2601.20802), `grpo_opsd` (registered as "grpo+opsd"), `rlcsd` (RLCSD, arXiv 2606.11709, as its
  authors' code computes it).
- `blend`: the policy + distillation mix SDPO and GRPO+OPSD share; `contrast`: the wrong-reference teacher
  evidence any method with `supports_contrast` can use (`teacher_contrast="wrong_reference"`).
A new method, yours included, is one class: see docs/new-method.md.
"""

from __future__ import annotations

from .base import Algorithm, PolicyLoss, config_error
from .grpo import GRPO
from .grpo_opsd import GRPOOPSD
from .opd import OPD
from .opsd import OPSD
from .registry import (CONTRAST_SUFFIX, algorithm_names, algorithm_variant, build_algorithm, contrast_algorithms,
                       display_name, get_algorithm, register_algorithm, validate_algorithm_config)
from .rlcsd import RLCSD
from .rlsd import RLSD
from .sdpo import SDPO

BUILTIN_ALGORITHMS = (RLSD, GRPO, OPSD, OPD, SDPO, GRPOOPSD, RLCSD)
for _cls in BUILTIN_ALGORITHMS:
    register_algorithm(_cls)

__all__ = ["Algorithm", "BUILTIN_ALGORITHMS", "CONTRAST_SUFFIX", "GRPO", "GRPOOPSD", "OPD", "OPSD", "PolicyLoss",
           "RLCSD", "RLSD", "SDPO", "algorithm_names", "algorithm_variant", "build_algorithm", "config_error",
           "contrast_algorithms", "display_name", "get_algorithm", "register_algorithm",
           "validate_algorithm_config"]
