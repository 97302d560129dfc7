"""An imported data set about to be served: the check that it can be, its default scenarios.

Owns: the start-up check of an imported data set (:func:`check_servable`: imported
(:func:`check_imported`), with a trained ``ranker`` and ``user_tower``), and the default
scenarios written into its repository when absent (:func:`install_default_scenarios`). Must not
touch: the demo's build (``training.build``), a data set's versions (read only here), model
versions, traffic.

An imported data set is never rebuilt, overwritten or deleted by serving: its versions are only
read, and only scenarios the repository does not hold yet are written.
"""

from __future__ import annotations

from typing import Any

from serving.config import Settings
from serving.data.schema import Schema
from serving.data.store import DataSetStore
from serving.data.tables import DataTables
from serving.errors import ConfigError, SetupError
from serving.pipeline.catalogue import Catalogue
from serving.repository.registry import ModelRegistry
from serving.repository.scenarios import ScenarioStore

__all__ = ["check_imported", "check_servable", "dataset_facts", "default_scenarios", "install_default_scenarios"]


def check_imported(settings: Settings) -> int:
    """The live version of the imported data set ``settings.data`` (not the demo).

    Raises:
        ConfigError: never imported (the hint names ``rankserve data import NAME``), or its live
            pointer is damaged.
    """
    name = settings.data
    store = DataSetStore.of(settings)
    ds = store.dataset(name)
    try:
        version = ds.live_version()
    except SetupError as err:
        raise ConfigError(err.message, hint=err.hint) from err
    if version is None:
        raise ConfigError(f"no data set {name!r} under {ds.root.parent} (imported: {', '.join(store.names()) or 'none'})",
                          hint=f"import it first: rankserve data import {name} --schema ... --items ... --users ... "
                               "--impressions ...")
    return version


def dataset_facts(settings: Settings) -> dict[str, Any]:
    """What the start-up screen says of the imported data set ``settings.data``: its live version,
    when it was imported, its rows and the impressions' click rate (``None`` when it does not read)."""
    ds = DataSetStore.of(settings).dataset(settings.data)
    manifest = ds.manifest()
    rows = manifest.get("rows", {})
    return {"data_set": settings.data, "version": manifest.get("version"), "built_at": manifest.get("created"),
            "ctr": ds.click_rate(manifest.get("version")), "impressions": rows.get("impressions"),
            "config": {"n_items": rows.get("items", 0), "n_users": rows.get("users", 0)}}


def check_servable(settings: Settings) -> None:
    """An imported data set (``settings.data``, not the demo) can be served: it was imported and its
    repository has a ranker and a user tower version.

    Raises:
        ConfigError: never imported, or not trained (the hint names ``rankserve train NAME``).
    """
    name = settings.data
    check_imported(settings)
    registry = ModelRegistry(settings.model_repository)
    missing = [m for m in (settings.ranker_model, settings.user_tower_model) if not registry.versions(m)]
    if missing:
        raise ConfigError(f"data set {name!r} has no trained {' or '.join(missing)} in {settings.model_repository}",
                          hint=f"train its models first: rankserve train {name}")


def default_scenarios(schema: Schema, ranker: str) -> dict[str, str]:
    """The scenario files of an imported data set: ``home`` (the user's nearest items and the
    popular ones) and ``similar`` (the seed item's nearest items by the schema's first item vector,
    else in the two-tower index, never the seed)."""
    space = "content" if schema.items.vectors else "embedding"
    home = f"""\
# The data set's home feed: the user's nearest items blended with what is popular.
name: home
description: Recommended for you, the user's nearest items blended with the most popular ones.
sources:
  - kind: given
    mode: exclusive
  - kind: user_to_item
    count: 450
  - kind: popular
    within: all
    count: 50
ranker: {ranker}
"""
    similar = f"""\
# Similar items: the seed item's ({space}) nearest items, ranked for the user, never the seed.
name: similar
description: The seed item's nearest items ranked for the user, never the seed.
sources:
  - kind: item_to_item
    count: 200
    space: {space}
filters:
  exclude_seed: true
ranker: {ranker}
limits:
  default_k: 12
  max_k: 50
  max_candidates: 200
"""
    return {"home": home, "similar": similar}


def install_default_scenarios(settings: Settings, tables: DataTables) -> list[str]:
    """Write the default scenarios the data set's repository does not hold yet; returns their names."""
    store = ScenarioStore(settings.model_repository)
    have = set(store.names())
    registry = ModelRegistry(settings.model_repository)
    groups = Catalogue.initial(tables).group_counts()
    written = []
    for name, text in default_scenarios(tables.schema, settings.ranker_model).items():
        if name not in have:
            store.apply(text, settings, registry, groups)
            written.append(name)
    return written
