from memstage.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldRequest(_message.Message):
    __slots__ = ("namespace", "key", "gen", "data")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: _common_pb2.ChunkKey
    gen: int
    data: bytes
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., gen: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class HoldReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DataPortsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class DataPortsReply(_message.Message):
    __slots__ = ("tcp_port", "tls", "unix_path", "host_id")
    TCP_PORT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    UNIX_PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    tcp_port: int
    tls: bool
    unix_path: str
    host_id: str
    def __init__(self, tcp_port: _Optional[int] = ..., tls: _Optional[bool] = ..., unix_path: _Optional[str] = ..., host_id: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("method", "metadata", "put", "get", "read_drained", "hold")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    READ_DRAINED_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    method: str
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    put: PutHeader
    get: GetRequest
    read_drained: ReadDrainedRequest
    hold: HoldRequest
    def __init__(self, method: _Optional[str] = ..., metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., put: _Optional[_Union[PutHeader, _Mapping]] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., read_drained: _Optional[_Union[ReadDrainedRequest, _Mapping]] = ..., hold: _Optional[_Union[HoldRequest, _Mapping]] = ...) -> None: ...

class MetadataEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class StreamReply(_message.Message):
    __slots__ = ("code", "detail", "ack")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    code: int
    detail: str
    ack: PutAck
    def __init__(self, code: _Optional[int] = ..., detail: _Optional[str] = ..., ack: _Optional[_Union[PutAck, _Mapping]] = ...) -> None: ...

class WakeRequest(_message.Message):
    __slots__ = ("benefactor_id", "incarnation", "orders", "drain", "orders_reply", "orders_mac", "orders_last", "orders_epoch")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ORDERS_REPLY_FIELD_NUMBER: _ClassVar[int]
    ORDERS_MAC_FIELD_NUMBER: _ClassVar[int]
    ORDERS_LAST_FIELD_NUMBER: _ClassVar[int]
    ORDERS_EPOCH_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    incarnation: int
    orders: bool
    drain: bool
    orders_reply: bytes
    orders_mac: bytes
    orders_last: int
    orders_epoch: int
    def __init__(self, benefactor_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., orders: _Optional[bool] = ..., drain: _Optional[bool] = ..., orders_reply: _Optional[bytes] = ..., orders_mac: _Optional[bytes] = ..., orders_last: _Optional[int] = ..., orders_epoch: _Optional[int] = ...) -> None: ...

class WakeReply(_message.Message):
    __slots__ = ("known", "acked", "epoch")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    known: bool
    acked: int
    epoch: int
    def __init__(self, known: _Optional[bool] = ..., acked: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ReadDrainedRequest(_message.Message):
    __slots__ = ("drained", "key")
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    drained: str
    key: _common_pb2.ChunkKey
    def __init__(self, drained: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ...) -> None: ...

class PutHeader(_message.Message):
    __slots__ = ("namespace", "key", "seq", "session")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: _common_pb2.ChunkKey
    seq: int
    session: int
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., seq: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class PutFrame(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PutHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PutHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutAck(_message.Message):
    __slots__ = ("seq", "receipt")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    receipt: bytes
    def __init__(self, seq: _Optional[int] = ..., receipt: _Optional[bytes] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("namespace", "key")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: _common_pb2.ChunkKey
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ...) -> None: ...

class GetFrame(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ChunkList(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkKey]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[_common_pb2.ChunkKey, _Mapping]]] = ...) -> None: ...

class HasReply(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, present: _Optional[_Iterable[bool]] = ...) -> None: ...
