"""Conversions between the admin API's messages (``authd.admin.v1``) and the CA's records."""

from __future__ import annotations

from cryptography import x509

from authd.admin.authorities import AuthorityStep, CAState
from authd.admin.issuance import IssuedSvid
from authd.admin.store_ops import StoreState
from authd.api.authd.admin.v1 import admin_pb2
from authd.workload.sds_stream import SdsStreamStatus
from authd.xds.rbac_compiler import RuleRouting
from authd.xds.report import XdsReport
from ca.audit import AuditVerdict
from ca.revocation_view import RevocationReason
from ca.store import AuditRecord, AuthorityRecord, RegistrationEntry, Revocation, Selector
from ca.store.records import StorePosition, canonical_json


def entry_to_proto(entry: RegistrationEntry) -> admin_pb2.Entry:
    return admin_pb2.Entry(
        id=entry.entry_id,
        spiffe_id=entry.spiffe_id,
        parent_id=entry.parent_id,
        selectors=[admin_pb2.Selector(type=s.type, value=s.value) for s in entry.selectors],
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        dns_names=entry.dns_names,
        federates_with=entry.federates_with,
        admin=entry.admin,
        downstream=entry.downstream,
        hint=entry.hint,
        expires_at=entry.expires_at,
        revision=entry.revision,
        created_at=entry.created_at,
    )


def entry_from_proto(message: admin_pb2.Entry) -> RegistrationEntry:
    """The entry as sent, unchecked; ``EntryRules.check`` decides whether it is valid."""
    return RegistrationEntry(
        entry_id=message.id,
        spiffe_id=message.spiffe_id,
        parent_id=message.parent_id,
        selectors=tuple(Selector(s.type, s.value) for s in message.selectors),
        x509_svid_ttl=message.x509_svid_ttl,
        jwt_svid_ttl=message.jwt_svid_ttl,
        dns_names=tuple(message.dns_names),
        federates_with=tuple(message.federates_with),
        admin=message.admin,
        downstream=message.downstream,
        hint=message.hint,
        expires_at=message.expires_at,
        revision=message.revision,
        created_at=message.created_at,
    )


def authority_to_proto(record: AuthorityRecord) -> admin_pb2.Authority:
    subject = ""
    if record.certificate_der:
        certificate = x509.load_der_x509_certificate(record.certificate_der)
        subject = certificate.subject.rfc4514_string()
    return admin_pb2.Authority(
        authority_id=record.authority_id,
        kind=record.kind,
        state=record.state,
        key_type=record.key_type,
        not_before=record.not_before,
        not_after=record.not_after,
        certificate_der=record.certificate_der,
        subject=subject,
        tainted=record.tainted,
        revoked=record.revoked,
    )


def ca_state_to_proto(state: CAState) -> admin_pb2.ShowCAResponse:
    return admin_pb2.ShowCAResponse(
        trust_domain=state.trust_domain,
        authorities=[authority_to_proto(record) for record in state.authorities],
        bundle_sequence=state.bundle_sequence,
        upstream=state.upstream,
    )


def authority_step_to_proto(step: AuthorityStep) -> admin_pb2.AuthorityResponse:
    return admin_pb2.AuthorityResponse(
        authority=authority_to_proto(step.authority), bundle_sequence=step.bundle_sequence
    )


def revocation_to_proto(revocation: Revocation) -> admin_pb2.Revocation:
    reason = RevocationReason(revocation.reason)
    return admin_pb2.Revocation(
        kind=revocation.target_kind,
        target=revocation.target,
        reason=reason.label,
        reason_code=int(reason),
        note=revocation.note,
        revoked_at=revocation.revoked_at,
        revoked_by=revocation.revoked_by,
    )


def svid_to_proto(svid: IssuedSvid) -> admin_pb2.Svid:
    issuance = svid.issuance
    message = admin_pb2.Svid(
        serial=issuance.serial,
        kind=issuance.kind,
        spiffe_id=issuance.spiffe_id,
        authority_id=issuance.authority_id,
        not_before=issuance.not_before,
        not_after=issuance.not_after,
        issued_at=issuance.issued_at,
        requester=issuance.requester,
    )
    if svid.revocation is not None:
        message.revocation.CopyFrom(revocation_to_proto(svid.revocation))
    return message


def sds_stream_to_proto(stream: SdsStreamStatus) -> admin_pb2.SdsStream:
    return admin_pb2.SdsStream(
        node_id=stream.node_id,
        cluster=stream.cluster,
        pid=stream.pid,
        uid=stream.uid,
        resource_names=list(stream.names),
        sent_version=stream.sent_version,
        acked_version=stream.acked_version,
        responses=stream.responses,
        acks=stream.acks,
        nacks=stream.nacks,
        last_nack=stream.last_nack,
        nacked_version=stream.nacked_version,
        opened_at=int(stream.opened_at),
    )


def audit_to_proto(record: AuditRecord) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        seq=record.seq,
        time=record.time,
        actor=record.actor,
        action=record.action,
        subject=record.subject,
        details_json=canonical_json(record.details),
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


def audit_verdict_to_proto(verdict: AuditVerdict) -> admin_pb2.VerifyAuditResponse:
    return admin_pb2.VerifyAuditResponse(
        intact=verdict.intact,
        records=verdict.records,
        broken_seq=verdict.broken_seq or 0,
        problem=verdict.problem,
        last_hash=verdict.last_hash,
    )


def position_to_proto(position: StorePosition | None) -> admin_pb2.StorePosition | None:
    if position is None:
        return None
    return admin_pb2.StorePosition(
        generation=position.generation,
        audit_seq=position.audit_seq,
        audit_hash=position.audit_hash,
    )


def store_state_to_proto(state: StoreState) -> admin_pb2.ShowStoreResponse:
    return admin_pb2.ShowStoreResponse(
        regressed=state.regressed,
        reason=state.reason,
        remembered=position_to_proto(state.remembered),
        found=position_to_proto(state.found),
        mirror=position_to_proto(state.mirror),
    )


def _rule_routing(r: RuleRouting) -> admin_pb2.NativeRuleRouting:
    return admin_pb2.NativeRuleRouting(
        rule_set=r.rule_set, rule=r.rule, line=r.line, effect=r.effect, native=r.native, why=r.why
    )


def native_policy_to_proto(report: XdsReport) -> admin_pb2.ExplainNativePolicyResponse:
    compiled = report.compiled
    message = admin_pb2.ExplainNativePolicyResponse(
        enabled=report.enabled, last_refusal=report.last_refusal
    )
    if compiled is not None:
        message.native_only = compiled.native_only
        message.version = compiled.version
        message.filter_name = compiled.filter_name
        message.config_bytes = len(compiled.payload)
        message.identities = compiled.identities
        message.revoked = compiled.revoked
        message.rules.extend(_rule_routing(r) for r in compiled.routing)
    if report.revocations is not None:
        message.revoked_filter_name = report.revocations.filter_name
        message.revoked_version = report.revocations.version
        message.revoked_config_bytes = len(report.revocations.payload)
    return message


def xds_nodes_to_proto(report: XdsReport, now: float) -> admin_pb2.ListXdsNodesResponse:
    message = admin_pb2.ListXdsNodesResponse(
        enabled=report.enabled,
        version=report.compiled.version if report.compiled is not None else "",
    )
    if report.compiled is not None and report.compiled.native_only:
        message.native_only = True
        message.denied_rules.extend(_rule_routing(r) for r in report.compiled.denied_rules())
    for node in report.nodes:
        message.nodes.append(
            admin_pb2.XdsNode(
                node_id=node.node_id,
                cluster=node.cluster,
                pid=node.pid,
                uid=node.uid,
                resource_names=list(node.names),
                sent_version=node.sent_version,
                acked_version=node.acked_version,
                nacks=node.nacks,
                last_nack=node.last_nack,
                nacked_version=node.nacked_version,
                lag_seconds=report.lag(node, now),
                opened_at=int(node.opened_at),
                serving_version=report.serving(node),
            )
        )
    for compiled in (report.compiled, report.revocations):
        if compiled is not None:
            message.resources.append(
                admin_pb2.XdsResource(
                    filter_name=compiled.filter_name,
                    version=compiled.version,
                    config_bytes=len(compiled.payload),
                )
            )
    return message
