from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_CONFIGURE: _ClassVar[Phase]
    PHASE_ADVERTISE: _ClassVar[Phase]
    PHASE_SHARE_KEYS: _ClassVar[Phase]
    PHASE_MASKED_INPUT: _ClassVar[Phase]
    PHASE_CONSISTENCY: _ClassVar[Phase]
    PHASE_UNMASK: _ClassVar[Phase]
    PHASE_DONE: _ClassVar[Phase]
    PHASE_ABORTED: _ClassVar[Phase]
    PHASE_COMPUTE: _ClassVar[Phase]

class RingDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RING_DTYPE_UNSPECIFIED: _ClassVar[RingDtype]
    RING_DTYPE_UINT32: _ClassVar[RingDtype]
    RING_DTYPE_UINT64: _ClassVar[RingDtype]

class TensorDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_DTYPE_UNSPECIFIED: _ClassVar[TensorDtype]
    TENSOR_DTYPE_FLOAT32: _ClassVar[TensorDtype]
    TENSOR_DTYPE_FLOAT16: _ClassVar[TensorDtype]
    TENSOR_DTYPE_BFLOAT16: _ClassVar[TensorDtype]
    TENSOR_DTYPE_FLOAT64: _ClassVar[TensorDtype]

class UploadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPLOAD_KIND_UNSPECIFIED: _ClassVar[UploadKind]
    UPLOAD_KIND_ADVERTISE_KEYS: _ClassVar[UploadKind]
    UPLOAD_KIND_SHARE_KEYS: _ClassVar[UploadKind]
    UPLOAD_KIND_MASKED_INPUT: _ClassVar[UploadKind]
    UPLOAD_KIND_CONSISTENCY_SIGNATURE: _ClassVar[UploadKind]
    UPLOAD_KIND_UNMASK_RESPONSE: _ClassVar[UploadKind]
    UPLOAD_KIND_REFUSAL: _ClassVar[UploadKind]
    UPLOAD_KIND_PLAINTEXT_INPUT: _ClassVar[UploadKind]
    UPLOAD_KIND_COMPUTE_READY: _ClassVar[UploadKind]
PHASE_UNSPECIFIED: Phase
PHASE_CONFIGURE: Phase
PHASE_ADVERTISE: Phase
PHASE_SHARE_KEYS: Phase
PHASE_MASKED_INPUT: Phase
PHASE_CONSISTENCY: Phase
PHASE_UNMASK: Phase
PHASE_DONE: Phase
PHASE_ABORTED: Phase
PHASE_COMPUTE: Phase
RING_DTYPE_UNSPECIFIED: RingDtype
RING_DTYPE_UINT32: RingDtype
RING_DTYPE_UINT64: RingDtype
TENSOR_DTYPE_UNSPECIFIED: TensorDtype
TENSOR_DTYPE_FLOAT32: TensorDtype
TENSOR_DTYPE_FLOAT16: TensorDtype
TENSOR_DTYPE_BFLOAT16: TensorDtype
TENSOR_DTYPE_FLOAT64: TensorDtype
UPLOAD_KIND_UNSPECIFIED: UploadKind
UPLOAD_KIND_ADVERTISE_KEYS: UploadKind
UPLOAD_KIND_SHARE_KEYS: UploadKind
UPLOAD_KIND_MASKED_INPUT: UploadKind
UPLOAD_KIND_CONSISTENCY_SIGNATURE: UploadKind
UPLOAD_KIND_UNMASK_RESPONSE: UploadKind
UPLOAD_KIND_REFUSAL: UploadKind
UPLOAD_KIND_PLAINTEXT_INPUT: UploadKind
UPLOAD_KIND_COMPUTE_READY: UploadKind

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: str
    def __init__(self, status_json: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("software_version", "capabilities", "protocol_version")
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    software_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    protocol_version: int
    def __init__(self, software_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("federation_name", "protocol_version", "max_message_bytes", "chunk_bytes", "poll_interval_ms", "client_id")
    FEDERATION_NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    POLL_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    federation_name: str
    protocol_version: int
    max_message_bytes: int
    chunk_bytes: int
    poll_interval_ms: int
    client_id: str
    def __init__(self, federation_name: _Optional[str] = ..., protocol_version: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., poll_interval_ms: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("last_instruction_id", "round", "session_id", "phase")
    LAST_INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    last_instruction_id: int
    round: int
    session_id: bytes
    phase: Phase
    def __init__(self, last_instruction_id: _Optional[int] = ..., round: _Optional[int] = ..., session_id: _Optional[bytes] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("instruction_id", "session_id", "deadline_unix_ms", "wait", "round_start", "advert_broadcast", "share_keys_relay", "consistency_request", "unmask_request", "finished", "session_aborted", "masked_input_request")
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    ADVERT_BROADCAST_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_RELAY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SESSION_ABORTED_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    instruction_id: int
    session_id: bytes
    deadline_unix_ms: int
    wait: Wait
    round_start: RoundStart
    advert_broadcast: AdvertBroadcast
    share_keys_relay: ShareKeysRelay
    consistency_request: ConsistencyRequest
    unmask_request: UnmaskRequest
    finished: Finished
    session_aborted: SessionAborted
    masked_input_request: MaskedInputRequest
    def __init__(self, instruction_id: _Optional[int] = ..., session_id: _Optional[bytes] = ..., deadline_unix_ms: _Optional[int] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., round_start: _Optional[_Union[RoundStart, _Mapping]] = ..., advert_broadcast: _Optional[_Union[AdvertBroadcast, _Mapping]] = ..., share_keys_relay: _Optional[_Union[ShareKeysRelay, _Mapping]] = ..., consistency_request: _Optional[_Union[ConsistencyRequest, _Mapping]] = ..., unmask_request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ..., session_aborted: _Optional[_Union[SessionAborted, _Mapping]] = ..., masked_input_request: _Optional[_Union[MaskedInputRequest, _Mapping]] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("retry_after_ms",)
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    def __init__(self, retry_after_ms: _Optional[int] = ...) -> None: ...

class RoundStart(_message.Message):
    __slots__ = ("round", "task", "task_config", "session", "global_model", "insecure_plaintext", "previous_stage", "fault_proofs")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    INSECURE_PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STAGE_FIELD_NUMBER: _ClassVar[int]
    FAULT_PROOFS_FIELD_NUMBER: _ClassVar[int]
    round: int
    task: str
    task_config: bytes
    session: SessionConfigMsg
    global_model: ModelRef
    insecure_plaintext: bool
    previous_stage: SumEvidence
    fault_proofs: _containers.RepeatedCompositeFieldContainer[DealingFaultProof]
    def __init__(self, round: _Optional[int] = ..., task: _Optional[str] = ..., task_config: _Optional[bytes] = ..., session: _Optional[_Union[SessionConfigMsg, _Mapping]] = ..., global_model: _Optional[_Union[ModelRef, _Mapping]] = ..., insecure_plaintext: _Optional[bool] = ..., previous_stage: _Optional[_Union[SumEvidence, _Mapping]] = ..., fault_proofs: _Optional[_Iterable[_Union[DealingFaultProof, _Mapping]]] = ...) -> None: ...

class SumEvidence(_message.Message):
    __slots__ = ("session_id", "inputs", "b_commitments", "b_seeds", "mask_keys")
    class BCommitmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class BSeedsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class MaskKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    B_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    B_SEEDS_FIELD_NUMBER: _ClassVar[int]
    MASK_KEYS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    inputs: _containers.RepeatedCompositeFieldContainer[MaskedInputUpload]
    b_commitments: _containers.ScalarMap[str, bytes]
    b_seeds: _containers.ScalarMap[str, bytes]
    mask_keys: _containers.ScalarMap[str, bytes]
    def __init__(self, session_id: _Optional[bytes] = ..., inputs: _Optional[_Iterable[_Union[MaskedInputUpload, _Mapping]]] = ..., b_commitments: _Optional[_Mapping[str, bytes]] = ..., b_seeds: _Optional[_Mapping[str, bytes]] = ..., mask_keys: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("hash", "size_bytes", "dtype")
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    hash: bytes
    size_bytes: int
    dtype: TensorDtype
    def __init__(self, hash: _Optional[bytes] = ..., size_bytes: _Optional[int] = ..., dtype: _Optional[_Union[TensorDtype, str]] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("reason", "final_model", "rounds_completed")
    REASON_FIELD_NUMBER: _ClassVar[int]
    FINAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    reason: str
    final_model: ModelRef
    rounds_completed: int
    def __init__(self, reason: _Optional[str] = ..., final_model: _Optional[_Union[ModelRef, _Mapping]] = ..., rounds_completed: _Optional[int] = ...) -> None: ...

class SessionAborted(_message.Message):
    __slots__ = ("round", "label", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    label: str
    reason: str
    def __init__(self, round: _Optional[int] = ..., label: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("kind", "session_id", "round", "total_bytes", "sha256", "instruction_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    kind: UploadKind
    session_id: bytes
    round: int
    total_bytes: int
    sha256: bytes
    instruction_id: int
    def __init__(self, kind: _Optional[_Union[UploadKind, str]] = ..., session_id: _Optional[bytes] = ..., round: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., instruction_id: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadEnvelope(_message.Message):
    __slots__ = ("advertise_keys", "share_keys", "masked_input", "consistency_signature", "unmask_response", "refusal", "plaintext_input", "compute_ready")
    ADVERTISE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    UNMASK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_INPUT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_READY_FIELD_NUMBER: _ClassVar[int]
    advertise_keys: AdvertiseKeys
    share_keys: ShareKeysUpload
    masked_input: MaskedInputUpload
    consistency_signature: ConsistencySignature
    unmask_response: UnmaskResponse
    refusal: Refusal
    plaintext_input: PlaintextInput
    compute_ready: ComputeReady
    def __init__(self, advertise_keys: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeysUpload, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInputUpload, _Mapping]] = ..., consistency_signature: _Optional[_Union[ConsistencySignature, _Mapping]] = ..., unmask_response: _Optional[_Union[UnmaskResponse, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., plaintext_input: _Optional[_Union[PlaintextInput, _Mapping]] = ..., compute_ready: _Optional[_Union[ComputeReady, _Mapping]] = ...) -> None: ...

class PlaintextInput(_message.Message):
    __slots__ = ("round", "sender", "segments")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    sender: str
    segments: _containers.RepeatedCompositeFieldContainer[PlaintextSegment]
    def __init__(self, round: _Optional[int] = ..., sender: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[PlaintextSegment, _Mapping]]] = ...) -> None: ...

class PlaintextSegment(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("round", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    reason: str
    def __init__(self, round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("ok", "error_phase", "error_message", "error_type")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_PHASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error_phase: Phase
    error_message: str
    error_type: str
    def __init__(self, ok: _Optional[bool] = ..., error_phase: _Optional[_Union[Phase, str]] = ..., error_message: _Optional[str] = ..., error_type: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("model_hash", "offset")
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    model_hash: bytes
    offset: int
    def __init__(self, model_hash: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("total_bytes", "sha256", "offset")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    sha256: bytes
    offset: int
    def __init__(self, total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("round", "session_id", "phase")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round: int
    session_id: bytes
    phase: Phase
    def __init__(self, round: _Optional[int] = ..., session_id: _Optional[bytes] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("server_time_unix_ms", "poll_now", "session_open")
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    POLL_NOW_FIELD_NUMBER: _ClassVar[int]
    SESSION_OPEN_FIELD_NUMBER: _ClassVar[int]
    server_time_unix_ms: int
    poll_now: bool
    session_open: bool
    def __init__(self, server_time_unix_ms: _Optional[int] = ..., poll_now: _Optional[bool] = ..., session_open: _Optional[bool] = ...) -> None: ...

class SegmentSpec(_message.Message):
    __slots__ = ("name", "length", "clip", "frac_bits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    length: int
    clip: float
    frac_bits: int
    def __init__(self, name: _Optional[str] = ..., length: _Optional[int] = ..., clip: _Optional[float] = ..., frac_bits: _Optional[int] = ...) -> None: ...

class VectorSpecMsg(_message.Message):
    __slots__ = ("ring_bits", "segments")
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ring_bits: int
    segments: _containers.RepeatedCompositeFieldContainer[SegmentSpec]
    def __init__(self, ring_bits: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[SegmentSpec, _Mapping]]] = ...) -> None: ...

class SessionConfigMsg(_message.Message):
    __slots__ = ("round", "roster", "threshold", "n_colluding", "min_cohort", "spec", "model_hash", "label", "instruction_hash", "consortium")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    N_COLLUDING_FIELD_NUMBER: _ClassVar[int]
    MIN_COHORT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_HASH_FIELD_NUMBER: _ClassVar[int]
    CONSORTIUM_FIELD_NUMBER: _ClassVar[int]
    round: int
    roster: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    n_colluding: int
    min_cohort: int
    spec: VectorSpecMsg
    model_hash: bytes
    label: str
    instruction_hash: bytes
    consortium: bytes
    def __init__(self, round: _Optional[int] = ..., roster: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., n_colluding: _Optional[int] = ..., min_cohort: _Optional[int] = ..., spec: _Optional[_Union[VectorSpecMsg, _Mapping]] = ..., model_hash: _Optional[bytes] = ..., label: _Optional[str] = ..., instruction_hash: _Optional[bytes] = ..., consortium: _Optional[bytes] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("client_id", "round", "config_digest", "model_hash", "pk_cipher", "pk_mask", "signature", "cert_chain", "abandoned")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    PK_CIPHER_FIELD_NUMBER: _ClassVar[int]
    PK_MASK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round: int
    config_digest: bytes
    model_hash: bytes
    pk_cipher: bytes
    pk_mask: bytes
    signature: bytes
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    abandoned: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, client_id: _Optional[str] = ..., round: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., model_hash: _Optional[bytes] = ..., pk_cipher: _Optional[bytes] = ..., pk_mask: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., cert_chain: _Optional[_Iterable[bytes]] = ..., abandoned: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AdvertBroadcast(_message.Message):
    __slots__ = ("round", "config_digest", "adverts")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    config_digest: bytes
    adverts: _containers.RepeatedCompositeFieldContainer[AdvertiseKeys]
    def __init__(self, round: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., adverts: _Optional[_Iterable[_Union[AdvertiseKeys, _Mapping]]] = ...) -> None: ...

class ShareKeysUpload(_message.Message):
    __slots__ = ("session_id", "sender", "ciphertexts", "b_commitment", "commitments")
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class CommitmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ShareCommitment
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ShareCommitment, _Mapping]] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    B_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    ciphertexts: _containers.ScalarMap[str, bytes]
    b_commitment: bytes
    commitments: _containers.MessageMap[str, ShareCommitment]
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., ciphertexts: _Optional[_Mapping[str, bytes]] = ..., b_commitment: _Optional[bytes] = ..., commitments: _Optional[_Mapping[str, ShareCommitment]] = ...) -> None: ...

class ShareCommitment(_message.Message):
    __slots__ = ("s", "b", "signature", "seed_commitment")
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    s: bytes
    b: bytes
    signature: bytes
    seed_commitment: bytes
    def __init__(self, s: _Optional[bytes] = ..., b: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("share", "ciphertext_digest", "commitment")
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    share: bytes
    ciphertext_digest: bytes
    commitment: ShareCommitment
    def __init__(self, share: _Optional[bytes] = ..., ciphertext_digest: _Optional[bytes] = ..., commitment: _Optional[_Union[ShareCommitment, _Mapping]] = ...) -> None: ...

class DealingFaultProof(_message.Message):
    __slots__ = ("session_id", "dealer", "kind", "cert_chain", "pk_mask", "seed_commitment", "shares")
    class SharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RevealedShare
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RevealedShare, _Mapping]] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DEALER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    PK_MASK_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    dealer: str
    kind: bytes
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    pk_mask: bytes
    seed_commitment: bytes
    shares: _containers.MessageMap[str, RevealedShare]
    def __init__(self, session_id: _Optional[bytes] = ..., dealer: _Optional[str] = ..., kind: _Optional[bytes] = ..., cert_chain: _Optional[_Iterable[bytes]] = ..., pk_mask: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ..., shares: _Optional[_Mapping[str, RevealedShare]] = ...) -> None: ...

class ShareKeysRelay(_message.Message):
    __slots__ = ("session_id", "recipient", "u2", "ciphertexts", "commitments")
    class CiphertextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class CommitmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ShareCommitment
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ShareCommitment, _Mapping]] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    U2_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    recipient: str
    u2: _containers.RepeatedScalarFieldContainer[str]
    ciphertexts: _containers.ScalarMap[str, bytes]
    commitments: _containers.MessageMap[str, ShareCommitment]
    def __init__(self, session_id: _Optional[bytes] = ..., recipient: _Optional[str] = ..., u2: _Optional[_Iterable[str]] = ..., ciphertexts: _Optional[_Mapping[str, bytes]] = ..., commitments: _Optional[_Mapping[str, ShareCommitment]] = ...) -> None: ...

class ComputeReady(_message.Message):
    __slots__ = ("session_id", "sender", "complaints", "cipher_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    CIPHER_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    complaints: _containers.RepeatedScalarFieldContainer[str]
    cipher_key: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., complaints: _Optional[_Iterable[str]] = ..., cipher_key: _Optional[bytes] = ...) -> None: ...

class MaskedInputRequest(_message.Message):
    __slots__ = ("session_id", "ready")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    ready: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[bytes] = ..., ready: _Optional[_Iterable[str]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("name", "dtype", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: RingDtype
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[RingDtype, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class MaskedInputUpload(_message.Message):
    __slots__ = ("session_id", "sender", "spec_hash", "segments", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    spec_hash: bytes
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., spec_hash: _Optional[bytes] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("session_id", "u3")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    U3_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    u3: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[bytes] = ..., u3: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencySignature(_message.Message):
    __slots__ = ("session_id", "sender", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("session_id", "u3", "dropped", "signatures")
    class SignaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    U3_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    u3: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.ScalarMap[str, bytes]
    def __init__(self, session_id: _Optional[bytes] = ..., u3: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("session_id", "sender", "b_shares", "s_shares")
    class BSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class SSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    B_SHARES_FIELD_NUMBER: _ClassVar[int]
    S_SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    b_shares: _containers.ScalarMap[str, bytes]
    s_shares: _containers.ScalarMap[str, bytes]
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., b_shares: _Optional[_Mapping[str, bytes]] = ..., s_shares: _Optional[_Mapping[str, bytes]] = ...) -> None: ...
