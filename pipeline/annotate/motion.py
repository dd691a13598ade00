"""Ego-motion targets (``motion.npy``) read from the privileged state of each step."""

from __future__ import annotations

import numpy as np

from pipeline.data import schema
from pipeline.errors import SemoreError

STATE_FIELDS = schema.MOTION_STATE_FIELDS


def motion_targets(state: dict, where: str = "") -> np.ndarray:
    """float32 (len(schema.MOTION_TARGETS),) in schema order; one-line error if a field is missing."""
    values = []
    for name, _unit in schema.MOTION_TARGETS:
        field = STATE_FIELDS[name]
        value = state.get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SemoreError(
                f"{where}state.json field {field!r} is {value!r}: expected a number (motion target {name!r})"
            )
        values.append(value)
    return np.asarray(values, dtype=np.float32)


def manifest_fields() -> dict:
    """Manifest entries: ``motion_targets`` ([name, unit] in motion.npy order) and their state fields."""
    return {
        "motion_targets": [[name, unit] for name, unit in schema.MOTION_TARGETS],
        "motion_target_fields": {name: STATE_FIELDS[name] for name, _unit in schema.MOTION_TARGETS},
    }
