from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShowCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShowCAResponse(_message.Message):
    __slots__ = ("trust_domain", "authorities", "bundle_sequence", "upstream")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    authorities: _containers.RepeatedCompositeFieldContainer[Authority]
    bundle_sequence: int
    upstream: bool
    def __init__(self, trust_domain: _Optional[str] = ..., authorities: _Optional[_Iterable[_Union[Authority, _Mapping]]] = ..., bundle_sequence: _Optional[int] = ..., upstream: _Optional[bool] = ...) -> None: ...

class Authority(_message.Message):
    __slots__ = ("authority_id", "kind", "state", "key_type", "not_before", "not_after", "certificate_der", "subject", "tainted", "revoked")
    AUTHORITY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TAINTED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    authority_id: str
    kind: str
    state: str
    key_type: str
    not_before: int
    not_after: int
    certificate_der: bytes
    subject: str
    tainted: bool
    revoked: bool
    def __init__(self, authority_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., key_type: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., certificate_der: _Optional[bytes] = ..., subject: _Optional[str] = ..., tainted: _Optional[bool] = ..., revoked: _Optional[bool] = ...) -> None: ...

class MintX509SVIDRequest(_message.Message):
    __slots__ = ("spiffe_id", "dns_names", "ttl_seconds", "csr")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    csr: bytes
    def __init__(self, spiffe_id: _Optional[str] = ..., dns_names: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., csr: _Optional[bytes] = ...) -> None: ...

class MintX509SVIDResponse(_message.Message):
    __slots__ = ("cert_chain", "bundle", "expires_at", "serial")
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    bundle: _containers.RepeatedScalarFieldContainer[bytes]
    expires_at: int
    serial: str
    def __init__(self, cert_chain: _Optional[_Iterable[bytes]] = ..., bundle: _Optional[_Iterable[bytes]] = ..., expires_at: _Optional[int] = ..., serial: _Optional[str] = ...) -> None: ...

class MintJWTSVIDRequest(_message.Message):
    __slots__ = ("spiffe_id", "audience", "ttl_seconds")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    audience: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    def __init__(self, spiffe_id: _Optional[str] = ..., audience: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class MintJWTSVIDResponse(_message.Message):
    __slots__ = ("token", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: int
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBundleResponse(_message.Message):
    __slots__ = ("spiffe_jwks", "pem", "sequence", "refresh_hint_seconds")
    SPIFFE_JWKS_FIELD_NUMBER: _ClassVar[int]
    PEM_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_HINT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    spiffe_jwks: str
    pem: str
    sequence: int
    refresh_hint_seconds: int
    def __init__(self, spiffe_jwks: _Optional[str] = ..., pem: _Optional[str] = ..., sequence: _Optional[int] = ..., refresh_hint_seconds: _Optional[int] = ...) -> None: ...

class Selector(_message.Message):
    __slots__ = ("type", "value")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    type: str
    value: str
    def __init__(self, type: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "spiffe_id", "parent_id", "selectors", "x509_svid_ttl", "jwt_svid_ttl", "dns_names", "federates_with", "admin", "downstream", "hint", "expires_at", "revision", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    X509_SVID_TTL_FIELD_NUMBER: _ClassVar[int]
    JWT_SVID_TTL_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    FEDERATES_WITH_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    DOWNSTREAM_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spiffe_id: str
    parent_id: str
    selectors: _containers.RepeatedCompositeFieldContainer[Selector]
    x509_svid_ttl: int
    jwt_svid_ttl: int
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    federates_with: _containers.RepeatedScalarFieldContainer[str]
    admin: bool
    downstream: bool
    hint: str
    expires_at: int
    revision: int
    created_at: int
    def __init__(self, id: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., selectors: _Optional[_Iterable[_Union[Selector, _Mapping]]] = ..., x509_svid_ttl: _Optional[int] = ..., jwt_svid_ttl: _Optional[int] = ..., dns_names: _Optional[_Iterable[str]] = ..., federates_with: _Optional[_Iterable[str]] = ..., admin: _Optional[bool] = ..., downstream: _Optional[bool] = ..., hint: _Optional[str] = ..., expires_at: _Optional[int] = ..., revision: _Optional[int] = ..., created_at: _Optional[int] = ...) -> None: ...

class CreateEntryRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class CreateEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("spiffe_id", "parent_id", "selector")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    parent_id: str
    selector: str
    def __init__(self, spiffe_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., selector: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class UpdateEntryRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class UpdateEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class DeleteEntryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteEntryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrepareAuthorityRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ActivateAuthorityRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class TaintAuthorityRequest(_message.Message):
    __slots__ = ("kind", "authority_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    authority_id: str
    def __init__(self, kind: _Optional[str] = ..., authority_id: _Optional[str] = ...) -> None: ...

class RevokeAuthorityRequest(_message.Message):
    __slots__ = ("kind", "authority_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    authority_id: str
    def __init__(self, kind: _Optional[str] = ..., authority_id: _Optional[str] = ...) -> None: ...

class AuthorityResponse(_message.Message):
    __slots__ = ("authority", "bundle_sequence")
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    authority: Authority
    bundle_sequence: int
    def __init__(self, authority: _Optional[_Union[Authority, _Mapping]] = ..., bundle_sequence: _Optional[int] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("kind", "target", "reason", "reason_code", "note", "revoked_at", "revoked_by")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    kind: str
    target: str
    reason: str
    reason_code: int
    note: str
    revoked_at: int
    revoked_by: str
    def __init__(self, kind: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., reason_code: _Optional[int] = ..., note: _Optional[str] = ..., revoked_at: _Optional[int] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("kind", "target", "reason", "note")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    target: str
    reason: str
    note: str
    def __init__(self, kind: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revocation",)
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    revocation: Revocation
    def __init__(self, revocation: _Optional[_Union[Revocation, _Mapping]] = ...) -> None: ...

class UnrevokeRequest(_message.Message):
    __slots__ = ("kind", "target")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    kind: str
    target: str
    def __init__(self, kind: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class UnrevokeResponse(_message.Message):
    __slots__ = ("lifted",)
    LIFTED_FIELD_NUMBER: _ClassVar[int]
    lifted: Revocation
    def __init__(self, lifted: _Optional[_Union[Revocation, _Mapping]] = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class ListSvidsRequest(_message.Message):
    __slots__ = ("authority_id", "spiffe_id")
    AUTHORITY_ID_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    authority_id: str
    spiffe_id: str
    def __init__(self, authority_id: _Optional[str] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class Svid(_message.Message):
    __slots__ = ("serial", "kind", "spiffe_id", "authority_id", "not_before", "not_after", "issued_at", "requester", "revocation")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    serial: str
    kind: str
    spiffe_id: str
    authority_id: str
    not_before: int
    not_after: int
    issued_at: int
    requester: str
    revocation: Revocation
    def __init__(self, serial: _Optional[str] = ..., kind: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., authority_id: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., issued_at: _Optional[int] = ..., requester: _Optional[str] = ..., revocation: _Optional[_Union[Revocation, _Mapping]] = ...) -> None: ...

class ListSvidsResponse(_message.Message):
    __slots__ = ("svids",)
    SVIDS_FIELD_NUMBER: _ClassVar[int]
    svids: _containers.RepeatedCompositeFieldContainer[Svid]
    def __init__(self, svids: _Optional[_Iterable[_Union[Svid, _Mapping]]] = ...) -> None: ...

class ListSdsStreamsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSdsStreamsResponse(_message.Message):
    __slots__ = ("streams", "serving")
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[SdsStream]
    serving: bool
    def __init__(self, streams: _Optional[_Iterable[_Union[SdsStream, _Mapping]]] = ..., serving: _Optional[bool] = ...) -> None: ...

class SdsStream(_message.Message):
    __slots__ = ("node_id", "cluster", "pid", "uid", "resource_names", "sent_version", "acked_version", "responses", "acks", "nacks", "last_nack", "nacked_version", "opened_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAMES_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    NACKS_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    NACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster: str
    pid: int
    uid: int
    resource_names: _containers.RepeatedScalarFieldContainer[str]
    sent_version: str
    acked_version: str
    responses: int
    acks: int
    nacks: int
    last_nack: str
    nacked_version: str
    opened_at: int
    def __init__(self, node_id: _Optional[str] = ..., cluster: _Optional[str] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., resource_names: _Optional[_Iterable[str]] = ..., sent_version: _Optional[str] = ..., acked_version: _Optional[str] = ..., responses: _Optional[int] = ..., acks: _Optional[int] = ..., nacks: _Optional[int] = ..., last_nack: _Optional[str] = ..., nacked_version: _Optional[str] = ..., opened_at: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "time", "actor", "action", "subject", "details_json", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: int
    actor: str
    action: str
    subject: str
    details_json: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., subject: _Optional[str] = ..., details_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "subject", "spiffe_id")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    since: int
    subject: str
    spiffe_id: str
    def __init__(self, since: _Optional[int] = ..., subject: _Optional[str] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("intact", "records", "broken_seq", "problem", "last_hash")
    INTACT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BROKEN_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    LAST_HASH_FIELD_NUMBER: _ClassVar[int]
    intact: bool
    records: int
    broken_seq: int
    problem: str
    last_hash: str
    def __init__(self, intact: _Optional[bool] = ..., records: _Optional[int] = ..., broken_seq: _Optional[int] = ..., problem: _Optional[str] = ..., last_hash: _Optional[str] = ...) -> None: ...

class StorePosition(_message.Message):
    __slots__ = ("generation", "audit_seq", "audit_hash")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HASH_FIELD_NUMBER: _ClassVar[int]
    generation: str
    audit_seq: int
    audit_hash: str
    def __init__(self, generation: _Optional[str] = ..., audit_seq: _Optional[int] = ..., audit_hash: _Optional[str] = ...) -> None: ...

class ShowStoreRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShowStoreResponse(_message.Message):
    __slots__ = ("regressed", "reason", "remembered", "found", "mirror")
    REGRESSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REMEMBERED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    regressed: bool
    reason: str
    remembered: StorePosition
    found: StorePosition
    mirror: StorePosition
    def __init__(self, regressed: _Optional[bool] = ..., reason: _Optional[str] = ..., remembered: _Optional[_Union[StorePosition, _Mapping]] = ..., found: _Optional[_Union[StorePosition, _Mapping]] = ..., mirror: _Optional[_Union[StorePosition, _Mapping]] = ...) -> None: ...

class ReseedStoreRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReseedStoreResponse(_message.Message):
    __slots__ = ("audit_seq", "audit_hash", "kept_revocations", "kept_audit_records")
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HASH_FIELD_NUMBER: _ClassVar[int]
    KEPT_REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    KEPT_AUDIT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    audit_seq: int
    audit_hash: str
    kept_revocations: int
    kept_audit_records: int
    def __init__(self, audit_seq: _Optional[int] = ..., audit_hash: _Optional[str] = ..., kept_revocations: _Optional[int] = ..., kept_audit_records: _Optional[int] = ...) -> None: ...

class AcceptStoreRequest(_message.Message):
    __slots__ = ("audit_hash",)
    AUDIT_HASH_FIELD_NUMBER: _ClassVar[int]
    audit_hash: str
    def __init__(self, audit_hash: _Optional[str] = ...) -> None: ...

class AcceptStoreResponse(_message.Message):
    __slots__ = ("previous", "adopted")
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    previous: StorePosition
    adopted: StorePosition
    def __init__(self, previous: _Optional[_Union[StorePosition, _Mapping]] = ..., adopted: _Optional[_Union[StorePosition, _Mapping]] = ...) -> None: ...

class BackupStoreRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RestoreStoreRequest(_message.Message):
    __slots__ = ("data", "force")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    force: bool
    def __init__(self, data: _Optional[bytes] = ..., force: _Optional[bool] = ...) -> None: ...

class RestoreStoreResponse(_message.Message):
    __slots__ = ("replaced", "restored", "position", "authorities", "entries", "revocations", "issuances", "audit_records", "forced")
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    AUTHORITIES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    ISSUANCES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RECORDS_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    replaced: StorePosition
    restored: StorePosition
    position: StorePosition
    authorities: int
    entries: int
    revocations: int
    issuances: int
    audit_records: int
    forced: bool
    def __init__(self, replaced: _Optional[_Union[StorePosition, _Mapping]] = ..., restored: _Optional[_Union[StorePosition, _Mapping]] = ..., position: _Optional[_Union[StorePosition, _Mapping]] = ..., authorities: _Optional[int] = ..., entries: _Optional[int] = ..., revocations: _Optional[int] = ..., issuances: _Optional[int] = ..., audit_records: _Optional[int] = ..., forced: _Optional[bool] = ...) -> None: ...

class ListFederatedBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FederatedBundle(_message.Message):
    __slots__ = ("trust_domain", "spiffe_jwks", "pem", "sequence", "has_bundle", "endpoint_url", "profile", "refreshed_at", "last_attempt", "next_refresh", "last_error")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_JWKS_FIELD_NUMBER: _ClassVar[int]
    PEM_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HAS_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_URL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NEXT_REFRESH_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    spiffe_jwks: str
    pem: str
    sequence: int
    has_bundle: bool
    endpoint_url: str
    profile: str
    refreshed_at: float
    last_attempt: float
    next_refresh: float
    last_error: str
    def __init__(self, trust_domain: _Optional[str] = ..., spiffe_jwks: _Optional[str] = ..., pem: _Optional[str] = ..., sequence: _Optional[int] = ..., has_bundle: _Optional[bool] = ..., endpoint_url: _Optional[str] = ..., profile: _Optional[str] = ..., refreshed_at: _Optional[float] = ..., last_attempt: _Optional[float] = ..., next_refresh: _Optional[float] = ..., last_error: _Optional[str] = ...) -> None: ...

class ListFederatedBundlesResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[FederatedBundle]
    def __init__(self, bundles: _Optional[_Iterable[_Union[FederatedBundle, _Mapping]]] = ...) -> None: ...

class ExplainNativePolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExplainNativePolicyResponse(_message.Message):
    __slots__ = ("enabled", "version", "filter_name", "config_bytes", "identities", "revoked", "rules", "last_refusal", "revoked_filter_name", "revoked_version", "revoked_config_bytes", "native_only")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILTER_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    LAST_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FILTER_NAME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REVOKED_CONFIG_BYTES_FIELD_NUMBER: _ClassVar[int]
    NATIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    version: str
    filter_name: str
    config_bytes: int
    identities: int
    revoked: int
    rules: _containers.RepeatedCompositeFieldContainer[NativeRuleRouting]
    last_refusal: str
    revoked_filter_name: str
    revoked_version: str
    revoked_config_bytes: int
    native_only: bool
    def __init__(self, enabled: _Optional[bool] = ..., version: _Optional[str] = ..., filter_name: _Optional[str] = ..., config_bytes: _Optional[int] = ..., identities: _Optional[int] = ..., revoked: _Optional[int] = ..., rules: _Optional[_Iterable[_Union[NativeRuleRouting, _Mapping]]] = ..., last_refusal: _Optional[str] = ..., revoked_filter_name: _Optional[str] = ..., revoked_version: _Optional[str] = ..., revoked_config_bytes: _Optional[int] = ..., native_only: _Optional[bool] = ...) -> None: ...

class NativeRuleRouting(_message.Message):
    __slots__ = ("rule_set", "rule", "line", "effect", "native", "why")
    RULE_SET_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    NATIVE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    rule_set: str
    rule: str
    line: int
    effect: str
    native: bool
    why: str
    def __init__(self, rule_set: _Optional[str] = ..., rule: _Optional[str] = ..., line: _Optional[int] = ..., effect: _Optional[str] = ..., native: _Optional[bool] = ..., why: _Optional[str] = ...) -> None: ...

class ListXdsNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListXdsNodesResponse(_message.Message):
    __slots__ = ("enabled", "version", "nodes", "resources", "native_only", "denied_rules")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NATIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    DENIED_RULES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    version: str
    nodes: _containers.RepeatedCompositeFieldContainer[XdsNode]
    resources: _containers.RepeatedCompositeFieldContainer[XdsResource]
    native_only: bool
    denied_rules: _containers.RepeatedCompositeFieldContainer[NativeRuleRouting]
    def __init__(self, enabled: _Optional[bool] = ..., version: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[XdsNode, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[XdsResource, _Mapping]]] = ..., native_only: _Optional[bool] = ..., denied_rules: _Optional[_Iterable[_Union[NativeRuleRouting, _Mapping]]] = ...) -> None: ...

class XdsResource(_message.Message):
    __slots__ = ("filter_name", "version", "config_bytes")
    FILTER_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_BYTES_FIELD_NUMBER: _ClassVar[int]
    filter_name: str
    version: str
    config_bytes: int
    def __init__(self, filter_name: _Optional[str] = ..., version: _Optional[str] = ..., config_bytes: _Optional[int] = ...) -> None: ...

class XdsNode(_message.Message):
    __slots__ = ("node_id", "cluster", "pid", "uid", "resource_names", "sent_version", "acked_version", "nacks", "last_nack", "nacked_version", "lag_seconds", "opened_at", "serving_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAMES_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACKS_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    NACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster: str
    pid: int
    uid: int
    resource_names: _containers.RepeatedScalarFieldContainer[str]
    sent_version: str
    acked_version: str
    nacks: int
    last_nack: str
    nacked_version: str
    lag_seconds: float
    opened_at: int
    serving_version: str
    def __init__(self, node_id: _Optional[str] = ..., cluster: _Optional[str] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., resource_names: _Optional[_Iterable[str]] = ..., sent_version: _Optional[str] = ..., acked_version: _Optional[str] = ..., nacks: _Optional[int] = ..., last_nack: _Optional[str] = ..., nacked_version: _Optional[str] = ..., lag_seconds: _Optional[float] = ..., opened_at: _Optional[int] = ..., serving_version: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("spiffe_id", "ttl")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    ttl: int
    def __init__(self, spiffe_id: _Optional[str] = ..., ttl: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: int
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("agent_id", "method", "node_id", "serial", "attested_at", "expires_at", "banned")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ATTESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    method: str
    node_id: str
    serial: str
    attested_at: int
    expires_at: int
    banned: bool
    def __init__(self, agent_id: _Optional[str] = ..., method: _Optional[str] = ..., node_id: _Optional[str] = ..., serial: _Optional[str] = ..., attested_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., banned: _Optional[bool] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ...) -> None: ...

class EvictAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class EvictAgentResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...

class BanAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class BanAgentResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...
