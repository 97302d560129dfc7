"""The pipeline's live state: one immutable snapshot of everything a replica follows, swapped whole.

Owns: :class:`LiveState` (the traffic split of every ranking model, the recall stage, that is the
user tower version with its own index, the catalogue, and the scenarios) and :class:`LiveCell`
(the current snapshot and its publication). A follower builds its new part off to the side and
publishes a new snapshot with one reference assignment, under a lock only so that two followers
never lose each other's change: each replaces its own part of the current snapshot. A request
reads one snapshot from ``prepare`` to its answer, so the model, catalogue and scenario versions
it reports belong together.

One part is changed in place: the recall stage's item index (and the item vectors beside it)
takes the items of a catalogue change by upsert, before the catalogue that names them is
published. Copying an index of millions of items for each change would cost what the catalogue's
spare rows save; a search only ever finds items added, and the snapshot's catalogue drops those
of a later change (:meth:`serving.pipeline.catalogue.Catalogue.servable`). Must not touch: files
(the followers, ``serving.repository.followers``, read them), the stages.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from serving.errors import ModelNotFoundError, ScenarioNotFoundError
from serving.pipeline.catalogue import Catalogue
from serving.pipeline.recall import Recall
from serving.pipeline.routing import Traffic
from serving.pipeline.scenario import DEFAULT_SCENARIO, Scenario

__all__ = ["LiveCell", "LiveState"]


@dataclass(frozen=True, eq=False)  # equal only to itself: batches group requests by their snapshot
class LiveState:
    """Everything the pipeline follows, at one moment. Build a changed one with :meth:`replace`
    or :meth:`with_scenarios`; never assign into one.

    Args:
        traffic: the traffic split of every ranking model.
        recall: the user tower of its live version with that version's index.
        catalogue: the items at one catalogue change.
        scenarios: the served scenarios by name (``home`` always among them).
        home: the built-in ``home``, served when the repository has none.
    """

    traffic: Mapping[str, Traffic]
    recall: Recall
    catalogue: Catalogue
    scenarios: Mapping[str, Scenario]
    home: Scenario

    @classmethod
    def first(cls, traffic: Mapping[str, Traffic], recall: Recall, catalogue: Catalogue, home: Scenario) -> LiveState:
        """The state a replica starts with: the built-in ``home`` its only scenario."""
        return cls(MappingProxyType(dict(traffic)), recall, catalogue, MappingProxyType({DEFAULT_SCENARIO: home}),
                   home)

    def replace(self, *, traffic: Mapping[str, Traffic] | None = None, recall: Recall | None = None,
                catalogue: Catalogue | None = None) -> LiveState:
        """A new state with these parts and this one's others."""
        return dataclasses.replace(self, traffic=self.traffic if traffic is None else MappingProxyType(dict(traffic)),
                                   recall=self.recall if recall is None else recall,
                                   catalogue=self.catalogue if catalogue is None else catalogue)

    def with_scenarios(self, scenarios: Mapping[str, Scenario]) -> LiveState:
        """A new state serving ``scenarios``; without a ``home`` among them, the built-in one."""
        return dataclasses.replace(self, scenarios=MappingProxyType({DEFAULT_SCENARIO: self.home, **scenarios}))

    def scenario(self, name: str | None) -> Scenario:
        """The served scenario ``name`` (None: ``home``).

        Raises:
            ScenarioNotFoundError: not served here (404).
        """
        try:
            return self.scenarios[name or DEFAULT_SCENARIO]
        except KeyError:
            raise ScenarioNotFoundError(f"unknown scenario {name!r}; served: {sorted(self.scenarios)}",
                                        field="scenario") from None

    def split(self, model: str) -> Traffic:
        """The traffic split of ranking model ``model``.

        Raises:
            ModelNotFoundError: not a ranking model here (404).
        """
        try:
            return self.traffic[model]
        except KeyError:
            raise ModelNotFoundError(f"unknown model {model!r}; served: {sorted(self.traffic)}",
                                     field="model") from None


class LiveCell:
    """Holds the current :class:`LiveState`; followers publish new ones through :meth:`publish`."""

    def __init__(self, state: LiveState) -> None:
        self._state = state
        self._lock = threading.Lock()

    @property
    def current(self) -> LiveState:
        """The snapshot requests read now (one reference read: take it once per request)."""
        return self._state

    def publish(self, update: Callable[[LiveState], LiveState | None]) -> bool:
        """Swap in ``update(current)``. ``update`` runs under the lock and must be quick: it puts
        a part built off to the side into the current snapshot, or returns None when that part no
        longer fits it (e.g. an index caught up to a catalogue since replaced): nothing changes,
        and the follower builds again. Returns whether a new snapshot went live."""
        with self._lock:
            new = update(self._state)
            if new is None:
                return False
            self._state = new
            return True
