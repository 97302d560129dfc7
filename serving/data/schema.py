"""A data set's declared schema: its items, users, request context and impressions, by column name.

Owns: the schema file (YAML), its validation (unknown keys refused with the path of the key,
every name declared once, groups and popularity among the declared columns, the impressions'
columns named), the names a ranker's features and a scenario use (``item.brand``, ``user.age``,
``context.device``, ``context.recent``), and the reading of a YAML mapping into a model, which the
feature declaration shares (:func:`parse_yaml_model`). Must not touch: files other than the one it
parses, encoding (``serving.data.encode``), models.

The form every data set uses (the demo's too)::

    items:
      id: sku                  # string or integer column; the API speaks these ids
      categorical: [brand, category, store]
      numeric: [price, rating]
      vectors: {content: 64}   # fixed-width list<float> columns
      popularity: sales_7d     # numeric column used by popular sources
      groups: [store, category]  # what scenarios may restrict or diversify by
    users:
      id: customer
      categorical: [region, tier]
      numeric: [age]
      vectors: {}              # optional
    context:                   # what a request may carry
      categorical: [device]
      sequences: {recent: {of: items, max_len: 20}}
    impressions:               # the training log's columns
      user: customer
      item: sku
      label: clicked           # 0/1
      time: ts                 # optional; the holdout is the latest 10% by time when present

A numeric column may hold nulls: each is filled with the column's declared ``fill`` value, or its
median (the import says which). Categorical values of any type become codes (1, 2, ...); the
vocabulary is stored with the data version and a value it does not hold takes code 0 (out of
vocabulary).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from serving.errors import SchemaError
from serving.schemas import first_problem

__all__ = ["ContextSpec", "EntitySpec", "ImpressionSpec", "ItemSpec", "Schema", "SequenceSpec", "load_schema",
           "parse_schema", "parse_yaml_model"]

_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_Model = TypeVar("_Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntitySpec(_Strict):
    """The columns of one table (users, or the base of items)."""

    id: str = Field(pattern=_NAME, description="The id column: integers or strings; the API speaks these ids.")
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    vectors: dict[str, int] = Field(default_factory=dict, description="Fixed-width list<float> columns: name -> width.")
    fill: dict[str, float] = Field(default_factory=dict, description="A numeric column's value for nulls "
                                                                     "(default: its median).")

    @model_validator(mode="after")
    def _check(self) -> EntitySpec:
        names = [self.id, *self.categorical, *self.numeric, *self.vectors]
        for name in names:
            if not re.match(_NAME, name):
                raise ValueError(f"column name {name!r} must be letters, digits and '_' (not starting with a digit)")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"column {name!r} is declared twice")
            seen.add(name)
        for name, width in self.vectors.items():
            if not 1 <= width <= 4096:
                raise ValueError(f"vector {name!r}: width must be in [1, 4096], got {width}")
        unknown = sorted(set(self.fill) - set(self.numeric))
        if unknown:
            raise ValueError(f"fill names {unknown}, which are not numeric columns")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Every declared column, the id first."""
        return (self.id, *self.categorical, *self.numeric, *self.vectors, *self._extra_columns())

    def _extra_columns(self) -> tuple[str, ...]:
        return ()


class ItemSpec(EntitySpec):
    """The items' columns, their popularity and the groups scenarios may use."""

    popularity: str | None = Field(None, pattern=_NAME, description="A numeric column (a feature too when it is "
                                   "also declared numeric): what popular sources order by. None: every item alike.")
    groups: tuple[str, ...] = Field((), description="Categorical columns scenarios may restrict or diversify by.")

    @model_validator(mode="after")
    def _check_items(self) -> ItemSpec:
        if self.popularity is not None and self.popularity in (self.id, *self.categorical, *self.vectors):
            raise ValueError(f"popularity {self.popularity!r} must be a numeric column, not the id, a categorical "
                             "or a vector column")
        bad = [g for g in self.groups if g not in self.categorical]
        if bad:
            raise ValueError(f"groups {bad} must be categorical columns ({list(self.categorical)})")
        return self

    def _extra_columns(self) -> tuple[str, ...]:
        return (self.popularity,) if self.popularity is not None and self.popularity not in self.numeric else ()


class SequenceSpec(_Strict):
    """A request-time list of ids (recently viewed items, say)."""

    of: Literal["items"] = "items"
    max_len: int = Field(20, ge=1, le=1000)


class ContextSpec(_Strict):
    """What a request may carry besides the user: request-time features, and the item groups."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    sequences: dict[str, SequenceSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ContextSpec:
        names = [*self.categorical, *self.numeric, *self.sequences]
        for name in names:
            if not re.match(_NAME, name):
                raise ValueError(f"context field {name!r} must be letters, digits and '_'")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"context fields declared twice: {dup}")
        return self


class ImpressionSpec(_Strict):
    """The training log's columns."""

    user: str = Field(pattern=_NAME)
    item: str = Field(pattern=_NAME)
    label: str = Field(pattern=_NAME, description="0/1: the item was clicked (or bought) after it was shown.")
    time: str | None = Field(None, pattern=_NAME, description="When it was shown; the holdout is the latest 10%.")
    context: dict[str, str] = Field(default_factory=dict, description="Context field -> the column that holds it "
                                                                      "(default: a column of the field's name, "
                                                                      "when present).")


class Schema(_Strict):
    """A data set's schema (see the module docstring)."""

    items: ItemSpec
    users: EntitySpec
    context: ContextSpec = Field(default_factory=ContextSpec)
    impressions: ImpressionSpec

    @model_validator(mode="after")
    def _check(self) -> Schema:
        clash = sorted(set(self.context.categorical + self.context.numeric + tuple(self.context.sequences))
                       & set(self.items.groups))
        if clash:
            raise ValueError(f"context fields {clash} are also item groups: a request gives a group's value as "
                             "context of the group's name already")
        unknown = sorted(set(self.impressions.context) - set(self.context_fields))
        if unknown:
            raise ValueError(f"impressions.context names {unknown}, which are not context fields")
        return self

    @property
    def context_fields(self) -> tuple[str, ...]:
        """Every field a request's ``context`` may hold: the declared ones and the item groups."""
        return (*self.context.categorical, *self.context.numeric, *self.context.sequences, *self.items.groups)

    @property
    def name_index(self) -> dict[str, tuple[str, str]]:
        """``side.column`` -> (side, kind) for every name a feature or a scenario may use."""
        out: dict[str, tuple[str, str]] = {}
        for side, spec in (("item", self.items), ("user", self.users)):
            out.update({f"{side}.{c}": (side, "categorical") for c in spec.categorical})
            out.update({f"{side}.{c}": (side, "numeric") for c in spec.numeric})
            out.update({f"{side}.{c}": (side, "vector") for c in spec.vectors})
        out.update({f"context.{c}": ("context", "categorical") for c in self.context.categorical})
        out.update({f"context.{c}": ("context", "numeric") for c in self.context.numeric})
        out.update({f"context.{c}": ("context", "sequence") for c in self.context.sequences})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def parse_schema(text: str, source: str = "schema") -> Schema:
    """A schema from YAML text.

    Raises:
        SchemaError: the YAML does not parse, or the schema does not hold (naming the key's path).
    """
    return parse_yaml_model(text, Schema, SchemaError, source=source, root="schema",
                            mapping="a schema is a mapping with items, users, context and impressions")


def parse_yaml_model(text: str, model: type[_Model], error: type[SchemaError], *, source: str, root: str,
                     mapping: str) -> _Model:
    """``model`` from a YAML mapping (a schema, a feature declaration).

    Raises:
        error: the YAML does not parse, is no mapping (``mapping`` says what it should be), or the
            model does not hold (naming the key's path, ``root`` for the whole).
    """
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{source}: the YAML does not parse: {err}") from err
    if not isinstance(raw, dict):
        raise error(f"{source}: {mapping}")
    try:
        return model.model_validate(raw)
    except PydanticValidationError as err:
        problem = first_problem(err, noun="key", root=root)
        raise error(f"{source}: {problem.message.replace('Value error, ', '')}", field=problem.where) from err


def load_schema(path: Path) -> Schema:
    """The schema in the file ``path``.

    Raises:
        SchemaError: the file cannot be read, or its schema does not hold.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SchemaError(f"cannot read the schema {path}: {err}") from err
    return parse_schema(text, str(path))
