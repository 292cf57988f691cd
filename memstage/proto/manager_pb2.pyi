from memstage.proto import common_pb2 as _common_pb2
from memstage.proto import control_pb2 as _control_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenGrant(_message.Message):
    __slots__ = ("namespace", "mode")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    mode: str
    def __init__(self, namespace: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class TokenRequest(_message.Message):
    __slots__ = ("grants", "id", "note")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[TokenGrant]
    id: str
    note: str
    def __init__(self, grants: _Optional[_Iterable[_Union[TokenGrant, _Mapping]]] = ..., id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class TokenReply(_message.Message):
    __slots__ = ("token", "id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    id: str
    def __init__(self, token: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "grants", "created_at", "revoked", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    grants: _containers.RepeatedCompositeFieldContainer[TokenGrant]
    created_at: float
    revoked: bool
    note: str
    def __init__(self, id: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[TokenGrant, _Mapping]]] = ..., created_at: _Optional[float] = ..., revoked: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class TokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class BenefactorStats(_message.Message):
    __slots__ = ("memory_capacity", "memory_used", "drain_backlog", "chunk_count", "drain_error", "drained_bytes")
    MEMORY_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_ERROR_FIELD_NUMBER: _ClassVar[int]
    DRAINED_BYTES_FIELD_NUMBER: _ClassVar[int]
    memory_capacity: int
    memory_used: int
    drain_backlog: int
    chunk_count: int
    drain_error: str
    drained_bytes: int
    def __init__(self, memory_capacity: _Optional[int] = ..., memory_used: _Optional[int] = ..., drain_backlog: _Optional[int] = ..., chunk_count: _Optional[int] = ..., drain_error: _Optional[str] = ..., drained_bytes: _Optional[int] = ...) -> None: ...

class NamespacedChunks(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkKey]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[_common_pb2.ChunkKey, _Mapping]]] = ...) -> None: ...

class HeldChunk(_message.Message):
    __slots__ = ("key", "gen", "sessions")
    KEY_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.ChunkKey
    gen: int
    sessions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., gen: _Optional[int] = ..., sessions: _Optional[_Iterable[int]] = ...) -> None: ...

class HeldChunks(_message.Message):
    __slots__ = ("namespace", "chunks")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    chunks: _containers.RepeatedCompositeFieldContainer[HeldChunk]
    def __init__(self, namespace: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[HeldChunk, _Mapping]]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("benefactor_id", "address", "stats", "held", "incarnation", "receipt_key", "domain")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_KEY_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    address: str
    stats: BenefactorStats
    held: _containers.RepeatedCompositeFieldContainer[HeldChunks]
    incarnation: int
    receipt_key: bytes
    domain: str
    def __init__(self, benefactor_id: _Optional[str] = ..., address: _Optional[str] = ..., stats: _Optional[_Union[BenefactorStats, _Mapping]] = ..., held: _Optional[_Iterable[_Union[HeldChunks, _Mapping]]] = ..., incarnation: _Optional[int] = ..., receipt_key: _Optional[bytes] = ..., domain: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("heartbeat_interval_seconds", "heartbeat_port", "revoked_tokens")
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PORT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_seconds: float
    heartbeat_port: int
    revoked_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, heartbeat_interval_seconds: _Optional[float] = ..., heartbeat_port: _Optional[int] = ..., revoked_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("benefactor_id", "stats", "incarnation", "sessions")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    stats: BenefactorStats
    incarnation: int
    sessions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, benefactor_id: _Optional[str] = ..., stats: _Optional[_Union[BenefactorStats, _Mapping]] = ..., incarnation: _Optional[int] = ..., sessions: _Optional[_Iterable[int]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known", "heartbeat_interval_seconds", "orders_waiting", "drain_waiting", "heartbeat_port", "orders_last", "orders_epoch")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ORDERS_WAITING_FIELD_NUMBER: _ClassVar[int]
    DRAIN_WAITING_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PORT_FIELD_NUMBER: _ClassVar[int]
    ORDERS_LAST_FIELD_NUMBER: _ClassVar[int]
    ORDERS_EPOCH_FIELD_NUMBER: _ClassVar[int]
    known: bool
    heartbeat_interval_seconds: float
    orders_waiting: int
    drain_waiting: bool
    heartbeat_port: int
    orders_last: int
    orders_epoch: int
    def __init__(self, known: _Optional[bool] = ..., heartbeat_interval_seconds: _Optional[float] = ..., orders_waiting: _Optional[int] = ..., drain_waiting: _Optional[bool] = ..., heartbeat_port: _Optional[int] = ..., orders_last: _Optional[int] = ..., orders_epoch: _Optional[int] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("benefactor_id", "incarnation", "held")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    incarnation: int
    held: _containers.RepeatedCompositeFieldContainer[HeldChunks]
    def __init__(self, benefactor_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., held: _Optional[_Iterable[_Union[HeldChunks, _Mapping]]] = ...) -> None: ...

class ReconcileReply(_message.Message):
    __slots__ = ("orphans",)
    ORPHANS_FIELD_NUMBER: _ClassVar[int]
    orphans: int
    def __init__(self, orphans: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("benefactor_id", "incarnation", "done")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    incarnation: int
    done: bool
    def __init__(self, benefactor_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ("backlog_bytes", "backlog_chunks", "versions_lost", "memory_only_dropped")
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_LOST_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ONLY_DROPPED_FIELD_NUMBER: _ClassVar[int]
    backlog_bytes: int
    backlog_chunks: int
    versions_lost: int
    memory_only_dropped: int
    def __init__(self, backlog_bytes: _Optional[int] = ..., backlog_chunks: _Optional[int] = ..., versions_lost: _Optional[int] = ..., memory_only_dropped: _Optional[int] = ...) -> None: ...

class OrdersRequest(_message.Message):
    __slots__ = ("benefactor_id", "incarnation", "acked", "epoch", "memory_used", "copied")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    COPIED_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    incarnation: int
    acked: int
    epoch: int
    memory_used: int
    copied: _containers.RepeatedCompositeFieldContainer[CopyResult]
    def __init__(self, benefactor_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., acked: _Optional[int] = ..., epoch: _Optional[int] = ..., memory_used: _Optional[int] = ..., copied: _Optional[_Iterable[_Union[CopyResult, _Mapping]]] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("seq", "namespace", "session", "hold", "release", "end_session", "free", "copy", "hold_packed", "hold_hashes", "hold_length", "hold_gen", "revoked_tokens")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    END_SESSION_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    HOLD_PACKED_FIELD_NUMBER: _ClassVar[int]
    HOLD_HASHES_FIELD_NUMBER: _ClassVar[int]
    HOLD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HOLD_GEN_FIELD_NUMBER: _ClassVar[int]
    REVOKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    namespace: str
    session: int
    hold: _containers.RepeatedCompositeFieldContainer[HeldChunk]
    release: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkKey]
    end_session: bool
    free: _containers.RepeatedCompositeFieldContainer[HeldChunk]
    copy: _containers.RepeatedCompositeFieldContainer[CopyOrder]
    hold_packed: bytes
    hold_hashes: bytes
    hold_length: int
    hold_gen: int
    revoked_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., namespace: _Optional[str] = ..., session: _Optional[int] = ..., hold: _Optional[_Iterable[_Union[HeldChunk, _Mapping]]] = ..., release: _Optional[_Iterable[_Union[_common_pb2.ChunkKey, _Mapping]]] = ..., end_session: _Optional[bool] = ..., free: _Optional[_Iterable[_Union[HeldChunk, _Mapping]]] = ..., copy: _Optional[_Iterable[_Union[CopyOrder, _Mapping]]] = ..., hold_packed: _Optional[bytes] = ..., hold_hashes: _Optional[bytes] = ..., hold_length: _Optional[int] = ..., hold_gen: _Optional[int] = ..., revoked_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class CopyOrder(_message.Message):
    __slots__ = ("key", "gen", "source_id", "source_address", "stripe", "drained", "ship")
    KEY_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    SHIP_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.ChunkKey
    gen: int
    source_id: str
    source_address: str
    stripe: StripeSpec
    drained: str
    ship: _containers.RepeatedCompositeFieldContainer[ParityShip]
    def __init__(self, key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., gen: _Optional[int] = ..., source_id: _Optional[str] = ..., source_address: _Optional[str] = ..., stripe: _Optional[_Union[StripeSpec, _Mapping]] = ..., drained: _Optional[str] = ..., ship: _Optional[_Iterable[_Union[ParityShip, _Mapping]]] = ...) -> None: ...

class ParityShip(_message.Message):
    __slots__ = ("index", "benefactor_id", "address", "gen")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    index: int
    benefactor_id: str
    address: str
    gen: int
    def __init__(self, index: _Optional[int] = ..., benefactor_id: _Optional[str] = ..., address: _Optional[str] = ..., gen: _Optional[int] = ...) -> None: ...

class StripeSpec(_message.Message):
    __slots__ = ("id", "k", "m", "size", "members", "index")
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    id: int
    k: int
    m: int
    size: int
    members: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    index: int
    def __init__(self, id: _Optional[int] = ..., k: _Optional[int] = ..., m: _Optional[int] = ..., size: _Optional[int] = ..., members: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., index: _Optional[int] = ...) -> None: ...

class CopyResult(_message.Message):
    __slots__ = ("namespace", "key", "gen", "error", "stripe", "index", "cpu_seconds", "loaded", "holder")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: _common_pb2.ChunkKey
    gen: int
    error: str
    stripe: int
    index: int
    cpu_seconds: float
    loaded: bool
    holder: str
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., gen: _Optional[int] = ..., error: _Optional[str] = ..., stripe: _Optional[int] = ..., index: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., loaded: _Optional[bool] = ..., holder: _Optional[str] = ...) -> None: ...

class OrdersReply(_message.Message):
    __slots__ = ("known", "orders", "epoch")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    known: bool
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    epoch: int
    def __init__(self, known: _Optional[bool] = ..., orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("namespace", "path", "striping")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STRIPING_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    striping: StripingRequest
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., striping: _Optional[_Union[StripingRequest, _Mapping]] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("session", "lease_seconds", "grant", "map")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    session: int
    lease_seconds: float
    grant: str
    map: StripingMap
    def __init__(self, session: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., grant: _Optional[str] = ..., map: _Optional[_Union[StripingMap, _Mapping]] = ...) -> None: ...

class RenewSessionsRequest(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sessions: _Optional[_Iterable[int]] = ...) -> None: ...

class RenewSessionsReply(_message.Message):
    __slots__ = ("open", "grants")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    open: _containers.RepeatedScalarFieldContainer[bool]
    grants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, open: _Optional[_Iterable[bool]] = ..., grants: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: int
    def __init__(self, session: _Optional[int] = ...) -> None: ...

class AbortSessionReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session", "namespace", "chunks")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    session: int
    namespace: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    def __init__(self, session: _Optional[int] = ..., namespace: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StripingRequest(_message.Message):
    __slots__ = ("namespace", "width", "exclude", "chunk_size", "session")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    width: int
    exclude: _containers.RepeatedScalarFieldContainer[str]
    chunk_size: int
    session: int
    def __init__(self, namespace: _Optional[str] = ..., width: _Optional[int] = ..., exclude: _Optional[_Iterable[str]] = ..., chunk_size: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class StripingMap(_message.Message):
    __slots__ = ("benefactors",)
    BENEFACTORS_FIELD_NUMBER: _ClassVar[int]
    benefactors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Location]
    def __init__(self, benefactors: _Optional[_Iterable[_Union[_common_pb2.Location, _Mapping]]] = ...) -> None: ...

class FindChunksReply(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, present: _Optional[_Iterable[bool]] = ...) -> None: ...

class ChunkRef(_message.Message):
    __slots__ = ("key", "locations", "drained", "stripe")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.ChunkKey
    locations: _containers.RepeatedCompositeFieldContainer[_common_pb2.Location]
    drained: str
    stripe: StripeSpec
    def __init__(self, key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., locations: _Optional[_Iterable[_Union[_common_pb2.Location, _Mapping]]] = ..., drained: _Optional[str] = ..., stripe: _Optional[_Union[StripeSpec, _Mapping]] = ...) -> None: ...

class ClientStats(_message.Message):
    __slots__ = ("bytes_written", "bytes_sent", "bytes_deduplicated", "oab_seconds", "asb_seconds")
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    OAB_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ASB_SECONDS_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    bytes_sent: int
    bytes_deduplicated: int
    oab_seconds: float
    asb_seconds: float
    def __init__(self, bytes_written: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_deduplicated: _Optional[int] = ..., oab_seconds: _Optional[float] = ..., asb_seconds: _Optional[float] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("namespace", "path", "size", "chunks", "stats", "session", "attrs", "packed", "merge", "base_version", "checkpoint", "want_info")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    WANT_INFO_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    size: int
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    stats: ClientStats
    session: int
    attrs: FileAttrs
    packed: PackedChunks
    merge: bool
    base_version: int
    checkpoint: int
    want_info: bool
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., stats: _Optional[_Union[ClientStats, _Mapping]] = ..., session: _Optional[int] = ..., attrs: _Optional[_Union[FileAttrs, _Mapping]] = ..., packed: _Optional[_Union[PackedChunks, _Mapping]] = ..., merge: _Optional[bool] = ..., base_version: _Optional[int] = ..., checkpoint: _Optional[int] = ..., want_info: _Optional[bool] = ...) -> None: ...

class PackedChunks(_message.Message):
    __slots__ = ("keys", "counts", "benefactors", "locations", "receipts")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    BENEFACTORS_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    keys: bytes
    counts: bytes
    benefactors: _containers.RepeatedScalarFieldContainer[str]
    locations: bytes
    receipts: bytes
    def __init__(self, keys: _Optional[bytes] = ..., counts: _Optional[bytes] = ..., benefactors: _Optional[_Iterable[str]] = ..., locations: _Optional[bytes] = ..., receipts: _Optional[bytes] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("version", "info")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    version: int
    info: FileInfo
    def __init__(self, version: _Optional[int] = ..., info: _Optional[_Union[FileInfo, _Mapping]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("namespace", "path", "version", "stripes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    version: int
    stripes: bool
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[int] = ..., stripes: _Optional[bool] = ...) -> None: ...

class VersionMap(_message.Message):
    __slots__ = ("path", "version", "size", "chunks", "committed_at", "pfs_readers", "grant")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    PFS_READERS_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: int
    size: int
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    committed_at: float
    pfs_readers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Location]
    grant: str
    def __init__(self, path: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., committed_at: _Optional[float] = ..., pfs_readers: _Optional[_Iterable[_Union[_common_pb2.Location, _Mapping]]] = ..., grant: _Optional[str] = ...) -> None: ...

class PathRequest(_message.Message):
    __slots__ = ("namespace", "path", "attrs", "protection", "start", "latest", "after", "limit", "wait_protected_ms")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_PROTECTED_MS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    attrs: FileAttrs
    protection: bool
    start: bool
    latest: bool
    after: str
    limit: int
    wait_protected_ms: int
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., attrs: _Optional[_Union[FileAttrs, _Mapping]] = ..., protection: _Optional[bool] = ..., start: _Optional[bool] = ..., latest: _Optional[bool] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ..., wait_protected_ms: _Optional[int] = ...) -> None: ...

class FileAttrs(_message.Message):
    __slots__ = ("mode", "uid", "gid", "atime_ns", "mtime_ns", "ino", "access")
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ino: int
    access: bool
    def __init__(self, mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., atime_ns: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., ino: _Optional[int] = ..., access: _Optional[bool] = ...) -> None: ...

class SetAttrRequest(_message.Message):
    __slots__ = ("namespace", "path", "attrs")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    attrs: FileAttrs
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., attrs: _Optional[_Union[FileAttrs, _Mapping]] = ...) -> None: ...

class NodeRequest(_message.Message):
    __slots__ = ("namespace", "path", "mode", "rdev", "attrs")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    mode: int
    rdev: int
    attrs: FileAttrs
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., rdev: _Optional[int] = ..., attrs: _Optional[_Union[FileAttrs, _Mapping]] = ...) -> None: ...

class SymlinkRequest(_message.Message):
    __slots__ = ("namespace", "path", "target", "attrs")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    target: str
    attrs: FileAttrs
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., target: _Optional[str] = ..., attrs: _Optional[_Union[FileAttrs, _Mapping]] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("path", "is_dir", "size", "version", "committed_at", "version_count", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns", "nlink", "target", "ino", "stored", "rdev", "protected")
    PATH_FIELD_NUMBER: _ClassVar[int]
    IS_DIR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NLINK_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    path: str
    is_dir: bool
    size: int
    version: int
    committed_at: float
    version_count: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    target: str
    ino: int
    stored: int
    rdev: int
    protected: bool
    def __init__(self, path: _Optional[str] = ..., is_dir: _Optional[bool] = ..., size: _Optional[int] = ..., version: _Optional[int] = ..., committed_at: _Optional[float] = ..., version_count: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., atime_ns: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., ctime_ns: _Optional[int] = ..., nlink: _Optional[int] = ..., target: _Optional[str] = ..., ino: _Optional[int] = ..., stored: _Optional[int] = ..., rdev: _Optional[int] = ..., protected: _Optional[bool] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("entries", "more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[FileInfo]
    more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "size", "committed_at", "chunk_count", "persist", "persisted", "in_memory", "lost", "lost_reason", "drain_error", "unavailable")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_FIELD_NUMBER: _ClassVar[int]
    IN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    LOST_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAIN_ERROR_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    version: int
    size: int
    committed_at: float
    chunk_count: int
    persist: bool
    persisted: bool
    in_memory: bool
    lost: bool
    lost_reason: str
    drain_error: str
    unavailable: bool
    def __init__(self, version: _Optional[int] = ..., size: _Optional[int] = ..., committed_at: _Optional[float] = ..., chunk_count: _Optional[int] = ..., persist: _Optional[bool] = ..., persisted: _Optional[bool] = ..., in_memory: _Optional[bool] = ..., lost: _Optional[bool] = ..., lost_reason: _Optional[str] = ..., drain_error: _Optional[str] = ..., unavailable: _Optional[bool] = ...) -> None: ...

class VersionsReply(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("series", "step", "seq", "started_at", "files", "bytes", "persist", "state")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    series: str
    step: int
    seq: int
    started_at: float
    files: int
    bytes: int
    persist: bool
    state: str
    def __init__(self, series: _Optional[str] = ..., step: _Optional[int] = ..., seq: _Optional[int] = ..., started_at: _Optional[float] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., persist: _Optional[bool] = ..., state: _Optional[str] = ...) -> None: ...

class PrefetchReply(_message.Message):
    __slots__ = ("files", "bytes", "loaded_bytes", "failed_chunks", "error", "pending_chunks")
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PENDING_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    files: int
    bytes: int
    loaded_bytes: int
    failed_chunks: int
    error: str
    pending_chunks: int
    def __init__(self, files: _Optional[int] = ..., bytes: _Optional[int] = ..., loaded_bytes: _Optional[int] = ..., failed_chunks: _Optional[int] = ..., error: _Optional[str] = ..., pending_chunks: _Optional[int] = ...) -> None: ...

class CheckpointsReply(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ...) -> None: ...

class RenameRequest(_message.Message):
    __slots__ = ("namespace", "path", "destination", "want_info")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    WANT_INFO_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    destination: str
    want_info: bool
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., destination: _Optional[str] = ..., want_info: _Optional[bool] = ...) -> None: ...

class RenameReply(_message.Message):
    __slots__ = ("files_moved", "info")
    FILES_MOVED_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    files_moved: int
    info: FileInfo
    def __init__(self, files_moved: _Optional[int] = ..., info: _Optional[_Union[FileInfo, _Mapping]] = ...) -> None: ...

class MkdirReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteFileReply(_message.Message):
    __slots__ = ("versions_deleted",)
    VERSIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    versions_deleted: int
    def __init__(self, versions_deleted: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BenefactorStatus(_message.Message):
    __slots__ = ("id", "address", "alive", "stats", "last_heartbeat_age_seconds", "drain_backlog_bytes", "oldest_undrained_age_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_UNDRAINED_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    alive: bool
    stats: BenefactorStats
    last_heartbeat_age_seconds: float
    drain_backlog_bytes: int
    oldest_undrained_age_seconds: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., stats: _Optional[_Union[BenefactorStats, _Mapping]] = ..., last_heartbeat_age_seconds: _Optional[float] = ..., drain_backlog_bytes: _Optional[int] = ..., oldest_undrained_age_seconds: _Optional[float] = ...) -> None: ...

class VersionRef(_message.Message):
    __slots__ = ("namespace", "path", "version", "reason")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    path: str
    version: int
    reason: str
    def __init__(self, namespace: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class NamespaceStatus(_message.Message):
    __slots__ = ("namespace", "files", "versions", "bytes_committed", "bytes_stored", "redundancy", "versions_protected", "versions_degraded", "versions_lost", "bytes_on_pfs", "quota_memory", "memory_used", "drain_backlog_bytes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_PROTECTED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_LOST_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_PFS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    files: int
    versions: int
    bytes_committed: int
    bytes_stored: int
    redundancy: str
    versions_protected: int
    versions_degraded: int
    versions_lost: int
    bytes_on_pfs: int
    quota_memory: int
    memory_used: int
    drain_backlog_bytes: int
    def __init__(self, namespace: _Optional[str] = ..., files: _Optional[int] = ..., versions: _Optional[int] = ..., bytes_committed: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., redundancy: _Optional[str] = ..., versions_protected: _Optional[int] = ..., versions_degraded: _Optional[int] = ..., versions_lost: _Optional[int] = ..., bytes_on_pfs: _Optional[int] = ..., quota_memory: _Optional[int] = ..., memory_used: _Optional[int] = ..., drain_backlog_bytes: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("benefactors", "namespaces", "heartbeat_interval_seconds", "state_dir", "deployment", "drain_failed", "lost", "repair", "insecure", "benefactors_alive", "memory_capacity", "memory_used")
    BENEFACTORS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FAILED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    BENEFACTORS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    benefactors: _containers.RepeatedCompositeFieldContainer[BenefactorStatus]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStatus]
    heartbeat_interval_seconds: float
    state_dir: str
    deployment: str
    drain_failed: _containers.RepeatedCompositeFieldContainer[VersionRef]
    lost: _containers.RepeatedCompositeFieldContainer[VersionRef]
    repair: RepairStatus
    insecure: bool
    benefactors_alive: int
    memory_capacity: int
    memory_used: int
    def __init__(self, benefactors: _Optional[_Iterable[_Union[BenefactorStatus, _Mapping]]] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceStatus, _Mapping]]] = ..., heartbeat_interval_seconds: _Optional[float] = ..., state_dir: _Optional[str] = ..., deployment: _Optional[str] = ..., drain_failed: _Optional[_Iterable[_Union[VersionRef, _Mapping]]] = ..., lost: _Optional[_Iterable[_Union[VersionRef, _Mapping]]] = ..., repair: _Optional[_Union[RepairStatus, _Mapping]] = ..., insecure: _Optional[bool] = ..., benefactors_alive: _Optional[int] = ..., memory_capacity: _Optional[int] = ..., memory_used: _Optional[int] = ...) -> None: ...

class RepairStatus(_message.Message):
    __slots__ = ("chunks_unprotected", "stripes", "members_missing", "in_flight", "copies_made", "members_encoded", "members_rebuilt", "bytes_made", "stripe_cpu_seconds")
    CHUNKS_UNPROTECTED_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_MISSING_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    COPIES_MADE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_ENCODED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_REBUILT_FIELD_NUMBER: _ClassVar[int]
    BYTES_MADE_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    chunks_unprotected: int
    stripes: int
    members_missing: int
    in_flight: int
    copies_made: int
    members_encoded: int
    members_rebuilt: int
    bytes_made: int
    stripe_cpu_seconds: float
    def __init__(self, chunks_unprotected: _Optional[int] = ..., stripes: _Optional[int] = ..., members_missing: _Optional[int] = ..., in_flight: _Optional[int] = ..., copies_made: _Optional[int] = ..., members_encoded: _Optional[int] = ..., members_rebuilt: _Optional[int] = ..., bytes_made: _Optional[int] = ..., stripe_cpu_seconds: _Optional[float] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("namespace", "persist_every", "keep_versions", "redundancy", "pfs_keep", "quota_memory", "quota_sessions", "keep_deleted")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PERSIST_EVERY_FIELD_NUMBER: _ClassVar[int]
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    PFS_KEEP_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MEMORY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    KEEP_DELETED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    persist_every: int
    keep_versions: int
    redundancy: str
    pfs_keep: int
    quota_memory: int
    quota_sessions: int
    keep_deleted: bool
    def __init__(self, namespace: _Optional[str] = ..., persist_every: _Optional[int] = ..., keep_versions: _Optional[int] = ..., redundancy: _Optional[str] = ..., pfs_keep: _Optional[int] = ..., quota_memory: _Optional[int] = ..., quota_sessions: _Optional[int] = ..., keep_deleted: _Optional[bool] = ...) -> None: ...

class PolicyReply(_message.Message):
    __slots__ = ("namespace", "persist_every", "keep_versions", "redundancy", "pfs_keep", "quota_memory", "quota_sessions", "keep_deleted")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PERSIST_EVERY_FIELD_NUMBER: _ClassVar[int]
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    PFS_KEEP_FIELD_NUMBER: _ClassVar[int]
    QUOTA_MEMORY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    KEEP_DELETED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    persist_every: int
    keep_versions: int
    redundancy: str
    pfs_keep: int
    quota_memory: int
    quota_sessions: int
    keep_deleted: bool
    def __init__(self, namespace: _Optional[str] = ..., persist_every: _Optional[int] = ..., keep_versions: _Optional[int] = ..., redundancy: _Optional[str] = ..., pfs_keep: _Optional[int] = ..., quota_memory: _Optional[int] = ..., quota_sessions: _Optional[int] = ..., keep_deleted: _Optional[bool] = ...) -> None: ...

class CheckpointMark(_message.Message):
    __slots__ = ("namespace", "begin", "end")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    begin: int
    end: bool
    def __init__(self, namespace: _Optional[str] = ..., begin: _Optional[int] = ..., end: _Optional[bool] = ...) -> None: ...

class CheckpointMarkReply(_message.Message):
    __slots__ = ("was_open", "ended", "open", "step")
    WAS_OPEN_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    was_open: bool
    ended: int
    open: bool
    step: int
    def __init__(self, was_open: _Optional[bool] = ..., ended: _Optional[int] = ..., open: _Optional[bool] = ..., step: _Optional[int] = ...) -> None: ...

class GcRequest(_message.Message):
    __slots__ = ("namespace", "dry_run")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    dry_run: bool
    def __init__(self, namespace: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GcOrphan(_message.Message):
    __slots__ = ("path", "bytes", "why")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    path: str
    bytes: int
    why: str
    def __init__(self, path: _Optional[str] = ..., bytes: _Optional[int] = ..., why: _Optional[str] = ...) -> None: ...

class GcReply(_message.Message):
    __slots__ = ("orphans", "removed_files", "removed_bytes")
    ORPHANS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FILES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    orphans: _containers.RepeatedCompositeFieldContainer[GcOrphan]
    removed_files: int
    removed_bytes: int
    def __init__(self, orphans: _Optional[_Iterable[_Union[GcOrphan, _Mapping]]] = ..., removed_files: _Optional[int] = ..., removed_bytes: _Optional[int] = ...) -> None: ...

class DrainWorkRequest(_message.Message):
    __slots__ = ("benefactor_id", "limit", "incarnation")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    limit: int
    incarnation: int
    def __init__(self, benefactor_id: _Optional[str] = ..., limit: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class DrainTask(_message.Message):
    __slots__ = ("id", "namespace", "path", "version", "index", "count", "offset", "key", "link_from", "deployment", "committed_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LINK_FROM_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    namespace: str
    path: str
    version: int
    index: int
    count: int
    offset: int
    key: _common_pb2.ChunkKey
    link_from: str
    deployment: str
    committed_ms: int
    def __init__(self, id: _Optional[int] = ..., namespace: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., offset: _Optional[int] = ..., key: _Optional[_Union[_common_pb2.ChunkKey, _Mapping]] = ..., link_from: _Optional[str] = ..., deployment: _Optional[str] = ..., committed_ms: _Optional[int] = ...) -> None: ...

class DrainWorkReply(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[DrainTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[DrainTask, _Mapping]]] = ...) -> None: ...

class DrainResult(_message.Message):
    __slots__ = ("task_id", "drained", "missing", "error", "written")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    drained: str
    missing: bool
    error: str
    written: int
    def __init__(self, task_id: _Optional[int] = ..., drained: _Optional[str] = ..., missing: _Optional[bool] = ..., error: _Optional[str] = ..., written: _Optional[int] = ...) -> None: ...

class DrainDoneRequest(_message.Message):
    __slots__ = ("benefactor_id", "results", "incarnation")
    BENEFACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    benefactor_id: str
    results: _containers.RepeatedCompositeFieldContainer[DrainResult]
    incarnation: int
    def __init__(self, benefactor_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[DrainResult, _Mapping]]] = ..., incarnation: _Optional[int] = ...) -> None: ...

class DrainDoneReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("namespace", "mount")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MOUNT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    mount: str
    def __init__(self, namespace: _Optional[str] = ..., mount: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("seq", "paths", "pong", "lease")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    paths: _containers.RepeatedScalarFieldContainer[str]
    pong: int
    lease: float
    def __init__(self, seq: _Optional[int] = ..., paths: _Optional[_Iterable[str]] = ..., pong: _Optional[int] = ..., lease: _Optional[float] = ...) -> None: ...

class WatchAckRequest(_message.Message):
    __slots__ = ("mount", "seq", "ping")
    MOUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    mount: str
    seq: int
    ping: int
    def __init__(self, mount: _Optional[str] = ..., seq: _Optional[int] = ..., ping: _Optional[int] = ...) -> None: ...

class WatchAckReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...
