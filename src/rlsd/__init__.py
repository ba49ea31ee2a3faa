"""rlsd: RLVR with self-distillation (arXiv 2604.03128) on top of TRL.

    from rlsd import RLSDTrainer, RLSDConfig
    from rlsd import Algorithm, register_algorithm   # a method of your own (docs/new-method.md)
"""

__version__ = "0.1.0"

from .algorithms import Algorithm, register_algorithm  # noqa: E402
from .config import RLSDConfig  # noqa: E402
from .trainer import RLSDTrainer  # noqa: E402

__all__ = ["Algorithm", "RLSDConfig", "RLSDTrainer", "__version__", "register_algorithm"]
