"""Access checks the API makes itself: writes, when it accepts them (the pipeline applies what was
accepted), and the audit of an admin reading past a deny. Reads need nothing here: the database hides
what the caller may not read (``lily.store.db.CALLER``, migration 0008).

A write to an asset the caller may read but not write is 403. A write naming, by qualified name, an
asset the caller may not read is the same 403 whether or not it exists; by id, it is the 404 of a
missing id. The asset must stay readable and writable for the caller as the write leaves it, so a
write cannot move an asset out of a policy's reach (or into a hidden one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg import AsyncCursor

from lily.api.deps import BearerCredentials, Principal, Reading, RuntimeDep, authenticate, read_as_viewer
from lily.api.runtime import Runtime
from lily.auth.cache import TenantPolicies
from lily.domain.access import AssetFacts, Decision, Policy, applies, decide
from lily.domain.assets import Asset
from lily.domain.errors import Forbidden
from lily.domain.roles import Role
from lily.pipeline.writer import CheckedAt
from lily.store import access as store
from lily.store import assets as store_assets
from lily.store import audit as store_audit
from lily.store.db import Conn


def refused(qualified_name: str) -> Forbidden:
    return Forbidden(f"you may not write asset {qualified_name[:200]!r}", qualified_name=qualified_name[:200])


def facts(asset: Asset) -> AssetFacts:
    return AssetFacts(asset.asset_id, asset.qualified_name, asset.type, asset.tags, asset.classifications)


def proposed(
    qualified_name: str, existing: Asset | None, *, type: str | None = None, tags: Sequence[str] | None = None
) -> AssetFacts:
    """The asset as a write would leave it (what it does not set stays as it is)."""
    return AssetFacts(
        existing.asset_id if existing else None,
        qualified_name,
        type if type is not None else (existing.type if existing else ""),
        list(tags) if tags is not None else (existing.tags if existing else []),
        existing.classifications if existing else [],
    )


class Checker:
    """The tenant's policies, read once, deciding for one caller (a request or a bulk job)."""

    def __init__(self, principal: Principal, policies: Iterable[Policy]) -> None:
        self.principal = principal
        self.policies = [p for p in policies if applies(p, principal.names)]

    @classmethod
    def of_rows(cls, principal: Principal, rows: Iterable[dict[str, Any]]) -> Checker:
        """From the tenant's policy rows as :func:`lily.store.access.all_policies` reads them."""
        return cls(principal, (Policy.from_row(r) for r in rows))

    @classmethod
    async def load(cls, conn: Conn, principal: Principal) -> Checker:
        return cls.of_rows(principal, await store.all_policies(conn, principal.tenant_id))

    def decide(self, asset: AssetFacts) -> dict[str, Decision]:
        return decide(self.principal.role, self.principal.names, self.policies, asset)

    def unbound(self) -> bool:
        """No policy applies to the caller and its role may write: nothing to check (the usual case)."""
        return not self.policies and self.principal.role.allows(Role.editor)

    def may_write_somewhere(self) -> bool:
        """Whether the caller can write any asset at all (its role, or an allow-write policy)."""
        return self.principal.role.allows(Role.editor) or any(
            p.effect == "allow" and "write" in p.actions for p in self.policies
        )

    def writable(self, *states: AssetFacts) -> list[Decision]:
        """The write decisions of every state, or :class:`Forbidden` when any state is not readable and
        writable. Decisions an admin overrode come back (to be audited)."""
        overridden = []
        for state in states:
            decided = self.decide(state)
            if not (decided["read"].allowed and decided["write"].allowed):
                raise refused(state.qualified_name)
            overridden += [d for d in (decided["read"], decided["write"]) if d.reason == "admin" and d.policy_id]
        return overridden


async def may_write(principal: Annotated[Principal, Depends(authenticate)], runtime: RuntimeDep) -> Principal:
    """The role gate of write routes: editors and up, or a caller some allow-write policy names (each
    asset is then checked as the write names it). Refused before the body is looked at, like a role."""
    if principal.role.allows(Role.editor):
        return principal
    async with runtime.db.tenant(principal.tenant_id) as conn:
        checker = await Checker.load(conn, principal)
    if not checker.may_write_somewhere():
        raise _may_not_write(principal)
    return principal


def _may_not_write(principal: Principal) -> Forbidden:
    return Forbidden(
        f"this needs the editor role or higher, or a policy allowing writes; you have {principal.role.value}"
    )


Writer = Annotated[Principal, Depends(may_write)]


@dataclass(frozen=True, slots=True)
class Writing:
    """A caller that may write somewhere, and the tenant's policies deciding for it, for a route that checks
    its writes by name (:func:`check_named_write`).

    Usually judged without a round trip: a cached credential (:class:`lily.api.deps.Reading`) and the
    tenant's cached policies binding the caller in nothing. ``unconfirmed`` then holds the epochs of both,
    which the append confirms in its own statement (``lily_append_checked``): if either moved, nothing is
    appended (:class:`lily.pipeline.writer.StaleCheck`) and the route goes again with :meth:`confirmed`.
    Otherwise the credential and the policies were read in one round trip, as :meth:`confirmed` does."""

    principal: Principal
    checker: Checker
    reading: Reading
    unconfirmed: CheckedAt | None = None

    async def confirmed(self) -> Writing:
        """The caller as it is now, and the policies as they are, read in one round trip."""
        return await _read_writing(self.reading)


async def may_write_checked(request: Request, credentials: BearerCredentials) -> Writing:
    """:func:`may_write`, with the policies it read kept for the write's own check."""
    reading = await read_as_viewer(request, credentials)
    epoch = reading.unconfirmed_epoch
    # A keyed write is claimed in a transaction of its own before its append: checked there, as before.
    if epoch is not None and "idempotency-key" not in request.headers:
        cached = reading.runtime.policies.get(reading.tenant_id)
        if cached is not None:
            checker = Checker(reading.principal, cached.policies)
            # Only a caller nothing binds: whatever the cache would refuse, or have checked against the
            # assets (and audited, for an admin), is read anew first.
            if checker.unbound():
                return Writing(reading.principal, checker, reading, CheckedAt(epoch, cached.epoch))
    return await _read_writing(reading)


async def _read_writing(reading: Reading) -> Writing:
    tenant_id = reading.tenant_id

    async def queue(conn: Conn) -> tuple[AsyncCursor[dict[str, Any]], AsyncCursor[dict[str, Any]]]:
        return await store.queue_policy_epoch(conn, tenant_id), await store.queue_all_policies(conn, tenant_id)

    principal, (epoch, pending) = await reading.read(queue)
    found = await epoch.fetchone()
    assert found is not None
    policies = tuple(Policy.from_row(row) for row in await pending.fetchall())
    reading.runtime.policies.put(tenant_id, TenantPolicies(found["epoch"], policies))
    checker = Checker(principal, policies)
    if not checker.may_write_somewhere():
        raise _may_not_write(principal)
    return Writing(principal, checker, reading)


CheckedWriter = Annotated[Writing, Depends(may_write_checked)]


Target = tuple[str, Asset | None, Sequence[AssetFacts]]


async def check_write(
    conn: Conn,
    principal: Principal,
    targets: Sequence[Target],
    *,
    read: Sequence[str] = (),
    checker: Checker | None = None,
) -> None:
    """Refuse (403) unless every target may be written. A target is (qualified name, the row the caller
    sees or None, the states to check). A name that is an asset the caller may not read is refused alike;
    the names in ``read`` must only be readable."""
    checker = checker or await Checker.load(conn, principal)
    if checker.unbound():
        return
    hidden = await store.hidden_names(conn, [*(name for name, _, _ in targets), *read])
    if hidden:
        raise refused(sorted(hidden)[0])
    # A name that is no asset yet (it would become a placeholder) is judged by what the name alone says,
    # so naming a hidden prefix is refused alike whether or not an asset has that name.
    for name in read:
        if not checker.decide(proposed(name, None))["read"].allowed:
            raise refused(name)
    for _, existing, states in targets:
        overridden = checker.writable(*states)
        if overridden and existing is not None:
            await audit_override(conn, principal, existing.asset_id, "write", overridden)


async def check_named(
    conn: Conn,
    principal: Principal,
    names: Sequence[str],
    *,
    type: str | None = None,
    tags: Sequence[str] | None = None,
    read: Sequence[str] = (),
    checker: Checker | None = None,
) -> None:
    """A write to assets named by qualified name (setting ``type`` and ``tags`` when given): each must be
    writable as it is and as the write leaves it; the names in ``read`` only readable."""
    checker = checker or await Checker.load(conn, principal)
    if checker.unbound():
        return
    existing = await store_assets.current_by_names(conn, principal.tenant_id, list(names))
    targets = []
    for name in dict.fromkeys(names):
        now = existing.get(name)
        states = [proposed(name, now, type=type, tags=tags), *([facts(now)] if now is not None else [])]
        targets.append((name, now, states))
    await check_write(conn, principal, targets, read=read, checker=checker)


async def check_named_write(
    runtime: Runtime,
    principal: Principal,
    names: Sequence[str],
    *,
    type: str | None = None,
    tags: Sequence[str] | None = None,
    read: Sequence[str] = (),
    checker: Checker | None = None,
) -> None:
    """:func:`check_named` for a route that checks before it appends: the policies are read in one round
    trip (:meth:`Database.read`; none when the route has them, ``checker``: :class:`Writing`), and only a
    caller some policy applies to, or whose role cannot write, is checked further, in a tenant
    transaction. Before, every write opened a transaction to find there was nothing to check."""
    if checker is None:
        async with runtime.db.read(principal.tenant_id) as conn:
            pending = await store.queue_all_policies(conn, principal.tenant_id)
        checker = Checker.of_rows(principal, await pending.fetchall())
    if checker.unbound():
        return
    async with runtime.db.tenant(principal.tenant_id) as conn:
        await check_named(conn, principal, names, type=type, tags=tags, read=read, checker=checker)


async def check_asset(
    conn: Conn, principal: Principal, asset: Asset, *, type: str | None = None, tags: Sequence[str] | None = None
) -> None:
    """A write to an asset the caller read by id (RLS: one it may not read was a 404 already)."""
    after = proposed(asset.qualified_name, asset, type=type, tags=tags)
    await check_write(conn, principal, [(asset.qualified_name, asset, [facts(asset), after])])


async def audit_override(conn: Conn, principal: Principal, asset_id: Any, action: str, by: Sequence[Decision]) -> None:
    """Record that an admin acted on an asset a deny policy would have kept it from."""
    await store_audit.write_audit(
        conn,
        principal.tenant_id,
        [
            {
                "action": "access.admin_override",
                "actor": principal.actor,
                "asset_id": asset_id,
                "at": datetime.now(UTC),
                "detail": {
                    "access": action,
                    "policies": sorted({str(d.policy_id) for d in by}),
                },
            }
        ],
    )


async def audit_admin_read(conn: Conn, principal: Principal, asset: Asset) -> None:
    """An admin read an asset: audit it when a deny-read policy would have hidden it from the admin."""
    if principal.role is not Role.admin:
        return
    decided = (await Checker.load(conn, principal)).decide(facts(asset))["read"]
    if decided.reason == "admin" and decided.policy_id is not None:
        await audit_override(conn, principal, asset.asset_id, "read", [decided])


class BulkAdmission:
    """A bulk job's per-item check (``lily.bulk.ingest.Admit``), on a connection of its own. With no
    policy applying to an editor, there is nothing to check per item (:meth:`needed` is False)."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.checker: Checker | None = None
        self.conn: Conn | None = None

    async def load(self, conn: Conn) -> None:
        """Read the policies; 403 for the whole job when the caller can write nothing at all."""
        self.checker = await Checker.load(conn, self.principal)
        if not self.checker.may_write_somewhere():
            raise Forbidden(f"this needs the editor role or a policy allowing writes; you have {self.principal.role}")

    def needed(self) -> bool:
        return self.checker is None or not self.checker.unbound()

    async def __call__(self, item: dict[str, Any]) -> str | None:
        assert self.conn is not None and self.checker is not None
        try:
            await check_named(
                self.conn, self.principal, [item["qualified_name"]], type=item.get("type"), tags=item.get("tags"),
                checker=self.checker,
            )  # fmt: skip
        except Forbidden as exc:
            return exc.detail
        return None


async def check_govern(conn: Conn, principal: Principal, asset: Asset) -> None:
    """403 unless the caller may govern ``asset`` (classify it; stewards by role, others by an allow
    policy); an asset it may not read was a 404 already (RLS). For governance routes."""
    decided = (await Checker.load(conn, principal)).decide(facts(asset))["govern"]
    if not decided.allowed:
        raise Forbidden(f"you may not govern asset {asset.qualified_name[:200]!r}")
    if decided.reason == "admin" and decided.policy_id is not None:
        await audit_override(conn, principal, asset.asset_id, "govern", [decided])
