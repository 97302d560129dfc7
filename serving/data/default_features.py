"""The default ranker declaration of a schema: what ``rankserve train`` uses when none is given.

Owns: :func:`default_features`, the feature declaration (``serving.data.features.FeatureSpec``)
written from a schema alone, so it resolves against any data set of that schema. Must not touch:
the declaration's grammar and resolution (``serving.data.features``), arrays, models, files.

What it declares, in this order:

* ``cat``: every user, item and context categorical column; then the crosses of each user and
  context categorical with each item group (with each item categorical when the schema declares
  no groups), ``buckets`` each, at most ``max_crosses`` of them (user columns first);
* ``dense``: every user, item and context numeric column; ``dot`` and ``prod`` of each user vector
  with each item vector of the same width; ``mean(context.S, item.V)`` for each context sequence
  ``S`` and item vector ``V``.
"""

from __future__ import annotations

from itertools import product

from serving.data.features import FeatureSpec
from serving.data.schema import Schema
from serving.errors import FeaturesError

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_CROSSES", "default_features"]

DEFAULT_BUCKETS = 100_003  # a prime: crossed ids spread evenly whatever the vocabularies' sizes
DEFAULT_MAX_CROSSES = 16  # each cross is a table of buckets x 8 floats in the ranker


def default_features(schema: Schema, *, buckets: int = DEFAULT_BUCKETS,
                     max_crosses: int = DEFAULT_MAX_CROSSES) -> FeatureSpec:
    """The default declaration of ``schema`` (see the module docstring).

    Raises:
        FeaturesError: the schema declares no column a ranker can read (no categorical, numeric or
            vector column on any side).
    """
    items, users, ctx = schema.items, schema.users, schema.context
    requests = [f"user.{c}" for c in users.categorical] + [f"context.{c}" for c in ctx.categorical]
    crossed_with = [f"item.{c}" for c in (items.groups or items.categorical)]
    crosses = [f"cross({a}, {b}, buckets={buckets})" for a, b in product(requests, crossed_with)][:max_crosses]
    cat = requests[:len(users.categorical)] + [f"item.{c}" for c in items.categorical] \
        + requests[len(users.categorical):] + crosses
    dense = [f"user.{c}" for c in users.numeric] + [f"item.{c}" for c in items.numeric] \
        + [f"context.{c}" for c in ctx.numeric]
    for (u, uw), (i, iw) in product(users.vectors.items(), items.vectors.items()):
        if uw == iw:
            dense += [f"dot(user.{u}, item.{i})", f"prod(user.{u}, item.{i})"]
    dense += [f"mean(context.{s}, item.{v})" for s, v in product(ctx.sequences, items.vectors)]
    if not cat and not dense:
        raise FeaturesError("the schema declares no column a ranker can read: declare a categorical, numeric or "
                            "vector column of the items, the users or the context")
    return FeatureSpec(cat=cat, dense=dense)
