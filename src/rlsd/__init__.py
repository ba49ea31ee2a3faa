"""rlsd: RLVR with self-distillation (arXiv 2604.03128) on top of TRL.

    from rlsd import RLSDTrainer, RLSDConfig
    from rlsd import Algorithm, register_algorithm   # a method of your own (docs/new-method.md)
"""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting for each other lose their time slices to any other busy process: beside
# a second two-thread PyTorch job a two-thread CPU run measured ~8x slower than alone (issue 20; numbers in
# benchmarks/RESULTS.md). Passive waiting gives the core back instead. It must be set before torch loads its
# OpenMP runtime, hence here, first; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .algorithms import Algorithm, register_algorithm  # noqa: E402
from .config import RLSDConfig  # noqa: E402
from .trainer import RLSDTrainer  # noqa: E402

__all__ = ["Algorithm", "RLSDConfig", "RLSDTrainer", "__version__", "register_algorithm"]
