"""rlsd: RLVR with self-distillation (arXiv 2604.03128) on top of TRL.

    from rlsd import RLSDTrainer, RLSDConfig
"""

__version__ = "0.1.0"

from .config import RLSDConfig  # noqa: E402
from .trainer import RLSDTrainer  # noqa: E402

__all__ = ["RLSDConfig", "RLSDTrainer", "__version__"]
