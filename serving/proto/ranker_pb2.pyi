from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_id", "k", "candidates", "exclude", "request_id", "model", "timeout_ms", "scenario", "item_id", "shop_id", "user_id_str", "item_id_str", "candidates_str", "exclude_str", "context_json")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SHOP_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_STR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_STR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_STR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_STR_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    candidates: _containers.RepeatedScalarFieldContainer[int]
    exclude: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    model: str
    timeout_ms: int
    scenario: str
    item_id: int
    shop_id: int
    user_id_str: str
    item_id_str: str
    candidates_str: _containers.RepeatedScalarFieldContainer[str]
    exclude_str: _containers.RepeatedScalarFieldContainer[str]
    context_json: str
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., candidates: _Optional[_Iterable[int]] = ..., exclude: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., scenario: _Optional[str] = ..., item_id: _Optional[int] = ..., shop_id: _Optional[int] = ..., user_id_str: _Optional[str] = ..., item_id_str: _Optional[str] = ..., candidates_str: _Optional[_Iterable[str]] = ..., exclude_str: _Optional[_Iterable[str]] = ..., context_json: _Optional[str] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "recall_score", "item_id_str")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RECALL_SCORE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_STR_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    score: float
    recall_score: float
    item_id_str: str
    def __init__(self, item_id: _Optional[int] = ..., score: _Optional[float] = ..., recall_score: _Optional[float] = ..., item_id_str: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("request_id", "items", "model", "recall", "degraded", "cold_start", "timings_ms", "catalogue_version", "scenario", "scenario_version", "unknown_candidates")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model: ModelVersion
    recall: str
    degraded: bool
    cold_start: bool
    timings_ms: _containers.ScalarMap[str, float]
    catalogue_version: int
    scenario: str
    scenario_version: int
    unknown_candidates: int
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model: _Optional[_Union[ModelVersion, _Mapping]] = ..., recall: _Optional[str] = ..., degraded: _Optional[bool] = ..., cold_start: _Optional[bool] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., catalogue_version: _Optional[int] = ..., scenario: _Optional[str] = ..., scenario_version: _Optional[int] = ..., unknown_candidates: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("request_id", "item_id", "item_id_str", "type", "ts", "ts_str")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_STR_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    TS_STR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    item_id: int
    item_id_str: str
    type: str
    ts: float
    ts_str: str
    def __init__(self, request_id: _Optional[str] = ..., item_id: _Optional[int] = ..., item_id_str: _Optional[str] = ..., type: _Optional[str] = ..., ts: _Optional[float] = ..., ts_str: _Optional[str] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class EventsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
