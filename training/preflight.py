"""What a build checks before it starts: is the cache usable, and does this machine have room.

The build cache is ``data_dir/build.json`` (the build's summary, with the cache ``format``), the
demo data beside it (``marketplace.npz``, ``truth.npz``, ``impressions.npz``) and both models in
the repository. A cache that cannot be read, or was written in another format, is refused with
how to rebuild it; a build that would not fit in the free memory or disk is refused before it
starts. Imports neither torch nor FAISS, so the CLI runs it before loading either.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import zipfile
from pathlib import Path
from typing import Any

from serving.errors import BuildCacheError, InsufficientResourcesError
from serving.files import version_dirs
from serving.triton.digests import DIGESTS_FILE

__all__ = ["BUILD_FORMAT", "DATA_FILES", "MODELS", "Need", "available_memory_bytes",
           "check_resources", "plan", "read_summary", "scenarios_missing", "verify_cache"]

# The layout of build.json and the data files. Caches written before the field existed are format 1.
BUILD_FORMAT = 1
MODELS = ("user_tower", "ranker")
DATA_FILES = {"marketplace.npz": ("user_cat", "user_dense", "item_cat", "item_num", "item_dense"),
              "truth.npz": ("u_lat", "v_lat", "t1", "t2", "t3", "item_bias"),
              "impressions.npz": ("user", "item", "click", "logit", "test")}
_REBUILD = "rebuild it: rankserve build --force (in a checkout: .venv/bin/rankserve build --force)"
_MB = 1 << 20


def read_summary(data_dir: Path) -> dict[str, Any] | None:
    """``build.json`` of the cache in ``data_dir``, or ``None`` when nothing was built there.

    Raises:
        BuildCacheError: it cannot be read, or another rankserve version wrote it.
    """
    path = Path(data_dir) / "build.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"a JSON {type(summary).__name__}, not an object")
        fmt = summary.get("format", 1)
    except (OSError, ValueError) as err:
        raise BuildCacheError(f"the build cache in {data_dir} is damaged: build.json: {err}", hint=_REBUILD) from err
    if fmt != BUILD_FORMAT:
        raise BuildCacheError(f"the build cache in {data_dir} was written by another rankserve version "
                              f"(cache format {fmt}; this version reads format {BUILD_FORMAT})", hint=_REBUILD)
    missing = [k for k in ("seed", "config", "quality", "versions") if k not in summary]
    if missing:
        raise BuildCacheError(f"the build cache in {data_dir} is damaged: build.json lacks {missing}", hint=_REBUILD)
    return summary


def verify_cache(data_dir: Path, repo: Path) -> None:
    """Every data file opens, holds its arrays and passes its CRC check; both models have a
    config and a version with its ``model.pt``.

    Raises:
        BuildCacheError: naming the first file at fault.
    """
    for name, keys in DATA_FILES.items():
        path = Path(data_dir) / name
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                held = {n.removesuffix(".npy") for n in z.namelist()}
        except (OSError, zipfile.BadZipFile) as err:
            raise BuildCacheError(f"the build cache in {data_dir} is damaged: {name}: {err}", hint=_REBUILD) from err
        if bad is not None or not set(keys) <= held:
            why = f"{bad} fails its CRC check" if bad else f"lacks {sorted(set(keys) - held)}"
            raise BuildCacheError(f"the build cache in {data_dir} is damaged: {name}: {why}", hint=_REBUILD)
    for model in MODELS:
        versions = version_dirs(Path(repo) / model)
        if not (Path(repo) / model / "config.pbtxt").is_file() or not versions:
            raise BuildCacheError(f"the model repository {repo} has no {model}", hint=_REBUILD)
        newest = versions[max(versions)]
        if not (newest / "model.pt").is_file():
            raise BuildCacheError(f"the model repository {repo} is damaged: {newest}/model.pt is missing",
                                  hint=_REBUILD)


def _models_built(repo: Path) -> bool:
    """Both models are in the repository, each version with the digests of its files (a build from
    before digests were recorded is built again: its versions would never load)."""
    return all((Path(repo) / m / "config.pbtxt").is_file() and version_dirs(Path(repo) / m)
               and all((v / DIGESTS_FILE).is_file() for v in version_dirs(Path(repo) / m).values()) for m in MODELS)


def scenarios_missing(summary: dict[str, Any], repo: Path) -> bool:
    """A usable cache from before scenarios (or whose scenarios were removed): the build adds the
    demo scenarios and measures them, without training again. A build without an index has no
    scenario figures to measure."""
    if not summary.get("index", True):
        return False
    return "scenarios" not in summary.get("quality", {}) or not (Path(repo) / "scenarios" / "live.json").is_file()


def plan(data_dir: Path, repo: Path, *, config: dict[str, Any], index: bool = True,
         force: bool = False) -> dict[str, Any] | None:
    """The cached build's summary when it can be used as it is; ``None`` when a build is needed,
    after checking that this machine has room for it.

    Raises:
        BuildCacheError: the cache is damaged or from another version (and ``force`` is off).
        InsufficientResourcesError: too little free memory or disk for the build.
    """
    if not force:
        summary = read_summary(data_dir)
        has_index = summary is not None and summary.get("index", True)  # builds before --no-index had one
        if summary is not None and summary["config"] == config and (has_index or not index) and _models_built(repo):
            verify_cache(data_dir, repo)
            return summary
    check_resources(data_dir, repo, Need.of(config))
    return None


class Need:
    """What a build at ``scale`` takes, measured here (2026-11-30, 2 cores): scale 0.25 peaked at
    573 MB resident, 1.43 GB of address space and wrote 14 MB; scale 1 peaked at 851 MB, 1.61 GB
    and wrote 53 MB. Linear in scale (fixed + per-scale MB), with a margin for what a run adds
    (temporary copies, threads)."""

    _MODEL = {"memory": (1.25 * 480, 1.25 * 375), "address space": (1.25 * 1370, 1.25 * 245),
              "disk": (50.0, 2 * 52.0)}

    DEFAULT_ITEMS, DEFAULT_USERS = 50_000, 20_000  # scale 1: the demo marketplace

    def __init__(self, scale: float) -> None:
        self.scale = scale

    @classmethod
    def of(cls, config: dict[str, Any]) -> Need:
        """The need of a marketplace configuration (``MarketConfig`` as a dict): data grows with the
        items, impressions and training with the users, so its scale is the larger ratio."""
        return cls(max(config.get("n_items", cls.DEFAULT_ITEMS) / cls.DEFAULT_ITEMS,
                       config.get("n_users", cls.DEFAULT_USERS) / cls.DEFAULT_USERS))

    def describe(self) -> str:
        return f"the build of {self.scale * self.DEFAULT_ITEMS:,.0f} items (scale {self.scale:g})"

    def bytes(self, what: str) -> int:
        fixed, per_scale = self._MODEL[what]
        return int((fixed + per_scale * self.scale) * _MB)

    def largest_scale(self, what: str, free_bytes: int) -> float:
        """The largest scale whose build fits in ``free_bytes`` of ``what`` (0 when none does)."""
        fixed, per_scale = self._MODEL[what]
        return max(0.0, (free_bytes / _MB - fixed) / per_scale)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_kb(path: str, key: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory_bytes() -> tuple[int, str] | None:
    """The memory a build here may still use, and what bounds it: the machine's available memory
    (``MemAvailable``) or this cgroup's limit, whichever is lower; ``None`` when neither is known."""
    found: list[tuple[int, str]] = []
    avail = _proc_kb("/proc/meminfo", "MemAvailable")
    if avail is not None:
        found.append((avail, "available memory"))
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < (1 << 60):
            found.append((max(0, cap - used), "memory left in this container's limit"))
    return min(found) if found else None


def _address_space_left() -> int | None:
    """Room left under this process's address-space limit (``ulimit -v``), if it has one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - (_proc_kb("/proc/self/status", "VmSize") or 0))


def _gb(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{math.ceil(n / _MB)} MB"


def _refusal(need: Need, what: str, free: int, remedy: str, *, where: str = "",
             source: str = "") -> InsufficientResourcesError:
    fits = need.largest_scale(what, free)
    items = math.floor(fits * Need.DEFAULT_ITEMS / 1000) * 1000
    smaller = f", or build smaller: rankserve build --items {items}" if items >= 1000 else ""
    return InsufficientResourcesError(
        f"{need.describe()} needs about {_gb(need.bytes(what))} of {what}{where}; "
        f"{_gb(free)} is free{source}", hint=remedy + smaller)


def check_resources(data_dir: Path, repo: Path, need: Need) -> None:
    """Refuse a build that would not fit in the free disk under ``data_dir`` and ``repo``, in the
    free memory, or under this process's address-space limit.

    Raises:
        InsufficientResourcesError: saying how much is needed, how much is free, and what to do.
    """
    for where in dict.fromkeys((_existing(data_dir), _existing(repo))):
        free = shutil.disk_usage(where).free
        if free < need.bytes("disk"):
            raise _refusal(need, "disk", free, "free some space or point RANKSERVE_DATA_DIR and "
                           "RANKSERVE_MODEL_REPOSITORY at a larger disk", where=f" under {where}")
    memory = available_memory_bytes()
    if memory is not None and memory[0] < need.bytes("memory"):
        raise _refusal(need, "memory", memory[0], "close other programs or raise the limit",
                       source=f" ({memory[1]})")
    room = _address_space_left()
    if room is not None and room < need.bytes("address space"):
        raise _refusal(need, "address space", room, "raise the limit (ulimit -v unlimited)",
                       source=" under this process's limit (ulimit -v)")


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing parent (where a directory about to be made would live)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return p
