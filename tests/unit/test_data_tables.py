"""DataTables: id lookups of either kind (the other kind is unknown, never an error), column names
to indexes, read-only arrays, and a request's context checked and encoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serving.data.tables import DataTables
from serving.errors import ValidationError
from tests.unit import data_files as data


def _tables(item_ids: list[Any], user_ids: list[Any]) -> DataTables:
    schema = data.schema()
    n, u = len(item_ids), len(user_ids) + 1

    def ids(values: list[Any]) -> np.ndarray:
        return np.array(values, dtype=object if isinstance(values[0], str) else np.int64)

    return DataTables(
        schema, item_ids=ids(item_ids), user_ids=ids(user_ids),
        item_cat=np.arange(n * 3, dtype=np.int64).reshape(n, 3), item_num=np.zeros((n, 2), np.float32),
        item_vec=np.zeros((n, 4), np.float32), user_cat=np.zeros((u, 2), np.int64),
        user_num=np.zeros((u, 1), np.float32), user_vec=np.zeros((u, 0), np.float32),
        popularity=np.zeros(n, np.float32),
        vocab={"item.brand": {"a": 1}, "item.category": {1: 1, 2: 2}, "item.store": {"x": 1, "y": 2},
               "user.region": {}, "user.tier": {}, "context.device": {"ios": 1, "web": 2}},
        context_numeric={"hour": (12.0, 10.0, 4.0)})


INT = _tables([30, 10, 20, 2**62], [7, 5])
STR = _tables(["b", "a", "c"], ["u1", "u0"])


def test_integer_ids_are_looked_up_vectorised_and_text_is_unknown() -> None:
    rows, known = INT.item_rows([10, 20, 99, "10", 2**62, 2**70, True, 10.0, -1])
    assert rows.tolist() == [1, 2, -1, -1, 3, -1, -1, -1, -1]
    assert known.tolist() == [r >= 0 for r in rows.tolist()]
    rows, _ = INT.item_rows(np.array([30, 30, 11], np.int64))
    assert rows.tolist() == [0, 0, -1]
    assert INT.item_rows(np.array([2**64 - 1], np.uint64))[0].tolist() == [-1]
    assert INT.item_rows([])[0].shape == (0,)
    assert INT.user_row(5) == (1, False)
    assert INT.user_row("5") == (2, True) and INT.user_row(None) == (2, True)


def test_string_ids_are_looked_up_by_dict_and_numbers_are_unknown() -> None:
    rows, known = STR.item_rows(["a", "zz", 1, "c", None])
    assert rows.tolist() == [1, -1, -1, 2, -1] and known.tolist() == [True, False, False, True, False]
    assert STR.user_row("u0") == (1, False) and STR.user_row(0) == (2, True)


def test_names_resolve_to_columns_and_slices() -> None:
    assert (INT.cat_col("item.store"), INT.cat_col("user.tier"), INT.num_col("item.rating")) == (2, 1, 1)
    assert INT.group_col("category") == 1 and INT.group_col("item.store") == 0  # columns of item_groups
    assert (INT.item_groups == INT.item_cat[:, [2, 1]]).all()  # by default the groups' import codes
    assert INT.item_vec_slice("content") == slice(0, 4) == INT.item_vec_slice("item.content")
    for call in (lambda: INT.cat_col("item.price"), lambda: INT.num_col("context.hour"),
                 lambda: INT.group_col("brand"), lambda: INT.user_vec_slice("content")):
        with pytest.raises(KeyError):
            call()


def test_arrays_are_read_only_and_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="read-only"):
        INT.item_cat[0, 0] = 5
    with pytest.raises(ValueError, match="do not fit the schema"):
        DataTables(INT.schema, item_ids=np.arange(3), user_ids=np.arange(2), item_cat=np.zeros((3, 3), np.int64),
                   item_num=np.zeros((3, 2), np.float32), item_vec=np.zeros((3, 4), np.float32),
                   user_cat=np.zeros((2, 2), np.int64),  # no cold row
                   user_num=np.zeros((3, 1), np.float32), user_vec=np.zeros((3, 0), np.float32),
                   popularity=np.zeros(3, np.float32), vocab={})


def test_context_is_encoded_by_the_schemas_rules() -> None:
    enc = INT.encode_context({"device": "web", "hour": 18, "recent": [10, "x", 99, 20, 30, 10, 3.5], "store": "y"})
    assert dict(enc.categorical) == {"device": 2}
    assert dict(enc.numeric) == {"hour": 2.0}  # (18 - 10) / 4
    assert enc.sequences["recent"].tolist() == [2, 0, 1]  # known ids, the last max_len (3)
    assert dict(enc.groups) == {"store": 2}
    assert enc.given == {"device", "hour", "recent", "store"}
    empty = INT.encode_context(None)
    assert dict(empty.categorical) == {"device": 0} and dict(empty.numeric) == {"hour": 0.5}  # the fill, standardised
    assert empty.sequences["recent"].tolist() == [] and dict(empty.groups) == {}
    unseen = INT.encode_context({"device": "tv", "category": 7, "store": None})
    assert unseen.categorical["device"] == 0 and dict(unseen.groups) == {"category": 0}
    assert unseen.given == {"device", "category"}


@pytest.mark.parametrize(("context", "field", "needle"), [
    ({"colour": "red"}, "context.colour", "unknown context field 'colour'"),
    ({"hour": "noon"}, "context.hour", "must be a finite number"),
    ({"hour": True}, "context.hour", "must be a finite number"),
    ({"hour": float("nan")}, "context.hour", "must be a finite number"),
    ({"device": ["ios"]}, "context.device", "must be a string, a number or a boolean, got list"),
    ({"store": {"id": 1}}, "context.store", "must be a string, a number or a boolean, got dict"),
    ({"recent": "s1"}, "context.recent", "must be a list of item ids, got str"),
    ({"device": 3}, "context.device", "must be a string \\(the data set's device values are strings\\), got 3"),
    ({"category": "7"}, "context.category", "must be an integer .* got '7'"),
    ({"category": True}, "context.category", "must be an integer"),
    (["device"], "context", "context must be an object, got list"),
])
def test_a_bad_context_is_a_validation_error_naming_the_field(context: Any, field: str, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle) as err:
        INT.encode_context(context)
    assert err.value.field == field and err.value.http_status == 422
