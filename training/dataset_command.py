"""What ``rankserve train NAME`` and ``rankserve features NAME`` do, apart from their printing.

Owns: choosing the data set (the positional NAME, else ``--data``, else ``RANKSERVE_DATA``, else
``demo``), refusing one that was never imported (a usage problem, exit 2), refusing to train
``demo`` into the demo's model repository unless its live data set version is the one
``rankserve build`` imported (``build.json``'s ``data_set_version``), which declaration the
ranker trains on or a feature table is written with (a given file, else the data set's live
ranker's ``features.yaml``, else ``serving.data.default_features``), and the summary each
returns. Must not touch: argument parsing and the terminal (``serving.cli``), the training loops
(``training.dataset_train``), the repository's layout (``training.dataset_export``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.config import DEMO_DATA
from serving.data.default_features import default_features
from serving.data.features import FeatureSpec, load_features
from serving.data.store import DataSet, DataSetStore
from serving.errors import ConfigError, SetupError

if TYPE_CHECKING:
    from serving.config import Settings

__all__ = ["data_set_name", "live_features", "train_named", "write_feature_table"]


def data_set_name(settings: Settings, name: str | None, data: str | None) -> str:
    """The data set a command acts on: ``name`` (positional), else ``data`` (``--data``), else the settings'."""
    return name or data or settings.data or DEMO_DATA


def _imported(settings: Settings, name: str) -> tuple[DataSet, int]:
    """The data set ``name`` and its live version.

    Raises:
        ConfigError: ``name`` is no data set name, or nothing was imported under it (exit 2).
    """
    from serving.repository.datasets import check_imported

    ds = DataSetStore.of(settings).dataset(name)  # refuses a name that is no data set name
    return ds, check_imported(settings.for_data(name))


def _check_demo(settings: Settings, ds: DataSet, version: int) -> None:
    """Raise ConfigError (exit 2) unless the data set ``demo``'s live ``version`` is the one the
    build imported, or one made from it by adding joined impressions (``rankserve log join``):
    the demo's model repository is the build's, and a version imported by hand (other data under
    the name ``demo``) would put models of that data beside the demo's."""
    from training.preflight import read_summary

    data_dir = settings.marketplace_path.parent
    built = (read_summary(data_dir) or {}).get("data_set_version")
    if built is not None and built in _lineage(ds, version):
        return
    repo = settings.for_data(DEMO_DATA).model_repository
    why = (f"its live version {version} is not the one rankserve build imported ({built})" if built is not None
           else f"no build in {data_dir} imported it (built by an older rankserve, or not built)")
    raise ConfigError(f"rankserve train {DEMO_DATA} writes into the demo's model repository {repo}, which only "
                      f"the demo data set that rankserve build imported may train: {why}",
                      hint="import your own data under another name (rankserve data import NAME ...) and train "
                           "that; rankserve build --force rebuilds and re-imports the demo")


def _lineage(ds: DataSet, version: int) -> list[int]:
    """``version`` and the versions it was made from (``base_version`` in each manifest), newest first."""
    out = [version]
    while len(out) <= len(ds.versions()):
        base = ds.manifest(out[-1]).get("base_version")
        if not isinstance(base, int):
            break
        out.append(base)
    return out


def live_features(repo: Path) -> Path | None:
    """The ``features.yaml`` of the live ranker version in ``repo`` (None: no ranker, or one without)."""
    from serving.repository.registry import ModelRegistry
    from training.dataset_export import FEATURES_YAML

    registry = ModelRegistry(repo)
    if not (Path(repo) / "ranker").is_dir() or not registry.versions("ranker"):
        return None
    path = Path(repo) / "ranker" / str(registry.traffic("ranker").live) / FEATURES_YAML
    return path if path.is_file() else None


def _declaration(settings: Settings, name: str, ds: DataSet, given: Path | None) -> tuple[FeatureSpec, str]:
    path = given or live_features(settings.for_data(name).model_repository)
    if path is not None:
        return load_features(path), str(path)
    return default_features(ds.schema()), "default"


def train_named(settings: Settings, name: str, *, epochs: int, seed: int,
                features: Path | None = None) -> dict[str, Any]:
    """Train the default models of the data set ``name`` on its live version (the ranker over
    ``features``, default: the schema's default declaration) and export them into its model
    repository; the summary (figures, versions, where).

    Raises:
        ConfigError: no such data set, or ``demo`` not as the build imported it. SchemaError: the
            declaration or the impressions do not allow training. IntegrityError: the data set's files are damaged.
    """
    from training.dataset_export import export_trained
    from training.dataset_train import train_data_set

    if epochs < 1:
        raise ConfigError(f"--epochs must be an integer >= 1, got {epochs}")
    t0 = time.perf_counter()
    ds, version = _imported(settings, name)
    if name == DEMO_DATA:
        _check_demo(settings, ds, version)
    tables, impressions = ds.tables(version), ds.impressions(version)
    spec, source = (load_features(features), str(features)) if features is not None \
        else (default_features(tables.schema), "default")
    trained = train_data_set(tables, impressions, spec, epochs=epochs, seed=seed)
    repo = settings.for_data(name).model_repository
    versions = export_trained(repo, trained, data_set=name, data_version=version, seed=seed, epochs=epochs)
    return {"data_set": name, "data_version": version, "features": source, "metrics": trained.metrics,
            "versions": versions, "model_repository": str(repo), "seconds": round(time.perf_counter() - t0, 1)}


def write_feature_table(settings: Settings, name: str, features: Path | None, out: Path) -> dict[str, Any]:
    """The training table of the data set ``name``'s live impressions (``feature_table``) written
    to ``out`` (Parquet); the summary (rows, widths, the declaration used, where).

    Raises:
        ConfigError: no such data set. FeaturesError: the declaration does not resolve.
        SetupError: ``out`` cannot be written.
    """
    import pyarrow.parquet as pq

    from kernels import get_crosser
    from serving.data.assembly import feature_table

    ds, version = _imported(settings, name)
    spec, source = _declaration(settings, name, ds, features)
    table = feature_table(ds.tables(version), ds.impressions(version), spec, get_crosser("auto"))
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
    except OSError as err:
        raise SetupError(f"cannot write {out}: {err.strerror or err}") from err
    first = table.slice(0, 1)
    widths = {c: len(first.column(c)[0].as_py()) if table.num_rows else 0 for c in ("cat", "dense")}
    return {"data_set": name, "data_version": version, "features": source, "rows": table.num_rows, **widths,
            "out": str(out)}
