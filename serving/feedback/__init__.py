"""What users were shown and what they did: the served log, the events, and what is built on them.

Owns: the package's modules (one each): ``paths`` (where the log lives), ``writer`` (one Parquet
stream per kind and replica, off the request path), ``served`` (the served record), ``events``
(event validation and rows), ``recorder`` (a replica's two streams and their metrics), and the
join of the log with the events into impressions and the canary's judgement on them (``join``,
``judge``, ``commands``). Must not touch: the service, the wire formats, Ray.
"""

from __future__ import annotations

__all__: list[str] = []
