"""Load schedules as pure functions (no locust import), wrapped by ``loadtest/shapes.py``.

Owns: how many users run at each moment of a constant, step or spike run. Must not touch: locust.
"""

from __future__ import annotations

__all__ = ["SHAPES", "constant", "spike", "step_ramp"]


def step_ramp(t: float, *, duration_s: float, steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> tuple[int, float] | None:
    """Users at time ``t``: each step holds for ``duration_s / len(steps)``; None ends the run."""
    if t >= duration_s:
        return None
    step = min(int(t / (duration_s / len(steps))), len(steps) - 1)
    users = steps[step]
    return users, float(users)


def spike(t: float, *, duration_s: float, base: int = 4, peak: int = 64) -> tuple[int, float] | None:
    """Baseline, a sudden jump for the middle fifth of the run, then back to baseline."""
    if t >= duration_s:
        return None
    if 0.4 * duration_s <= t < 0.6 * duration_s:
        return peak, float(peak)
    return base, float(base)


def constant(t: float, *, duration_s: float, users: int = 8) -> tuple[int, float] | None:
    """``users`` for the whole run."""
    if t >= duration_s:
        return None
    return users, float(users)


SHAPES = {"constant": constant, "step": step_ramp, "spike": spike}
