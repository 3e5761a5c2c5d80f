import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFY_RESULT_UNSPECIFIED: _ClassVar[VerifyResult]
    VERIFY_RESULT_VALID: _ClassVar[VerifyResult]
    VERIFY_RESULT_MISSING_SIGNATURE: _ClassVar[VerifyResult]
    VERIFY_RESULT_INVALID_SIGNATURE: _ClassVar[VerifyResult]
    VERIFY_RESULT_STALE_TIMESTAMP: _ClassVar[VerifyResult]
    VERIFY_RESULT_FUTURE_TIMESTAMP: _ClassVar[VerifyResult]
    VERIFY_RESULT_MALFORMED: _ClassVar[VerifyResult]

class StartPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_POSITION_UNSPECIFIED: _ClassVar[StartPosition]
    START_POSITION_LATEST: _ClassVar[StartPosition]
    START_POSITION_EARLIEST: _ClassVar[StartPosition]
    START_POSITION_AFTER_OFFSET: _ClassVar[StartPosition]
    START_POSITION_AFTER_EVENT_ID: _ClassVar[StartPosition]

class GapReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GAP_REASON_UNSPECIFIED: _ClassVar[GapReason]
    GAP_REASON_RETENTION: _ClassVar[GapReason]
    GAP_REASON_SLOW_CONSUMER: _ClassVar[GapReason]

class AckOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_OUTCOME_UNSPECIFIED: _ClassVar[AckOutcome]
    ACK_OUTCOME_SUCCESS: _ClassVar[AckOutcome]
    ACK_OUTCOME_RETRY: _ClassVar[AckOutcome]
    ACK_OUTCOME_DEAD_LETTER: _ClassVar[AckOutcome]

class QueuedCallState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUEUED_CALL_STATE_UNSPECIFIED: _ClassVar[QueuedCallState]
    QUEUED_CALL_STATE_QUEUED: _ClassVar[QueuedCallState]
    QUEUED_CALL_STATE_RUNNING: _ClassVar[QueuedCallState]
    QUEUED_CALL_STATE_SUCCEEDED: _ClassVar[QueuedCallState]
    QUEUED_CALL_STATE_FAILED: _ClassVar[QueuedCallState]
    QUEUED_CALL_STATE_DEAD: _ClassVar[QueuedCallState]
    QUEUED_CALL_STATE_CANCELLED: _ClassVar[QueuedCallState]
VERIFY_RESULT_UNSPECIFIED: VerifyResult
VERIFY_RESULT_VALID: VerifyResult
VERIFY_RESULT_MISSING_SIGNATURE: VerifyResult
VERIFY_RESULT_INVALID_SIGNATURE: VerifyResult
VERIFY_RESULT_STALE_TIMESTAMP: VerifyResult
VERIFY_RESULT_FUTURE_TIMESTAMP: VerifyResult
VERIFY_RESULT_MALFORMED: VerifyResult
START_POSITION_UNSPECIFIED: StartPosition
START_POSITION_LATEST: StartPosition
START_POSITION_EARLIEST: StartPosition
START_POSITION_AFTER_OFFSET: StartPosition
START_POSITION_AFTER_EVENT_ID: StartPosition
GAP_REASON_UNSPECIFIED: GapReason
GAP_REASON_RETENTION: GapReason
GAP_REASON_SLOW_CONSUMER: GapReason
ACK_OUTCOME_UNSPECIFIED: AckOutcome
ACK_OUTCOME_SUCCESS: AckOutcome
ACK_OUTCOME_RETRY: AckOutcome
ACK_OUTCOME_DEAD_LETTER: AckOutcome
QUEUED_CALL_STATE_UNSPECIFIED: QueuedCallState
QUEUED_CALL_STATE_QUEUED: QueuedCallState
QUEUED_CALL_STATE_RUNNING: QueuedCallState
QUEUED_CALL_STATE_SUCCEEDED: QueuedCallState
QUEUED_CALL_STATE_FAILED: QueuedCallState
QUEUED_CALL_STATE_DEAD: QueuedCallState
QUEUED_CALL_STATE_CANCELLED: QueuedCallState

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class QueryParam(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("integration", "method", "path", "query", "headers", "body", "idempotency_key", "api_version")
    INTEGRATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    integration: str
    method: str
    path: str
    query: _containers.RepeatedCompositeFieldContainer[QueryParam]
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    idempotency_key: str
    api_version: str
    def __init__(self, integration: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., query: _Optional[_Iterable[_Union[QueryParam, _Mapping]]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., api_version: _Optional[str] = ...) -> None: ...

class CallResponse(_message.Message):
    __slots__ = ("status", "headers", "body", "attempts", "replayed", "stale", "deprecation", "route", "duration_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    DEPRECATION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    attempts: int
    replayed: bool
    stale: bool
    deprecation: Deprecation
    route: str
    duration_ms: int
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., attempts: _Optional[int] = ..., replayed: _Optional[bool] = ..., stale: _Optional[bool] = ..., deprecation: _Optional[_Union[Deprecation, _Mapping]] = ..., route: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class Deprecation(_message.Message):
    __slots__ = ("deprecated", "deprecated_at", "sunset_at", "link")
    DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    DEPRECATED_AT_FIELD_NUMBER: _ClassVar[int]
    SUNSET_AT_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    deprecated: bool
    deprecated_at: _timestamp_pb2.Timestamp
    sunset_at: _timestamp_pb2.Timestamp
    link: str
    def __init__(self, deprecated: _Optional[bool] = ..., deprecated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sunset_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., link: _Optional[str] = ...) -> None: ...

class VerifyWebhookRequest(_message.Message):
    __slots__ = ("source", "headers", "body", "url", "record")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    source: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    url: str
    record: bool
    def __init__(self, source: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., url: _Optional[str] = ..., record: _Optional[bool] = ...) -> None: ...

class VerifyWebhookResponse(_message.Message):
    __slots__ = ("result", "reason", "event_id", "event_type", "timestamp", "duplicate", "recorded")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    result: VerifyResult
    reason: str
    event_id: str
    event_type: str
    timestamp: _timestamp_pb2.Timestamp
    duplicate: bool
    recorded: bool
    def __init__(self, result: _Optional[_Union[VerifyResult, str]] = ..., reason: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duplicate: _Optional[bool] = ..., recorded: _Optional[bool] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "type", "data", "content_type", "attributes", "idempotency_key")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    topic: str
    type: str
    data: bytes
    content_type: str
    attributes: _containers.ScalarMap[str, str]
    idempotency_key: str
    def __init__(self, topic: _Optional[str] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("event_id", "offset", "replayed")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    offset: int
    replayed: bool
    def __init__(self, event_id: _Optional[str] = ..., offset: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topics", "start", "after_offsets", "after_event_id", "group", "consumer", "max_in_flight")
    class AfterOffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    AFTER_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    start: StartPosition
    after_offsets: _containers.ScalarMap[str, int]
    after_event_id: str
    group: str
    consumer: str
    max_in_flight: int
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., start: _Optional[_Union[StartPosition, str]] = ..., after_offsets: _Optional[_Mapping[str, int]] = ..., after_event_id: _Optional[str] = ..., group: _Optional[str] = ..., consumer: _Optional[str] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("event", "heartbeat", "gap", "subscribed")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    event: Event
    heartbeat: Heartbeat
    gap: Gap
    subscribed: Subscribed
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("offsets",)
    class OffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.ScalarMap[str, int]
    def __init__(self, offsets: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "topic", "type", "data", "content_type", "attributes", "offset", "time", "delivery_attempt")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    topic: str
    type: str
    data: bytes
    content_type: str
    attributes: _containers.ScalarMap[str, str]
    offset: int
    time: _timestamp_pb2.Timestamp
    delivery_attempt: int
    def __init__(self, id: _Optional[str] = ..., topic: _Optional[str] = ..., type: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., offset: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivery_attempt: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time",)
    TIME_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("topic", "reason", "from_offset", "to_offset")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    topic: str
    reason: GapReason
    from_offset: int
    to_offset: int
    def __init__(self, topic: _Optional[str] = ..., reason: _Optional[_Union[GapReason, str]] = ..., from_offset: _Optional[int] = ..., to_offset: _Optional[int] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("group", "event_ids", "outcome", "error")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    group: str
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    outcome: AckOutcome
    error: str
    def __init__(self, group: _Optional[str] = ..., event_ids: _Optional[_Iterable[str]] = ..., outcome: _Optional[_Union[AckOutcome, str]] = ..., error: _Optional[str] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("settled", "unknown_event_ids")
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    settled: int
    unknown_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, settled: _Optional[int] = ..., unknown_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPresenceRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class GetPresenceResponse(_message.Message):
    __slots__ = ("topic", "connections", "users")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    connections: int
    users: int
    def __init__(self, topic: _Optional[str] = ..., connections: _Optional[int] = ..., users: _Optional[int] = ...) -> None: ...

class EnqueueCallRequest(_message.Message):
    __slots__ = ("call", "not_before", "result_topic", "ordering_key")
    CALL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RESULT_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORDERING_KEY_FIELD_NUMBER: _ClassVar[int]
    call: CallRequest
    not_before: _timestamp_pb2.Timestamp
    result_topic: str
    ordering_key: str
    def __init__(self, call: _Optional[_Union[CallRequest, _Mapping]] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result_topic: _Optional[str] = ..., ordering_key: _Optional[str] = ...) -> None: ...

class EnqueueCallResponse(_message.Message):
    __slots__ = ("id", "duplicate")
    ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    duplicate: bool
    def __init__(self, id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetQueuedCallRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelQueuedCallRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class QueuedCall(_message.Message):
    __slots__ = ("id", "integration", "state", "attempts", "created_at", "next_attempt_at", "finished_at", "last_status", "last_error", "response", "result_topic", "ordering_key", "idempotency_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    INTEGRATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RESULT_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORDERING_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    integration: str
    state: QueuedCallState
    attempts: int
    created_at: _timestamp_pb2.Timestamp
    next_attempt_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    last_status: int
    last_error: str
    response: CallResponse
    result_topic: str
    ordering_key: str
    idempotency_key: str
    def __init__(self, id: _Optional[str] = ..., integration: _Optional[str] = ..., state: _Optional[_Union[QueuedCallState, str]] = ..., attempts: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_status: _Optional[int] = ..., last_error: _Optional[str] = ..., response: _Optional[_Union[CallResponse, _Mapping]] = ..., result_topic: _Optional[str] = ..., ordering_key: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...
