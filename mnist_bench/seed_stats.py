"""Statistics over the seeds of one cell (a model and learning rate): mean, spread, a confidence
interval of the mean, and whether the seeds split into runs that learned and runs at chance.

The interval is Student's t interval of the mean, ``mean ± t(0.975, n-1) * sd / sqrt(n)``
with the sample standard deviation (n - 1 in the denominator); it needs n >= 2. Where it
reaches past what the metric can take (an accuracy above 100 %), it is cut at that bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Ten classes: chance is 10 %. A run below CHANCE_BELOW did not learn; one above LEARNED_ABOVE
# did. A cell holding both is bimodal, and its mean describes none of its runs.
CHANCE_BELOW, LEARNED_ABOVE = 0.2, 0.5


def summary(values: Sequence[float],
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict[str, float]:
    """n, mean, sd, min, max and the 95 % t interval of the mean (NaN where n is too small),
    the interval cut to the metric's possible ``bounds``."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return dict.fromkeys(("n", "mean", "sd", "min", "max", "ci_low", "ci_high"), math.nan)
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)) if n > 1 \
        else math.nan
    mean = float(x.mean())
    return {"n": n, "mean": mean, "sd": sd, "min": float(x.min()), "max": float(x.max()),
            "ci_low": max(mean - half, bounds[0]), "ci_high": min(mean + half, bounds[1])}


def modes(accuracies: Sequence[float]) -> dict[str, np.ndarray]:
    """Which runs ``learned``, stayed at ``chance``, or are ``between``, by final accuracy."""
    x = np.asarray(accuracies, dtype=float)
    learned, chance = x > LEARNED_ABOVE, x < CHANCE_BELOW
    return {"learned": learned, "chance": chance, "between": ~learned & ~chance}
