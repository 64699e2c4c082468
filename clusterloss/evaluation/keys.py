"""The metric keys: one vocabulary for the library functions, the `RetrievalEvaluation`
callback, a run's `metrics.json` and its report.

The functions return these keys; a run's `metrics.json` uses them as they are, with a
prefix where the same metric is measured on another set (`unseen_`: among the classes never
seen in training; `known_`: verification on the known classes' test set, given beside the
unseen one); the callback logs them with `val_`.
"""

from __future__ import annotations

# clusterloss key -> the name of the same number in PML's AccuracyCalculator (2.9.0).
PML_NAMES = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "map_at_r": "mean_average_precision_at_r",
    "mean_average_precision": "mean_average_precision",
    "mean_reciprocal_rank": "mean_reciprocal_rank",
    "nmi": "NMI",
    "ami": "AMI",
}
PREFIXES = ("unseen_", "known_", "val_")


def far_key(far: float) -> str:
    """0.01 -> '1e-2' (as in `tar_at_far_1e-2`); 0.05 -> '5e-2'."""
    mantissa, exponent = f"{float(far):e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"
