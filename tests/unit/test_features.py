"""A ranker's feature declaration: each form of the grammar resolved against a data set's schema,
every refusal naming the entry, the cardinalities a model needs, features.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from kernels.spec import CAT_COPY, CAT_CROSS, DENSE_DOT, DENSE_NUM, DENSE_PROD, SIDE_ITEM, SIDE_Q
from serving.data.features import (
    DEMO_FEATURES,
    FeatureSpec,
    load_features,
    parse_features,
    read_features_json,
    resolve,
    write_features_json,
)
from serving.errors import FeaturesError, SchemaError
from tests.unit.data_fakes import DEMO_SCHEMA, SCHEMA, random_tables


def _yaml(**lists: list[str]) -> str:
    return yaml.safe_dump(lists)


FULL = """
cat:
  - user.region
  - item.store
  - context.channel
  - cross(user.tier, item.category, buckets=101)
  - cross(context.device, user.region, buckets=7)
  - cross(item.brand, item.store, buckets=2147483647)
dense:
  - item.rating
  - user.age
  - context.hour
  - dot(user.taste, item.content)
  - prod(user.style, item.look)
  - mean(context.recent, item.look)
  - mean(context.cart, item.content)
"""


def test_each_form_resolves_to_its_columns() -> None:
    tables = random_tables(0)
    plan = resolve(parse_features(FULL), tables)
    # q_cat = user (region, tier) then context (device, channel); item_cat = brand, category, store
    assert plan.cat_ops.tolist() == [
        [CAT_COPY, SIDE_Q, 0, SIDE_Q, 0, 0, 0],
        [CAT_COPY, SIDE_ITEM, 2, SIDE_Q, 0, 0, 0],
        [CAT_COPY, SIDE_Q, 3, SIDE_Q, 0, 0, 0],
        [CAT_CROSS, SIDE_Q, 1, SIDE_ITEM, 1, 101, 0],  # salts count the crosses only
        [CAT_CROSS, SIDE_Q, 2, SIDE_Q, 0, 7, 1],
        [CAT_CROSS, SIDE_ITEM, 0, SIDE_ITEM, 2, 2**31 - 1, 2],
    ]
    # q_num = user age then context hour; q_vec = taste (8), style (4), then the two means
    assert plan.dense_ops.tolist() == [
        [DENSE_NUM, SIDE_ITEM, 1, 0, 1, 0],
        [DENSE_NUM, SIDE_Q, 0, 0, 1, 1],
        [DENSE_NUM, SIDE_Q, 1, 0, 1, 2],
        [DENSE_DOT, SIDE_Q, 0, 0, 8, 3],
        [DENSE_PROD, SIDE_Q, 8, 8, 4, 4],
        [DENSE_DOT, SIDE_Q, 12, 8, 4, 8],
        [DENSE_DOT, SIDE_Q, 16, 0, 8, 9],
    ]
    assert plan.means.tolist() == [[0, 8, 4], [1, 0, 8]]  # recent then cart, by schema order
    assert (plan.n_cat, plan.n_dense) == (6, 10)


def test_cardinalities_are_vocabulary_sizes_plus_one_and_buckets() -> None:
    tables = random_tables(1)
    plan = resolve(parse_features(FULL), tables)
    sizes = [len(tables.vocab[n]) + 1 for n in ("user.region", "item.store", "context.channel")]
    assert plan.cardinalities.tolist() == [*sizes, 101, 7, 2**31 - 1]
    # a context field the data set never saw has only the out-of-vocabulary code
    unseen = dataclasses.replace(tables, vocab={})
    assert resolve(parse_features(_yaml(cat=["context.device"])), unseen).cardinalities.tolist() == [1]


@pytest.mark.parametrize(("text", "field", "message"), [
    (_yaml(cat=["user.regoin"]), "cat[0]", "cat[0] 'user.regoin': unknown name 'user.regoin'"),
    (_yaml(cat=["item.brand", "cross(user.region, item.colour, buckets=5)"]), "cat[1]", "unknown name 'item.colour'"),
    (_yaml(dense=["context.weather"]), "dense[0]", "dense[0] 'context.weather': unknown name"),
    (_yaml(dense=["item.sales_7d"]), "dense[0]", "item.sales_7d is the popularity column; declare it under items.numeric"),
    (_yaml(cat=["user.taste"]), "cat[0]", "user.taste is a user vector column; expected a user, item or context categorical column"),
    (_yaml(cat=["item.price"]), "cat[0]", "item.price is an item numeric column; expected a user, item or context categorical"),
    (_yaml(cat=["cross(user.region, context.recent, buckets=9)"]), "cat[0]", "context.recent is a context sequence column; expected a user, item or context"),
    (_yaml(dense=["user.region"]), "dense[0]", "user.region is a user categorical column; expected a user, item or context numeric column"),
    (_yaml(dense=["dot(item.content, user.taste)"]), "dense[0]", "item.content is an item vector column; expected a user vector column"),
    (_yaml(dense=["dot(user.taste, user.taste)"]), "dense[0]", "user.taste is a user vector column; expected an item vector column"),
    (_yaml(dense=["prod(user.age, item.look)"]), "dense[0]", "user.age is a user numeric column; expected a user vector column"),
    (_yaml(dense=["dot(user.taste, item.look)"]), "dense[0]",
     "dense[0] 'dot(user.taste, item.look)': widths differ: user.taste is 8 wide, item.look 4"),
    (_yaml(dense=["item.rating", "prod(user.style, item.content)"]), "dense[1]", "widths differ: user.style is 4 wide"),
    (_yaml(dense=["mean(user.taste, item.content)"]), "dense[0]", "user.taste is a user vector column; expected a context sequence column"),
    (_yaml(dense=["mean(context.recent, item.price)"]), "dense[0]", "item.price is an item numeric column; expected an item vector column"),
])
def test_names_of_the_wrong_kind_or_unknown_are_refused_naming_the_entry(text: str, field: str, message: str) -> None:
    spec = parse_features(text)  # the grammar holds: the schema refuses
    with pytest.raises(FeaturesError) as err:
        resolve(spec, random_tables(2))
    assert message in err.value.message and err.value.field == field
    assert isinstance(err.value, SchemaError) and err.value.exit_status == 2


@pytest.mark.parametrize(("text", "field", "message"), [
    (_yaml(cat=["hash(user.region, item.brand)"]), "cat[0]", "'hash(user.region, item.brand)' is in no known form"),
    (_yaml(cat=["dot(user.taste, item.content)"]), "cat[0]", "expected side.column or one of cross(...)"),
    (_yaml(dense=["cross(user.region, item.brand, buckets=3)"]), "dense[0]", "one of dot(...), prod(...), mean(...)"),
    (_yaml(cat=["region"]), "cat[0]", "'region' is in no known form"),
    (_yaml(cat=["shop.region"]), "cat[0]", "no known form"),
    (_yaml(cat=["cross(user.region, item.brand)"]), "cat[0]", "cross needs buckets=N, N an integer in [1, 2**31-1], got none"),
    (_yaml(cat=["cross(user.region, item.brand, buckets=0)"]), "cat[0]", "got 0"),
    (_yaml(cat=["cross(user.region, item.brand, buckets=2147483648)"]), "cat[0]", "got 2147483648"),
    (_yaml(cat=["cross(user.region, item.brand, buckets=-3)"]), "cat[0]", "got -3"),
    (_yaml(cat=["cross(user.region, buckets=3)"]), "cat[0]", "cross takes 2 names (side.column), buckets=N"),
    (_yaml(cat=["cross(user.region, item.brand, salt=1, buckets=3)"]), "cat[0]", "cross takes 2 names"),
    (_yaml(dense=["dot(user.taste, item.content, item.look)"]), "dense[0]", "dot takes 2 names (side.column)"),
    (_yaml(dense=["mean(context.recent)"]), "dense[0]", "mean takes 2 names"),
    (_yaml(dense=["item.price", "item.rating", "item.price"]), "dense", "declared twice: ['item.price']"),
    ("cat: [user.region]\nsparse: [item.brand]", "sparse", "unknown key 'sparse'"),
    ("cat: user.region", "cat", "cat: Input should be a valid list"),
])
def test_entries_in_no_form_are_refused_when_read(text: str, field: str, message: str) -> None:
    with pytest.raises(FeaturesError) as err:
        parse_features(text, "features.yaml")
    assert message in err.value.message and err.value.field == field
    assert err.value.message.startswith("features.yaml: ")


@pytest.mark.parametrize(("text", "message"), [
    ("cat: []\ndense: []", "declares no feature"),
    ("- user.region", "a mapping with cat and dense"),
    ("cat: [user.region", "does not parse"),
    ("cat: [cross(user.region, item.brand, buckets=3)]", "a comma inside .* splits a YAML list"),
])
def test_declarations_that_are_no_declaration_are_refused(text: str, message: str) -> None:
    with pytest.raises(FeaturesError, match=message):
        parse_features(text)


def test_spaces_inside_forms_do_not_matter() -> None:
    a = resolve(parse_features(_yaml(cat=["cross( user.region ,item.brand,buckets = 9 )"])), random_tables(3))
    b = resolve(parse_features(_yaml(cat=["cross(user.region, item.brand, buckets=9)"])), random_tables(3))
    assert a == b


def test_features_json_beside_a_model_round_trips(tmp_path: Path) -> None:
    spec, tables = parse_features(FULL), random_tables(4)
    plan = resolve(spec, tables)
    path = write_features_json(tmp_path, spec, plan)
    assert path == tmp_path / "features.json"
    assert read_features_json(path) == (spec, plan)
    doc = json.loads(path.read_text())
    assert doc["cat_width"] == 6 and doc["dense_width"] == 10 and doc["cardinalities"] == plan.cardinalities.tolist()
    path.write_text("{}")
    with pytest.raises(FeaturesError, match="cannot read"):
        read_features_json(path)


def test_the_demo_declaration_reads_and_resolves() -> None:
    spec = load_features(DEMO_FEATURES)
    assert isinstance(spec, FeatureSpec) and len(spec.cat) == 10 and len(spec.dense) == 5
    vocab = {f"user.{c}": {k: k for k in range(1, 4)} for c in DEMO_SCHEMA.users.categorical}
    vocab |= {f"item.{c}": {k: k for k in range(1, 6)} for c in DEMO_SCHEMA.items.categorical}
    tables = dataclasses.replace(random_tables(0, schema=DEMO_SCHEMA), vocab=vocab)
    plan = resolve(spec, tables)
    assert plan.cardinalities.tolist() == [4] * 3 + [6] * 4 + [4096] * 3
    assert plan.n_dense == 3 + 1 + 16
    with pytest.raises(FeaturesError, match="cannot read the feature declaration"):
        load_features(DEMO_FEATURES.with_name("missing.yaml"))


def test_the_schema_the_tests_use_is_the_issue_form() -> None:
    """The fakes' schema holds every kind the grammar reads (a guard on the tests themselves)."""
    kinds = {kind for _, kind in SCHEMA.name_index.values()}
    assert kinds == {"categorical", "numeric", "vector", "sequence"}
