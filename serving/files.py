"""Files of the model repository that several layers write or list: one way to do each.

Owns: atomic replacement of a small text file (traffic files, ``config.pbtxt``) and the listing of
a model's numbered version directories. Must not touch: anything of rankserve (bottom layer).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_text", "version_dirs"]


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numbered version directories of one model (temp dirs starting with '.' are ignored)."""
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}
