"""Typed settings with one environment prefix, ``RANKSERVE_``.

Owns: every ``RANKSERVE_*`` variable. Each is a field of :class:`Settings` with its constraint
and description; the environment overrides a field by its upper-case name
(``RANKSERVE_RECALL_N=300``). A value that does not parse fails at start-up with the variable,
the value and what was expected. This is the only module that reads ``RANKSERVE_*`` from the
environment (``tests/unit/test_config.py`` fails on any other read). The settings page
(``docs/reference/settings.md``) is generated from the fields: ``python -m serving.config`` prints it.
Must not touch: anything but the bottom layer (errors).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo

from serving.errors import ConfigError

__all__ = ["DATA_NAME_PATTERN", "DEMO_DATA", "ENV_PREFIX", "REPO_ROOT", "ConfigError", "Settings", "dataset_dir",
           "node_triton", "settings_reference"]

ENV_PREFIX = "RANKSERVE_"
DEMO_DATA = "demo"  # the built-in marketplace's data set; its model repository is ``Settings.model_repository``
DATA_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,47}$"


def dataset_dir(data_dir: Path, name: str) -> Path:
    """The folder of the data set ``name`` under ``data_dir``: its data versions and its own model repository."""
    return data_dir / "datasets" / name


def _home() -> Path:
    """Where data and the model repository live by default: the source checkout when rankserve
    runs from one (an editable install), else the working directory (a wheel in site-packages
    must not write next to itself)."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


REPO_ROOT = _home()


class Settings(BaseModel):
    """All of rankserve's settings. Immutable; build with :meth:`from_env`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(REPO_ROOT / ".rankserve", description="Demo data, build cache, Triton runtime dir.")
    model_repository: Path = Field(
        REPO_ROOT / "model_repository", description="Triton model repository of the demo data set (every other data "
                                                    "set has its own: data_dir/datasets/<name>/model_repository).",
    )
    data: str = Field(
        "demo", pattern=DATA_NAME_PATTERN,
        description="The data set a command acts on when it is given no --data NAME: demo (the built-in "
                    "marketplace) or one imported with rankserve data import, under data_dir/datasets/<name>/.",
    )
    state_dir: Path | None = Field(
        None, description="Where replicas write while serving (heartbeats and metrics snapshots under nodes/): a "
                          "writable volume of its own on a cluster, shared by the replicas and the command, so that "
                          "the model versions can be mounted read-only. None: beside the versions "
                          "(<model_repository>/.nodes).",
    )

    # --- HTTP ----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the HTTP and gRPC ingress binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP API.")
    grpc_port: int = Field(
        0, ge=0, le=65535,
        description="Port of the gRPC API (rankserve.v1.Ranker/Rank); 0: no gRPC. Each replica's gRPC server "
                    "then binds every interface (Ray 2.60 has no host option for it), so the default leaves it off.",
    )
    auth: Literal["off", "keys"] | None = Field(
        None, description="Who may call the API. keys: an API key (rankserve keys add) in 'Authorization: Bearer' "
                          "(gRPC: 'authorization' metadata), role rank for /v1/rank and /v1/events, admin for "
                          "everything; /healthz "
                          "and /readyz stay open. off: no key. Unset: off, allowed only while host is loopback.",
    )
    api_key: SecretStr | None = Field(
        None, description="The key the rankserve command sends to a running server with auth=keys (rankserve "
                          "models, scenarios list, ...).",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM file holding the server's certificate chain and private key: the haproxy ingress "
                          "serves HTTPS, and gRPC over TLS, on port and grpc_port (behind it, replicas stay on the "
                          "node's address). None: plain HTTP.",
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Largest accepted request body (HTTP and gRPC).")
    ingress: Literal["haproxy", "direct", "proxy"] = Field(
        "haproxy", description="How requests reach the replicas: haproxy (Ray Serve's HAProxy ingress on port and "
                               "grpc_port, load-balanced over the replicas' own servers), direct (clients reach the "
                               "replica's own server on port; one replica per node) or proxy (Serve's Python proxy). "
                               "Applies to the local Ray cluster rankserve starts.",
    )
    drain_timeout_s: float = Field(
        5.0, gt=0, le=120, description="On Ctrl-C, SIGTERM or a replica stop: how long in-flight requests may take "
                                       "to finish before the replica is killed.",
    )

    # --- API limits ----------------------------------------------------------------------
    default_k: int = Field(20, ge=1, description="k when the request gives none.")
    max_k: int = Field(1000, ge=1, description="Largest k a request may ask for.")
    recall_n: int = Field(
        500, ge=1, le=10000, description="Candidates the built-in home scenario recalls from the item index when "
                                         "none are given (a scenario file names its own counts).",
    )
    max_candidates: int = Field(2000, ge=1, description="Most candidates a request may give.")
    max_exclude: int = Field(
        1000, ge=0, le=10000, description="Most item ids a request may exclude (recall asks the index for recall_n "
                                          "plus the largest exclude list of a batch, within its search limit)."
    )
    default_timeout_ms: int = Field(2000, ge=1, description="Deadline when the request gives none.")
    max_timeout_ms: int = Field(30000, ge=1, description="Largest deadline a request may ask for.")

    # --- following the model repository -------------------------------------------------
    follow_interval_s: float = Field(
        0.1, gt=0, le=60, description="Seconds between a replica's checks of the model repository: traffic splits, "
                                      "the user tower's live version, catalogue changes and scenarios (each "
                                      "followed on its own thread).",
    )
    heartbeat_interval_s: float = Field(
        1.0, gt=0, le=5, description="Seconds between a replica's heartbeats (the versions ready in its node's "
                                     "Triton, its metrics snapshot) and its checks for new versions to load into "
                                     "that Triton; a node silent for 10 s counts as gone.",
    )

    # --- models --------------------------------------------------------------------------
    ranker_model: str = Field("ranker", min_length=1, description="Default ranking model in Triton.")
    user_tower_model: str = Field("user_tower", min_length=1, description="User tower model in Triton.")
    triton_url: str | None = Field(None, description="gRPC host:port of an existing Triton; none launches one.")
    triton_key: SecretStr | None = Field(
        None, description="The key of an existing Triton's restricted protocols (model loads, shared memory: "
                          "--grpc-restricted-protocol=model-repository,shared-memory:rankserve-triton-key=<key>); "
                          "the Triton rankserve launches gets a random one per start.",
    )
    triton_bin: Path | None = Field(
        None, description="tritonserver binary of the embedded Triton; none: the one in the nvidia-pytriton wheel."
    )
    triton_kind: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Instance kind of every model, written into config.pbtxt when rankserve starts Triton; "
                            "auto: KIND_GPU when torch sees a GPU."
    )
    triton_torch_threads: int = Field(
        1, ge=1, le=256, description="torch intra-op threads of each model instance in Triton (a config.pbtxt "
                                     "parameter written at start, read by the python-backend model)."
    )
    triton_shared_memory: Literal["auto", "on", "off"] = Field(
        "auto", description="Send large model inputs to Triton through system shared memory (/dev/shm); "
                            "auto: when Triton is on loopback (the same host).",
    )
    triton_keep_versions: int = Field(
        2, ge=1, le=100, description="Versions of each model Triton keeps loaded besides those the traffic split "
                                      "names (live, canary, shadow), newest first; the others stay on disk, "
                                      "unloaded, and a rollback loads them again before traffic moves.",
    )
    triton_timeout_s: float = Field(5.0, gt=0, description="Timeout of one Triton call.")
    triton_retries: int = Field(1, ge=0, le=5, description="Retries of a failed Triton call before degrading.")

    # --- kernels and recall --------------------------------------------------------------
    cross_backend: Literal["auto", "cupy", "numba_cuda", "numba_cpu", "numpy"] = Field(
        "auto", description="Feature-crossing backend; auto picks the fastest available."
    )
    faiss_gpu: Literal["auto", "on", "off"] = Field("auto", description="Move the FAISS index to a GPU.")
    cpu_threads: int = Field(
        1, ge=1, le=256, description="Threads of the native CPU code in each replica (FAISS search, the Numba "
                                     "crossing kernel). Where replicas share their cores with Triton, 1 keeps "
                                     "OpenMP threads from spinning between batches.",
    )

    # --- batching and load shedding ------------------------------------------------------
    batching: bool = Field(True, description="Batch requests that arrive while a batch runs (deadline-aware, "
                           "earliest deadline first); a request finding the replica idle runs at once. Off: one "
                           "Triton call per request.")
    max_batch_candidates: int = Field(
        8192, ge=1, description="Batches are bounded by their total candidates, not their request count."
    )
    batch_wait_timeout_s: float = Field(0.004, ge=0, le=1, description="Longest wait for a batch to fill.")
    max_concurrent_batches: int = Field(
        4, ge=1, le=16, description="Batches a replica runs at once (one crossing while another waits on Triton)."
    )
    num_replicas: int = Field(1, ge=1, description="Ranking replicas.")
    max_replicas_per_node: int = Field(
        0, ge=0, description="Most replicas on one Ray node (0: no limit); 1 gives each node's Triton one replica."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests Serve lets into a replica at once (its own bound, above rankserve's "
                               "admission bound so that rankserve answers the excess)."
    )
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests a replica admits (running or waiting for a batch) before it answers "
                               "503 with Retry-After (-1: unbounded)."
    )
    replica_num_cpus: float = Field(0.0, ge=0, description="CPUs Ray reserves per replica.")
    ingress_max_conn_per_replica: int = Field(
        64, ge=1, description="haproxy ingress: requests HAProxy lets into one replica at once; more wait in "
                              "HAProxy's queue, and beyond that HAProxy answers 503 itself, before any Python runs.",
    )
    ingress_max_queue_per_replica: int = Field(
        64, ge=0, description="haproxy ingress: requests that may wait in HAProxy for one replica; the next one "
                              "gets 503 with Retry-After at once.",
    )
    ingress_queue_timeout_ms: int = Field(
        50, ge=1, le=60000, description="haproxy ingress: longest wait in HAProxy's queue for a replica before a "
                                        "503 (the replica itself holds ingress_max_conn_per_replica requests: "
                                        "waiting longer in front of it only adds latency).",
    )
    read_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Longest time a client may take to send its request (headers and body): "
                                       "HAProxy answers 408 after it (and holds the slow body itself: no replica "
                                       "waits for it); a replica reading a body directly stops after it too.",
    )

    access_log: bool = Field(
        False, description="Ray Serve's access log line per request (rankserve logs errors and degraded answers "
                           "itself, with request_id)."
    )

    # --- the served log and events -------------------------------------------------------
    log_enabled: bool = Field(
        True, description="Write one record per answer into the served log (Parquet under log_dir/served/, off "
                          "the request path); off: no record (events posted to /v1/events are stored either way).",
    )
    log_sample: float = Field(1.0, ge=0, le=1, description="Share of answers the served log records.")
    log_queue: int = Field(
        100_000, ge=1, le=10_000_000, description="Records (answers or events) a replica holds for its log writer "
                                                  "per stream; when full, an answer's record is dropped and counted "
                                                  "(rankserve_log_dropped_total) and an events call is answered 503.",
    )
    log_rotate_mb: float = Field(64.0, gt=0, le=4096, description="A log file is closed (and becomes visible to "
                                                                  "readers) once it reaches this size.")
    log_rotate_s: float = Field(
        30.0, gt=0, le=3600, description="A log file is closed (and becomes visible to readers) this many seconds "
                                         "after it was opened, however small.",
    )
    log_dir: Path | None = Field(
        None, description="Where replicas write the served log and the events (served/ and events/ under it): on a "
                          "cluster, a writable volume every replica and the command share. None: the data set's "
                          "folder, data_dir/datasets/<data>/log.",
    )
    attribution_window_s: float = Field(
        1800.0, gt=0, le=7 * 86400,
        description="How long after an answer an event (click, cart, order) on one of its items still labels "
                    "that impression in rankserve log join; a later one is counted as late, not labelled.",
    )

    # --- Ray -----------------------------------------------------------------------------
    ray_address: str = Field("local", description="Ray cluster address; 'local' starts one.")

    # --- the terminal --------------------------------------------------------------------
    verbose: bool = Field(
        False, description="rankserve build and serve show everything on the terminal: their own INFO log, "
                            "Ray's actor logs, FAISS, Triton start-up and uvicorn (otherwise in a log file under "
                            "data_dir/logs), and a set-up error's traceback. The --verbose flag does the same.",
    )

    # the demo's model repository, kept by for_data() while model_repository names another data set's
    _demo_model_repository: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        if self.max_queued_requests >= self.max_ongoing_requests:
            raise ValueError(f"max_queued_requests ({self.max_queued_requests}) must be < max_ongoing_requests "
                             f"({self.max_ongoing_requests}), so that rankserve, not Serve, answers the excess")
        if self.auth is None and not _is_loopback_host(self.host):
            raise ValueError(f"host {self.host!r} serves the API beyond loopback with no API keys: set "
                             f"{ENV_PREFIX}AUTH=keys (rankserve keys add NAME --role rank), or {ENV_PREFIX}AUTH=off "
                             "to serve without keys")
        if self.tls_cert_file is not None and self.ingress != "haproxy":
            raise ValueError(f"tls_cert_file is served by the haproxy ingress; ingress is {self.ingress!r}")
        if self.default_timeout_ms > self.max_timeout_ms:
            raise ValueError(
                f"default_timeout_ms ({self.default_timeout_ms}) must be <= max_timeout_ms ({self.max_timeout_ms})"
            )
        return self

    @property
    def triton_runtime_dir(self) -> Path:
        return self.data_dir / "triton-runtime"

    @property
    def auth_mode(self) -> Literal["off", "keys"]:
        """``auth`` with its default resolved (off, which only a loopback host allows unset)."""
        return self.auth or "off"

    @property
    def nodes_dir(self) -> Path:
        """The replicas' heartbeats and metrics snapshots (``serving.repository.nodes``)."""
        return self.state_dir / "nodes" if self.state_dir else self.model_repository / ".nodes"

    @property
    def api_url(self) -> str:
        """The API's base address as a client on this machine reaches it (https with a certificate)."""
        return f"{'https' if self.tls_cert_file else 'http'}://{self.host}:{self.port}"

    @property
    def keys_file(self) -> Path:
        """The API keys (hashes only), beside the model repository: shared by the CLI and every replica."""
        return self.model_repository / ".keys.json"

    @property
    def ray_token_file(self) -> Path:
        """The local Ray cluster's auth token (made at its first start, readable by this user only)."""
        return self.data_dir / "ray" / "auth_token"

    @property
    def run_log_dir(self) -> Path:
        """The log files of build and serve (what they do not show on the terminal)."""
        return self.data_dir / "logs"

    @property
    def marketplace_path(self) -> Path:
        return self.data_dir / "data" / "marketplace.npz"

    def for_data(self, name: str) -> Settings:
        """These settings acting on the data set ``name``: ``data`` is ``name`` and ``model_repository``
        that data set's (the demo's own for ``demo``, else ``<data_dir>/datasets/<name>/model_repository``).

        Raises:
            ConfigError: ``name`` is not a data set name.
        """
        import re

        if not re.match(DATA_NAME_PATTERN, name):
            raise ConfigError(f"data set name {name!r} is invalid: expected lower-case letters, digits, '_' and '-' "
                              "(at most 48, starting with a letter)")
        demo = self._demo_model_repository or self.model_repository
        repo = demo if name == DEMO_DATA else dataset_dir(self.data_dir, name) / "model_repository"
        out = self.model_copy(update={"data": name, "model_repository": repo})
        out._demo_model_repository = demo
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``RANKSERVE_*`` variables, then explicit ``overrides``.

        Raises:
            ConfigError: naming the variable, its value and what was expected.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in cls.model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {[ENV_PREFIX + n.upper() for n in cls.model_fields]}")
        values.update(overrides)
        try:
            return cls.model_validate(_coerce(values))
        except ValidationError as err:
            first = err.errors()[0]
            if not first["loc"]:  # a check across settings: its message names them
                raise ConfigError(str(first["msg"]).removeprefix("Value error, ")) from err
            field = str(first["loc"][0])
            shown = values.get(field, "<missing>")
            src = ENV_PREFIX + field.upper() if (ENV_PREFIX + field.upper()) in env else field
            raise ConfigError(f"{src}={shown!r} is invalid: {first['msg']}") from err


def node_triton(environ: Mapping[str, str] | None = None) -> tuple[str, str | None] | None:
    """``RANKSERVE_TRITON_URL`` (and ``RANKSERVE_TRITON_KEY``) of this process's own environment, if set.

    A Serve replica runs in a worker process of its Ray node, whose environment is that node's
    (KubeRay: the worker pod's env; a local cluster: the env its ``ray start`` ran with). So a
    replica reads its node-local Triton here, and prefers it to the one the driver passed.
    """
    env = os.environ if environ is None else environ
    url = env.get(ENV_PREFIX + "TRITON_URL")
    return (url, env.get(ENV_PREFIX + "TRITON_KEY") or None) if url else None


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _coerce(values: dict[str, object]) -> dict[str, object]:
    # Environment values are strings; an empty RANKSERVE_TRITON_URL or _TRITON_BIN means "the default".
    out = dict(values)
    for name in ("triton_url", "triton_key", "triton_bin", "auth", "api_key", "tls_cert_file", "state_dir"):
        if out.get(name) == "":
            out[name] = None
    return out


_PAGE_HEAD = f"""# Settings

Every setting is an environment variable with the `{ENV_PREFIX}` prefix, declared with its type,
limits, default and description in `serving/config.py` (`Settings`). A value that does not parse or
is out of range, an unknown `{ENV_PREFIX}*` name, or settings that contradict each other
(`default_k` above `max_k`, `default_timeout_ms` above `max_timeout_ms`, `max_queued_requests` not
below `max_ongoing_requests`) stop start-up with one line naming the variable, its value and what
was expected. Booleans take `true`/`false` (or `1`/`0`); an empty `{ENV_PREFIX}TRITON_URL` or
`{ENV_PREFIX}TRITON_BIN` means its default. `<home>` is the source checkout when rankserve runs from
one, else the working directory.

This page is generated from `Settings`, in declaration order: `make docs` (or
`python -m serving.config > docs/reference/settings.md`) writes it again, and a unit test fails
when it is out of date.

| variable | type and allowed values | default | description |
|---|---|---|---|
"""

_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))
_TYPE_NAMES: dict[Any, str] = {int: "integer", float: "number", str: "string", Path: "path", bool: "`true` or `false`"}


def settings_reference() -> str:
    """The settings page: one Markdown table row per setting, in declaration order.

    Machine-independent (a default under :data:`REPO_ROOT` is shown as ``<home>/...``), so the
    committed ``docs/reference/settings.md`` equals it on every checkout.
    """
    rows = [f"| `{ENV_PREFIX}{name.upper()}` | {_allowed(info)} | {_default(info.default)} | "
            f"{_cell(info.description or '')} |" for name, info in Settings.model_fields.items()]
    return _PAGE_HEAD + "\n".join(rows) + "\n"


def _allowed(info: FieldInfo) -> str:
    """The type and allowed values of one setting, e.g. ``integer, >= 1, <= 65535``."""
    kind: Any = info.annotation
    optional = False
    if get_origin(kind) in (Union, types.UnionType) and type(None) in get_args(kind):
        optional = True
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Literal:
        text = " \\| ".join(f"`{value}`" for value in get_args(kind))
    else:
        text = _TYPE_NAMES.get(kind) or str(getattr(kind, "__name__", kind))
    for meta in info.metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(meta, cls):
                text += f", {sign} {getattr(meta, attr)}"
        if isinstance(meta, annotated_types.MinLen):
            text += ", not empty" if meta.min_length == 1 else f", at least {meta.min_length} characters"
    return text + (", optional" if optional else "")


def _default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        return f"`<home>/{value.relative_to(REPO_ROOT).as_posix()}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    sys.stdout.write(settings_reference())
