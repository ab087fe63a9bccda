"""When authorities rotate: a pure function of the persisted timeline and the time.

The timeline follows SPIRE's: an authority lives ``ttl``; at half its life the next one is
*prepared* (it appears in the bundle at once, so relying parties learn it before it signs
anything); at five sixths it becomes *active* and the old one *retired*. A retired authority
stays in the bundle until its notAfter, when nothing it signed can still be valid, and is
then pruned. Nothing here touches keys, the store or a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ca.store.records import AuthorityRecord

PREPARE_AT = 1 / 2
ACTIVATE_AT = 5 / 6

PREPARED = "prepared"
ACTIVE = "active"
RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class RotationPlan:
    """What to do now for one kind of authority (x509 or jwt)."""

    create_active: bool = False  # nothing usable signs: mint a new authority and activate it
    prepare: bool = False  # mint the next authority in the prepared state
    activate: str | None = None  # make this prepared authority active
    retire: tuple[str, ...] = ()  # move these active authorities to retired
    prune: tuple[str, ...] = field(default=())  # drop these expired authorities

    @property
    def changes_bundle(self) -> bool:
        return bool(self.create_active or self.prepare or self.prune)

    @property
    def is_empty(self) -> bool:
        return self == RotationPlan()


def _life_point(record: AuthorityRecord, fraction: float) -> float:
    return record.not_before + (record.not_after - record.not_before) * fraction


def plan_rotation(records: Sequence[AuthorityRecord], now: float) -> RotationPlan:
    """Decide the next step for ``records`` (all of one kind) at time ``now``."""
    live = [r for r in records if r.not_after > now and not r.revoked]
    prune = tuple(r.authority_id for r in records if r not in live)
    active = [r for r in live if r.state == ACTIVE and not r.tainted]
    prepared = [r for r in live if r.state == PREPARED and not r.tainted]
    current = max(active, key=lambda r: r.not_before, default=None)
    stale_active = tuple(r.authority_id for r in live if r.state == ACTIVE and r is not current)

    if current is None:
        if prepared:
            return RotationPlan(
                activate=prepared[-1].authority_id, retire=stale_active, prune=prune
            )
        return RotationPlan(create_active=True, retire=stale_active, prune=prune)
    if now >= _life_point(current, ACTIVATE_AT) and prepared:
        return RotationPlan(
            activate=prepared[-1].authority_id,
            retire=(*stale_active, current.authority_id),
            prune=prune,
        )
    return RotationPlan(
        prepare=now >= _life_point(current, PREPARE_AT) and not prepared,
        retire=stale_active,
        prune=prune,
    )
