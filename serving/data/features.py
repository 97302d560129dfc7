"""A ranker's feature declaration (``features.yaml``): its inputs by schema name, resolved against
a data set into the plan the assembly kernels run (``kernels.spec.FeaturePlan``).

Owns: the declaration's grammar (one class per form, registered by name), its resolution against a
data set's schema and vocabularies, and ``features.json`` (what a model's embeddings need).
Must not touch: the arrays of a batch (``serving.data.assembly`` assembles them), models, Triton,
files other than the declaration and ``features.json``.

The form (each entry one output, or ``width`` outputs for ``prod``)::

    cat:                                 # int64 ids, one embedding table each
      - user.region                      # a categorical column's code (0: out of vocabulary)
      - context.device
      - cross(user.region, item.category, buckets=100003)   # hash(a, b, salt) mod buckets
    dense:                               # float32
      - item.price                       # a numeric column, standardised
      - dot(user.taste, item.content)    # a user vector dotted with an item vector
      - prod(user.taste, item.content)   # their element-wise product (width outputs)
      - mean(context.recent, item.content)  # the mean content of the recent items, dotted with the
                                            # candidate's (0 when the sequence is empty)

A cross's salt is its index among the declaration's crosses (0, 1, ...), so a declaration whose
crosses come in the same order hashes the same ids to the same buckets.

The request side of a batch (``q_cat``, ``q_num``, ``q_vec``) holds the user's categoricals then
the context's, the user's numerics then the context's (both in schema order), and the user's
vectors (schema order) then one block per ``mean`` entry; the item side is the data set's item
tables. Resolution turns each name into a column of those tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator
from pydantic import ValidationError as PydanticValidationError

from kernels.spec import (
    DENSE_DOT,
    DENSE_PROD,
    SIDE_ITEM,
    SIDE_Q,
    CatOp,
    DenseOp,
    FeaturePlan,
    cat_column,
    cat_cross,
    dense_column,
    dense_vectors,
)
from serving.data.schema import Schema, parse_yaml_model
from serving.errors import FeaturesError
from serving.files import atomic_write_text

__all__ = ["DEMO_FEATURES", "FEATURES_JSON", "FeatureSpec", "SchemaTables", "load_features", "parse_features", "read_features_json",
           "resolve", "write_features_json"]

FEATURES_JSON = "features.json"
# The demo marketplace's ranker as a declaration (its plan is the layout the demo ranker was trained on)
DEMO_FEATURES = Path(__file__).with_name("demo_features.yaml")
_NAME = re.compile(r"^(user|item|context)\.[A-Za-z_][A-Za-z0-9_]*$")
_CALL = re.compile(r"^([a-z_]+)\((.*)\)$", re.S)
_MAX_BUCKETS = 2**31 - 1


class SchemaTables(Protocol):
    """What resolution reads of a data set (``serving.data.tables.DataTables`` has it)."""

    @property
    def schema(self) -> Schema: ...

    @property
    def vocab(self) -> Mapping[str, Mapping[Any, int]]: ...


@dataclass
class _Layout:
    """Where each schema name lives in a batch's tables, and the ``mean`` blocks found so far."""

    schema: Schema
    vocab: Mapping[str, Mapping[Any, int]]
    means: list[tuple[int, int, int]] = field(default_factory=list)

    def kind(self, name: str) -> tuple[str, str]:
        """(side, kind) of ``name``, or FeaturesError naming it."""
        found = self.schema.name_index.get(name)
        if found is not None:
            return found
        if name == f"item.{self.schema.items.popularity}":
            raise FeaturesError(f"{name} is the popularity column; declare it under items.numeric to use it as a "
                                "feature")
        raise FeaturesError(f"unknown name {name!r} (not a column of the data set's schema)")

    def require(self, name: str, want: str, sides: tuple[str, ...] = ("user", "item", "context")) -> str:
        """The side of ``name`` when it is a ``want`` column of one of ``sides``."""
        side, kind = self.kind(name)
        if kind != want or side not in sides:
            expected = f"{', '.join(sides[:-1])} or {sides[-1]}" if len(sides) > 1 else sides[0]
            raise FeaturesError(f"{name} is {_a(side)} {side} {kind} column; expected {_a(expected)} {expected} {want} "
                                "column")
        return side

    def ref(self, name: str, kind: str) -> tuple[int, int]:
        """(side, column) of a ``categorical`` name in ``q_cat`` or ``item_cat``, or of a
        ``numeric`` one in ``q_num`` or ``item_num``."""
        side, column = self.require(name, kind), name.split(".", 1)[1]
        if side == "item":
            return SIDE_ITEM, getattr(self.schema.items, kind).index(column)
        users: tuple[str, ...] = getattr(self.schema.users, kind)
        return SIDE_Q, users.index(column) if side == "user" else len(users) + getattr(self.schema.context, kind).index(column)

    def vector(self, name: str, side: str) -> tuple[int, int]:
        """(offset, width) of a ``side`` vector column in its table (``user_vec`` or ``item_vec``)."""
        self.require(name, "vector", (side,))
        vectors = (self.schema.users if side == "user" else self.schema.items).vectors
        column = name.split(".", 1)[1]
        names = list(vectors)
        return sum(vectors[n] for n in names[:names.index(column)]), vectors[column]

    def cardinality(self, name: str) -> int:
        return len(self.vocab.get(name, {})) + 1

    def add_mean(self, sequence: str, item_offset: int, width: int) -> int:
        """A ``mean`` block appended to ``q_vec``; returns its offset there."""
        self.require(sequence, "sequence", ("context",))
        offset = sum(self.schema.users.vectors.values()) + sum(w for _, _, w in self.means)
        self.means.append((list(self.schema.context.sequences).index(sequence.split(".", 1)[1]), item_offset, width))
        return offset


def _a(word: str) -> str:
    return "an" if word[0] in "aeio" else "a"  # sides and kinds: "an item", "a user"


# ---------------------------------------------------------------------------------------- forms


class _Form:
    """A form an entry may call: ``name(side.column, ..., keyword=N)``."""

    names: ClassVar[int] = 2
    keywords: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def of(cls, names: list[str], kw: dict[str, str]) -> Any:
        return cls(*names)


@dataclass(frozen=True)
class _Column:
    """``side.column``: a categorical column's code (cat) or a numeric column (dense)."""

    name: str

    def cat_op(self, layout: _Layout, salt: int) -> tuple[CatOp, int]:
        return cat_column(*layout.ref(self.name, "categorical")), layout.cardinality(self.name)

    def dense_op(self, layout: _Layout) -> DenseOp:
        return dense_column(*layout.ref(self.name, "numeric"))


@dataclass(frozen=True)
class _Cross(_Form):
    """``cross(a, b, buckets=N)``: two categorical columns of any side, hashed into N buckets."""

    a: str
    b: str
    buckets: int
    keywords: ClassVar[tuple[str, ...]] = ("buckets",)

    @classmethod
    def of(cls, names: list[str], kw: dict[str, str]) -> _Cross:
        buckets = kw.get("buckets", "")
        if not buckets.isdigit() or not 1 <= int(buckets) <= _MAX_BUCKETS:
            raise ValueError(f"cross needs buckets=N, N an integer in [1, 2**31-1], got {buckets or 'none'}")
        return cls(names[0], names[1], int(buckets))

    def cat_op(self, layout: _Layout, salt: int) -> tuple[CatOp, int]:
        a, b = layout.ref(self.a, "categorical"), layout.ref(self.b, "categorical")
        return cat_cross(a, b, self.buckets, salt), self.buckets


@dataclass(frozen=True)
class _Dot(_Form):
    """``dot(user.v, item.w)``: one output (``prod``: the element-wise product, width outputs)."""

    a: str
    b: str
    kind: ClassVar[int] = DENSE_DOT

    def dense_op(self, layout: _Layout) -> DenseOp:
        (qa, wa), (ib, wb) = layout.vector(self.a, "user"), layout.vector(self.b, "item")
        if wa != wb:
            raise FeaturesError(f"widths differ: {self.a} is {wa} wide, {self.b} {wb}")
        return dense_vectors(self.kind, qa, ib, wa)


@dataclass(frozen=True)
class _Prod(_Dot):
    kind: ClassVar[int] = DENSE_PROD


@dataclass(frozen=True)
class _Mean(_Form):
    """``mean(context.seq, item.v)``: the mean ``v`` of the sequence's items, dotted with the
    candidate's ``v`` (0 for an empty sequence)."""

    sequence: str
    vector: str

    def dense_op(self, layout: _Layout) -> DenseOp:
        offset, width = layout.vector(self.vector, "item")
        return dense_vectors(DENSE_DOT, layout.add_mean(self.sequence, offset, width), offset, width)


# The forms each list takes, by the name an entry calls.
CAT_FORMS: dict[str, type[_Form]] = {"cross": _Cross}
DENSE_FORMS: dict[str, type[_Form]] = {"dot": _Dot, "prod": _Prod, "mean": _Mean}


def _parse_entry(entry: str, forms: Mapping[str, type[_Form]]) -> Any:
    """The form an entry is written in (ValueError naming the entry when it is none)."""
    text = entry.strip()
    if _NAME.match(text):
        return _Column(text)
    call = _CALL.match(text)
    expected = f"expected side.column or one of {', '.join(f'{f}(...)' for f in forms)}"
    form = forms.get(call.group(1)) if call else None
    if call is None or form is None:
        split = " (a comma inside [...] splits a YAML list: write one entry per line, '- cross(...)')" \
            if text.count("(") != text.count(")") else ""
        raise ValueError(f"{entry!r} is in no known form: {expected}{split}")
    args = [a.strip() for a in call.group(2).split(",")]
    names = [a for a in args if "=" not in a]
    kw = {k.strip(): v.strip() for k, v in (a.split("=", 1) for a in args if "=" in a)}
    if len(names) != form.names or not all(_NAME.match(n) for n in names) or set(kw) - set(form.keywords):
        keywords = "".join(f", {k}=N" for k in form.keywords)
        raise ValueError(f"{entry!r}: {call.group(1)} takes {form.names} names (side.column){keywords}")
    try:
        return form.of(names, kw)
    except ValueError as err:
        raise ValueError(f"{entry!r}: {err}") from err


def _cat_entry(entry: str) -> str:
    _parse_entry(entry, CAT_FORMS)
    return entry


def _dense_entry(entry: str) -> str:
    _parse_entry(entry, DENSE_FORMS)
    return entry


class FeatureSpec(BaseModel):
    """A ranker's feature declaration (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cat: list[Annotated[str, AfterValidator(_cat_entry)]] = []
    dense: list[Annotated[str, AfterValidator(_dense_entry)]] = []

    @field_validator("cat", "dense")
    @classmethod
    def _once_each(cls, entries: list[str]) -> list[str]:
        twice = sorted({e for e in entries if entries.count(e) > 1})
        if twice:
            raise ValueError(f"declared twice: {twice}")
        return entries


def parse_features(text: str, source: str = "features") -> FeatureSpec:
    """A feature declaration from YAML text.

    Raises:
        FeaturesError: the YAML does not parse, or an entry is in no known form (naming it).
    """
    spec = parse_yaml_model(text, FeatureSpec, FeaturesError, source=source, root="features",
                            mapping="a feature declaration is a mapping with cat and dense lists")
    if not spec.cat and not spec.dense:
        raise FeaturesError(f"{source}: declares no feature (cat and dense are both empty)")
    return spec


def load_features(path: Path) -> FeatureSpec:
    """The feature declaration in the file ``path`` (FeaturesError when unreadable or refused)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FeaturesError(f"cannot read the feature declaration {path}: {err}") from err
    return parse_features(text, str(path))


def resolve(spec: FeatureSpec, tables: SchemaTables) -> FeaturePlan:
    """The plan of ``spec`` over a data set: each name's column, each cat output's cardinality
    (vocabulary size + 1, or a cross's buckets), the dense outputs' columns.

    Raises:
        FeaturesError: an unknown name, a name of the wrong kind (a vector where a categorical is
            needed...), or vectors whose widths differ, naming the entry (``field``: ``cat[3]``).
    """
    layout = _Layout(tables.schema, tables.vocab)
    cat_ops: list[CatOp] = []
    cards: list[int] = []
    dense_ops: list[DenseOp] = []
    crosses = 0
    for where, entries in (("cat", spec.cat), ("dense", spec.dense)):
        for k, entry in enumerate(entries):
            form = _parse_entry(entry, CAT_FORMS if where == "cat" else DENSE_FORMS)
            try:
                if where == "dense":
                    dense_ops.append(form.dense_op(layout))
                    continue
                op, card = form.cat_op(layout, crosses)
            except FeaturesError as err:
                raise FeaturesError(f"{where}[{k}] {entry!r}: {err.message}", field=f"{where}[{k}]") from err
            crosses += isinstance(form, _Cross)
            cat_ops.append(op)
            cards.append(card)
    return FeaturePlan.of(cat_ops, dense_ops, cards, layout.means)


def write_features_json(folder: Path, spec: FeatureSpec, plan: FeaturePlan) -> Path:
    """``features.json`` beside a model: the declaration, the widths, each cat output's cardinality
    and the plan (what the model's embeddings and its input signature need)."""
    doc = {"cat": spec.cat, "dense": spec.dense, "cat_width": plan.n_cat, "dense_width": plan.n_dense,
           "cardinalities": plan.cardinalities.tolist(), "plan": plan.to_dict()}
    path = Path(folder) / FEATURES_JSON
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def read_features_json(path: Path) -> tuple[FeatureSpec, FeaturePlan]:
    """The declaration and plan a ``features.json`` holds (FeaturesError when it cannot be read)."""
    try:
        doc = json.loads(Path(path).read_text())
        return FeatureSpec(cat=doc["cat"], dense=doc["dense"]), FeaturePlan.from_dict(doc["plan"])
    except (OSError, ValueError, KeyError, TypeError, PydanticValidationError) as err:
        raise FeaturesError(f"cannot read {path}: {err}") from err
