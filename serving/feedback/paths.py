"""Where the served log and the events live.

Owns: the log folder of a data set (:func:`log_root`), its two streams' folders and the names of
their files. Must not touch: writing or reading the files.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from serving.config import Settings, dataset_dir

__all__ = ["EVENTS", "SERVED", "log_root", "replica_name", "stream_dir"]

SERVED = "served"
EVENTS = "events"


def log_root(settings: Settings) -> Path:
    """``settings.log_dir`` when set (a cluster's shared writable volume), else ``log/`` in the
    folder of the data set ``settings.data`` (the demo's included)."""
    return settings.log_dir if settings.log_dir is not None else dataset_dir(settings.data_dir, settings.data) / "log"


def stream_dir(settings: Settings, kind: str) -> Path:
    """The folder of one stream: ``<log_root>/served/`` or ``<log_root>/events/``."""
    return log_root(settings) / kind


def replica_name() -> str:
    """This process's name in file names, unique per replica: host and pid (the host's characters
    other than letters, digits, '.' and '_' become '_')."""
    return f"{re.sub(r'[^A-Za-z0-9._]', '_', socket.gethostname())}.{os.getpid()}"
