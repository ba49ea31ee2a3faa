"""Matplotlib for files only: every plot of `rlsd` (reports, credit pages, benchmarks) gets pyplot here."""

from __future__ import annotations


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display on servers and in CI); matplotlib loads on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
