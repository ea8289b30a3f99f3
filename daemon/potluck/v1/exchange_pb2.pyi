from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateRequest(_message.Message):
    __slots__ = ("update_id",)
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    update_id: bytes
    def __init__(self, update_id: _Optional[bytes] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("total_size", "data")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    data: bytes
    def __init__(self, total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorRequest(_message.Message):
    __slots__ = ("version", "name", "offset", "length")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    version: bytes
    name: str
    offset: int
    length: int
    def __init__(self, version: _Optional[bytes] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("dtype", "shape", "total_size", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    total_size: int
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class BulkTicketRequest(_message.Message):
    __slots__ = ("version", "hashes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    version: bytes
    hashes: bool
    def __init__(self, version: _Optional[bytes] = ..., hashes: _Optional[bool] = ...) -> None: ...

class TensorMeta(_message.Message):
    __slots__ = ("name", "dtype", "shape", "hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    hash: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., hash: _Optional[bytes] = ...) -> None: ...

class BulkTicket(_message.Message):
    __slots__ = ("host", "port", "token", "tensors")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    token: bytes
    tensors: _containers.RepeatedCompositeFieldContainer[TensorMeta]
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., token: _Optional[bytes] = ..., tensors: _Optional[_Iterable[_Union[TensorMeta, _Mapping]]] = ...) -> None: ...

class ManifestRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    def __init__(self, run_id: _Optional[bytes] = ...) -> None: ...

class ManifestResponse(_message.Message):
    __slots__ = ("manifest",)
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    def __init__(self, manifest: _Optional[bytes] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("run_id", "version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    version: bytes
    def __init__(self, run_id: _Optional[bytes] = ..., version: _Optional[bytes] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("commit", "signatures")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    commit: bytes
    signatures: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, commit: _Optional[bytes] = ..., signatures: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PushUpdateResponse(_message.Message):
    __slots__ = ("accepted", "update_id", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    update_id: str
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., update_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SliceRequest(_message.Message):
    __slots__ = ("run_id", "round", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: bytes
    round: int
    attempt: int
    def __init__(self, run_id: _Optional[bytes] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class ModuleRequest(_message.Message):
    __slots__ = ("module_id",)
    MODULE_ID_FIELD_NUMBER: _ClassVar[int]
    module_id: bytes
    def __init__(self, module_id: _Optional[bytes] = ...) -> None: ...

class Post(_message.Message):
    __slots__ = ("key", "subkey", "value", "expiration")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SUBKEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    key: str
    subkey: bytes
    value: bytes
    expiration: float
    def __init__(self, key: _Optional[str] = ..., subkey: _Optional[bytes] = ..., value: _Optional[bytes] = ..., expiration: _Optional[float] = ...) -> None: ...

class PostAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
