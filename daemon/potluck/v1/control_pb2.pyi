from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("node_id", "peer_id", "run", "agent_version", "listen_addrs", "addrs", "uptime_s", "peers", "role", "round", "phase", "model_version", "rejected_records", "dht_restarts", "bootstrap", "rpc_address", "record_ttl_s", "accepted_updates", "held_updates", "rejected_updates", "bad_holder_fetches", "fetched_updates", "base_version", "run_id", "version", "deadline", "participants", "committed_round", "abandoned_rounds", "round_error", "bad_tensors", "fork_switches", "accuracy", "published_updates", "published_bytes", "collecting_deadline", "attempts", "failed_attempts", "commits", "version_age_s", "aggregation", "defence", "traffic", "sync", "modules")
    class RejectedRecordsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RejectedUpdatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDRS_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REJECTED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DHT_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    RPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RECORD_TTL_S_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    HELD_UPDATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    BAD_HOLDER_FETCHES_FIELD_NUMBER: _ClassVar[int]
    FETCHED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_ROUND_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_ERROR_FIELD_NUMBER: _ClassVar[int]
    BAD_TENSORS_FIELD_NUMBER: _ClassVar[int]
    FORK_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLLECTING_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_AGE_S_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    DEFENCE_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    run: str
    agent_version: str
    listen_addrs: _containers.RepeatedScalarFieldContainer[str]
    addrs: _containers.RepeatedScalarFieldContainer[str]
    uptime_s: float
    peers: int
    role: str
    round: int
    phase: str
    model_version: str
    rejected_records: _containers.ScalarMap[str, int]
    dht_restarts: int
    bootstrap: Bootstrap
    rpc_address: str
    record_ttl_s: float
    accepted_updates: int
    held_updates: int
    rejected_updates: _containers.ScalarMap[str, int]
    bad_holder_fetches: int
    fetched_updates: int
    base_version: str
    run_id: str
    version: str
    deadline: float
    participants: _containers.RepeatedScalarFieldContainer[str]
    committed_round: int
    abandoned_rounds: int
    round_error: str
    bad_tensors: int
    fork_switches: int
    accuracy: float
    published_updates: int
    published_bytes: int
    collecting_deadline: float
    attempts: int
    failed_attempts: int
    commits: int
    version_age_s: float
    aggregation: Aggregation
    defence: Defence
    traffic: Traffic
    sync: Sync
    modules: Modules
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., run: _Optional[str] = ..., agent_version: _Optional[str] = ..., listen_addrs: _Optional[_Iterable[str]] = ..., addrs: _Optional[_Iterable[str]] = ..., uptime_s: _Optional[float] = ..., peers: _Optional[int] = ..., role: _Optional[str] = ..., round: _Optional[int] = ..., phase: _Optional[str] = ..., model_version: _Optional[str] = ..., rejected_records: _Optional[_Mapping[str, int]] = ..., dht_restarts: _Optional[int] = ..., bootstrap: _Optional[_Union[Bootstrap, _Mapping]] = ..., rpc_address: _Optional[str] = ..., record_ttl_s: _Optional[float] = ..., accepted_updates: _Optional[int] = ..., held_updates: _Optional[int] = ..., rejected_updates: _Optional[_Mapping[str, int]] = ..., bad_holder_fetches: _Optional[int] = ..., fetched_updates: _Optional[int] = ..., base_version: _Optional[str] = ..., run_id: _Optional[str] = ..., version: _Optional[str] = ..., deadline: _Optional[float] = ..., participants: _Optional[_Iterable[str]] = ..., committed_round: _Optional[int] = ..., abandoned_rounds: _Optional[int] = ..., round_error: _Optional[str] = ..., bad_tensors: _Optional[int] = ..., fork_switches: _Optional[int] = ..., accuracy: _Optional[float] = ..., published_updates: _Optional[int] = ..., published_bytes: _Optional[int] = ..., collecting_deadline: _Optional[float] = ..., attempts: _Optional[int] = ..., failed_attempts: _Optional[int] = ..., commits: _Optional[int] = ..., version_age_s: _Optional[float] = ..., aggregation: _Optional[_Union[Aggregation, _Mapping]] = ..., defence: _Optional[_Union[Defence, _Mapping]] = ..., traffic: _Optional[_Union[Traffic, _Mapping]] = ..., sync: _Optional[_Union[Sync, _Mapping]] = ..., modules: _Optional[_Union[Modules, _Mapping]] = ...) -> None: ...

class Modules(_message.Message):
    __slots__ = ("kept", "fetched", "refused", "bad_holder_fetches")
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KEPT_FIELD_NUMBER: _ClassVar[int]
    FETCHED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    BAD_HOLDER_FETCHES_FIELD_NUMBER: _ClassVar[int]
    kept: int
    fetched: int
    refused: _containers.ScalarMap[str, int]
    bad_holder_fetches: int
    def __init__(self, kept: _Optional[int] = ..., fetched: _Optional[int] = ..., refused: _Optional[_Mapping[str, int]] = ..., bad_holder_fetches: _Optional[int] = ...) -> None: ...

class Sync(_message.Message):
    __slots__ = ("version", "started", "bytes", "target_bytes", "downloaded_bytes", "tensors_reused")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_REUSED_FIELD_NUMBER: _ClassVar[int]
    version: str
    started: float
    bytes: int
    target_bytes: int
    downloaded_bytes: int
    tensors_reused: int
    def __init__(self, version: _Optional[str] = ..., started: _Optional[float] = ..., bytes: _Optional[int] = ..., target_bytes: _Optional[int] = ..., downloaded_bytes: _Optional[int] = ..., tensors_reused: _Optional[int] = ...) -> None: ...

class Traffic(_message.Message):
    __slots__ = ("kernel", "total", "kinds", "window_s")
    class KindsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TrafficBytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TrafficBytes, _Mapping]] = ...) -> None: ...
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    total: TrafficBytes
    kinds: _containers.MessageMap[str, TrafficBytes]
    window_s: float
    def __init__(self, kernel: _Optional[str] = ..., total: _Optional[_Union[TrafficBytes, _Mapping]] = ..., kinds: _Optional[_Mapping[str, TrafficBytes]] = ..., window_s: _Optional[float] = ...) -> None: ...

class TrafficBytes(_message.Message):
    __slots__ = ("sent", "recv", "sent_rate", "recv_rate")
    SENT_FIELD_NUMBER: _ClassVar[int]
    RECV_FIELD_NUMBER: _ClassVar[int]
    SENT_RATE_FIELD_NUMBER: _ClassVar[int]
    RECV_RATE_FIELD_NUMBER: _ClassVar[int]
    sent: int
    recv: int
    sent_rate: float
    recv_rate: float
    def __init__(self, sent: _Optional[int] = ..., recv: _Optional[int] = ..., sent_rate: _Optional[float] = ..., recv_rate: _Optional[float] = ...) -> None: ...

class Defence(_message.Message):
    __slots__ = ("bans", "probation", "probation_rounds", "max_updates_per_author", "equivocations_found", "evidence_verified", "evidence_rejected", "evidence_pending", "evidence_published")
    class EvidenceRejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BANS_FIELD_NUMBER: _ClassVar[int]
    PROBATION_FIELD_NUMBER: _ClassVar[int]
    PROBATION_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MAX_UPDATES_PER_AUTHOR_FIELD_NUMBER: _ClassVar[int]
    EQUIVOCATIONS_FOUND_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REJECTED_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_PENDING_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    bans: _containers.RepeatedCompositeFieldContainer[Ban]
    probation: _containers.RepeatedCompositeFieldContainer[Probation]
    probation_rounds: int
    max_updates_per_author: int
    equivocations_found: int
    evidence_verified: int
    evidence_rejected: _containers.ScalarMap[str, int]
    evidence_pending: int
    evidence_published: int
    def __init__(self, bans: _Optional[_Iterable[_Union[Ban, _Mapping]]] = ..., probation: _Optional[_Iterable[_Union[Probation, _Mapping]]] = ..., probation_rounds: _Optional[int] = ..., max_updates_per_author: _Optional[int] = ..., equivocations_found: _Optional[int] = ..., evidence_verified: _Optional[int] = ..., evidence_rejected: _Optional[_Mapping[str, int]] = ..., evidence_pending: _Optional[int] = ..., evidence_published: _Optional[int] = ...) -> None: ...

class Ban(_message.Message):
    __slots__ = ("node_id", "reason", "round", "evidence_id", "since")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    round: int
    evidence_id: str
    since: float
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ..., round: _Optional[int] = ..., evidence_id: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class Probation(_message.Message):
    __slots__ = ("node_id", "rounds_left")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    rounds_left: int
    def __init__(self, node_id: _Optional[str] = ..., rounds_left: _Optional[int] = ...) -> None: ...

class Aggregation(_message.Message):
    __slots__ = ("strategy", "placement", "audited_slices", "audited_coordinates", "convicted", "bad_faults", "last_merge_s", "audited_sums", "unaudited_sums", "placement_policy", "placement_reason", "pacing", "close_reason", "waiting_for", "last_phases", "commit_seconds", "damped", "convictions", "bad_faults_by_reason", "probe_excluded", "probe_counts")
    class LastPhasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DampedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ConvictionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BadFaultsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ProbeExcludedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ProbeCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    AUDITED_SLICES_FIELD_NUMBER: _ClassVar[int]
    AUDITED_COORDINATES_FIELD_NUMBER: _ClassVar[int]
    CONVICTED_FIELD_NUMBER: _ClassVar[int]
    BAD_FAULTS_FIELD_NUMBER: _ClassVar[int]
    LAST_MERGE_S_FIELD_NUMBER: _ClassVar[int]
    AUDITED_SUMS_FIELD_NUMBER: _ClassVar[int]
    UNAUDITED_SUMS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_POLICY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_REASON_FIELD_NUMBER: _ClassVar[int]
    PACING_FIELD_NUMBER: _ClassVar[int]
    CLOSE_REASON_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    LAST_PHASES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DAMPED_FIELD_NUMBER: _ClassVar[int]
    CONVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BAD_FAULTS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    PROBE_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    PROBE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    placement: str
    audited_slices: int
    audited_coordinates: int
    convicted: _containers.RepeatedCompositeFieldContainer[Conviction]
    bad_faults: int
    last_merge_s: float
    audited_sums: int
    unaudited_sums: int
    placement_policy: str
    placement_reason: str
    pacing: str
    close_reason: str
    waiting_for: int
    last_phases: _containers.ScalarMap[str, float]
    commit_seconds: Histogram
    damped: _containers.ScalarMap[str, float]
    convictions: _containers.ScalarMap[str, int]
    bad_faults_by_reason: _containers.ScalarMap[str, int]
    probe_excluded: _containers.ScalarMap[str, str]
    probe_counts: _containers.ScalarMap[str, int]
    def __init__(self, strategy: _Optional[str] = ..., placement: _Optional[str] = ..., audited_slices: _Optional[int] = ..., audited_coordinates: _Optional[int] = ..., convicted: _Optional[_Iterable[_Union[Conviction, _Mapping]]] = ..., bad_faults: _Optional[int] = ..., last_merge_s: _Optional[float] = ..., audited_sums: _Optional[int] = ..., unaudited_sums: _Optional[int] = ..., placement_policy: _Optional[str] = ..., placement_reason: _Optional[str] = ..., pacing: _Optional[str] = ..., close_reason: _Optional[str] = ..., waiting_for: _Optional[int] = ..., last_phases: _Optional[_Mapping[str, float]] = ..., commit_seconds: _Optional[_Union[Histogram, _Mapping]] = ..., damped: _Optional[_Mapping[str, float]] = ..., convictions: _Optional[_Mapping[str, int]] = ..., bad_faults_by_reason: _Optional[_Mapping[str, int]] = ..., probe_excluded: _Optional[_Mapping[str, str]] = ..., probe_counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bounds", "counts", "sum", "count")
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    bounds: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum: float
    count: int
    def __init__(self, bounds: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., sum: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class Conviction(_message.Message):
    __slots__ = ("node_id", "round", "fault_id", "why")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FAULT_ID_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    round: int
    fault_id: str
    why: str
    def __init__(self, node_id: _Optional[str] = ..., round: _Optional[int] = ..., fault_id: _Optional[str] = ..., why: _Optional[str] = ...) -> None: ...

class Bootstrap(_message.Message):
    __slots__ = ("state", "initial_peers", "attempts", "last_error", "next_retry_in_s")
    STATE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PEERS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_IN_S_FIELD_NUMBER: _ClassVar[int]
    state: str
    initial_peers: _containers.RepeatedScalarFieldContainer[str]
    attempts: int
    last_error: str
    next_retry_in_s: float
    def __init__(self, state: _Optional[str] = ..., initial_peers: _Optional[_Iterable[str]] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., next_retry_in_s: _Optional[float] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "peer_id", "addrs", "role", "agent_version", "last_seen", "expires_at", "round", "model_version", "sequence", "banned", "ban_reason", "probation_rounds_left")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    BAN_REASON_FIELD_NUMBER: _ClassVar[int]
    PROBATION_ROUNDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    peer_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    role: str
    agent_version: str
    last_seen: float
    expires_at: float
    round: int
    model_version: str
    sequence: int
    banned: bool
    ban_reason: str
    probation_rounds_left: int
    def __init__(self, node_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., role: _Optional[str] = ..., agent_version: _Optional[str] = ..., last_seen: _Optional[float] = ..., expires_at: _Optional[float] = ..., round: _Optional[int] = ..., model_version: _Optional[str] = ..., sequence: _Optional[int] = ..., banned: _Optional[bool] = ..., ban_reason: _Optional[str] = ..., probation_rounds_left: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class PublishUpdateRequest(_message.Message):
    __slots__ = ("update",)
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    update: bytes
    def __init__(self, update: _Optional[bytes] = ...) -> None: ...

class PublishUpdateResponse(_message.Message):
    __slots__ = ("accepted", "update_id", "reason", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    update_id: str
    reason: str
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., update_id: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListUpdatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateInfo(_message.Message):
    __slots__ = ("update_id", "author", "round", "seq", "size", "sample_count", "base", "source")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    author: str
    round: int
    seq: int
    size: int
    sample_count: int
    base: str
    source: str
    def __init__(self, update_id: _Optional[str] = ..., author: _Optional[str] = ..., round: _Optional[int] = ..., seq: _Optional[int] = ..., size: _Optional[int] = ..., sample_count: _Optional[int] = ..., base: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ListUpdatesResponse(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[UpdateInfo]
    def __init__(self, updates: _Optional[_Iterable[_Union[UpdateInfo, _Mapping]]] = ...) -> None: ...

class FetchVersionRequest(_message.Message):
    __slots__ = ("version", "round")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    version: str
    round: int
    def __init__(self, version: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class FetchVersionReply(_message.Message):
    __slots__ = ("done", "version", "round", "bytes", "target_bytes", "fetched", "holders", "reason", "error", "parent")
    DONE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    FETCHED_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    done: bool
    version: str
    round: int
    bytes: int
    target_bytes: int
    fetched: bool
    holders: int
    reason: str
    error: str
    parent: str
    def __init__(self, done: _Optional[bool] = ..., version: _Optional[str] = ..., round: _Optional[int] = ..., bytes: _Optional[int] = ..., target_bytes: _Optional[int] = ..., fetched: _Optional[bool] = ..., holders: _Optional[int] = ..., reason: _Optional[str] = ..., error: _Optional[str] = ..., parent: _Optional[str] = ...) -> None: ...
