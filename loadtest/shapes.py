"""Locust load shapes: ``--shape step`` (ramp to saturation) and ``--shape spike``.

Owns: the locust shape class that follows ``loadtest.schedule``. Must not touch: the request mix.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtest.schedule import SHAPES

__all__ = ["ScheduledShape"]


class ScheduledShape(LoadTestShape):
    """Follows the schedule named by ``--shape`` (constant, step, spike) for ``--shape-duration-s``."""

    def tick(self):  # type: ignore[no-untyped-def]
        opts = self.runner.environment.parsed_options
        fn = SHAPES[opts.shape]
        kwargs = {"users": int(opts.shape_users)} if opts.shape == "constant" else {}
        return fn(self.get_run_time(), duration_s=float(opts.shape_duration_s), **kwargs)
