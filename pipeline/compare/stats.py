"""What rliable does not compute: the first step at which an aggregate curve reaches a
threshold (sample efficiency read off an IQM curve). Everything else of a report is in
``pipeline.compare.estimates``, through rliable."""

from __future__ import annotations

import numpy as np


def steps_to_reach(
    steps: np.ndarray, curve: np.ndarray, threshold: float, after: float | None = None
) -> float | None:
    """The first evaluated step (only steps > ``after``, if given) at which ``curve`` reaches
    ``threshold``, or None."""
    steps, curve = np.asarray(steps), np.asarray(curve)
    hits = np.flatnonzero((curve >= threshold) & (steps > (-np.inf if after is None else after)))
    return float(steps[hits[0]]) if len(hits) else None
