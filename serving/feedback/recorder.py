"""A replica's served log and events: what it records, and the counts of it.

Owns: :class:`FeedbackRecorder`: the replica's two streams (``served``, ``events``), the sampling of
answers, the bounded map of its recent answers (request id to model, version and role) that labels
events, and the feedback metrics (impressions, events, rows written, rows dropped). Must not touch:
the wire formats, admission (the service calls it), the Parquet files themselves
(``serving.feedback.writer``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa

from serving.config import Settings
from serving.errors import OverloadedError
from serving.feedback.events import EVENT_SCHEMA, Event, EventRow, event_rows, events_table
from serving.feedback.paths import EVENTS, SERVED, replica_name, stream_dir
from serving.feedback.served import SERVED_SCHEMA, ServedRow, served_row, served_table
from serving.feedback.writer import ParquetStream
from serving.metrics import Metrics
from serving.schemas import RankRequest, RankResponse

__all__ = ["RECENT_ANSWERS", "UNKNOWN_ROLE", "FeedbackRecorder"]

log = logging.getLogger("rankserve")

RECENT_ANSWERS = 100_000  # answers whose (model, version, role) label the events that follow them
UNKNOWN_ROLE = "unknown"  # the role label of an event whose answer this replica does not remember
R = TypeVar("R")


class FeedbackRecorder:
    """Records a replica's answers and the events posted to it.

    Args:
        settings: ``log_*`` settings; the folder is :func:`serving.feedback.paths.log_root`'s.
        metrics: the replica's metrics (impressions, events, written, dropped).
        replica: this replica's name in file names (default: host and pid).
    """

    def __init__(self, settings: Settings, metrics: Metrics, replica: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.replica = replica or replica_name()
        self._recent: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self.served: ParquetStream[ServedRow] | None = self._stream(SERVED, SERVED_SCHEMA, served_table) \
            if settings.log_enabled else None
        self.events: ParquetStream[EventRow] = self._stream(EVENTS, EVENT_SCHEMA, events_table)

    def _stream(self, kind: str, schema: pa.Schema, to_table: Callable[[Sequence[R], str], pa.Table]
                ) -> ParquetStream[R]:
        s, replica = self.settings, self.replica
        return ParquetStream(
            stream_dir(s, kind), kind, replica, schema, lambda rows: to_table(rows, replica),
            capacity_rows=s.log_queue, rotate_bytes=int(s.log_rotate_mb * 1024 * 1024), rotate_s=s.log_rotate_s,
            on_written=self.metrics.log_written.labels(kind).inc, on_dropped=self.metrics.log_dropped.labels(kind).inc,
        )

    def answered(self, req: RankRequest, res: RankResponse) -> None:
        """Count the items shown and, for a sampled answer, offer its record (never waits: a full
        buffer drops it, counted)."""
        labels = (res.model_name, str(res.model_version), res.model_role)
        self.metrics.impressions.labels(*labels).inc(len(res.items))
        self._recent[res.request_id] = labels
        if len(self._recent) > RECENT_ANSWERS:
            self._recent.popitem(last=False)
        sample = self.settings.log_sample
        if self.served is None or (sample < 1.0 and random.random() >= sample):
            return
        try:
            row = served_row(req, res, time.time_ns() // 1_000_000)
        except Exception as err:  # noqa: BLE001 - a record that cannot be made never fails the answer
            self.metrics.log_dropped.labels(SERVED).inc()
            log.warning(json.dumps({"event": "log_record_failed", "request_id": res.request_id, "error": repr(err)}))
            return
        self.served.offer((row,))

    def posted(self, events: Sequence[Event]) -> int:
        """Store ``events`` (all or none) and count them by type and by the answer they follow.

        Raises:
            OverloadedError: the events' buffer has no room for them (503, Retry-After: nothing stored).
        """
        if not self.events.offer(event_rows(events, time.time_ns() // 1_000_000)):
            raise OverloadedError(f"the event log is {self.events.pending} events behind; try again shortly",
                                  retry_after_s=1.0)
        for e in events:
            model, version, role = self._recent.get(e.request_id, ("", "", UNKNOWN_ROLE))
            self.metrics.events.labels(e.type, model, version, role).inc()
        return len(events)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what both streams hold and close their files (the replica is stopping)."""
        for stream in (self.served, self.events):
            if stream is not None:
                stream.close(timeout_s)
