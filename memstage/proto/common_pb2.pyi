from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkKey(_message.Message):
    __slots__ = ("hash", "length")
    HASH_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    length: int
    def __init__(self, hash: _Optional[bytes] = ..., length: _Optional[int] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ("benefactor_id", "address", "receipt")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    address: str
    receipt: bytes
    def __init__(self, benefactor_id: _Optional[str] = ..., address: _Optional[str] = ..., receipt: _Optional[bytes] = ...) -> None: ...
