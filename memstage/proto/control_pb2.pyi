from memstage.proto import benefactor_pb2 as _benefactor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ControlPortsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ControlPortsReply(_message.Message):
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

class ControlRequest(_message.Message):
    __slots__ = ("method", "call", "metadata", "timeout_ms")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    method: str
    call: int
    metadata: _containers.RepeatedCompositeFieldContainer[_benefactor_pb2.MetadataEntry]
    timeout_ms: int
    def __init__(self, method: _Optional[str] = ..., call: _Optional[int] = ..., metadata: _Optional[_Iterable[_Union[_benefactor_pb2.MetadataEntry, _Mapping]]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("call", "code", "detail")
    CALL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    call: int
    code: int
    detail: str
    def __init__(self, call: _Optional[int] = ..., code: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
