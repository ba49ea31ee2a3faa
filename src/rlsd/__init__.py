"""rlsd: RLVR with self-distillation (arXiv 2604.03128) on top of TRL."""

__version__ = "0.1.0"
