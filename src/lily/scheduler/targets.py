"""Which hosts a connector may connect to: the address guard, and never Lily's own database.

A connector's target is named by a tenant admin, so it is as dangerous as an outbound URL: every
address the host resolves to must pass :mod:`lily.netguard` (public only, unless
``LILY_ALLOW_PRIVATE_TARGETS=true``), and Lily's own database (the same server and database name) is
refused even then. Another database on Lily's server is allowed when private targets are: it holds no
Lily rows, and a test or a small deployment may well keep its sources there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict

from lily.config import Settings
from lily.domain.errors import Invalid
from lily.netguard import BlockedAddress, check_target_sync, refuse_own_database

FIELD = "config"


@dataclass(frozen=True, slots=True)
class TargetGuard:
    allow_private: bool
    database_url: str
    own_database: str | None

    @classmethod
    def from_settings(cls, settings: Settings, database_url: str) -> TargetGuard:
        try:
            own = str(conninfo_to_dict(database_url).get("dbname") or "") or None
        except Exception:
            own = None
        return cls(settings.allow_private_targets, database_url, own)

    def check(self, host: str, port: int, database: str | None = None) -> list[str]:
        """The addresses to connect to; :class:`Invalid` (naming ``config``) when the target is refused."""
        if not host or host.startswith("/"):
            raise Invalid("a connector target must be a host name or address, not a socket path", field=FIELD)
        try:
            addresses = check_target_sync(host, port, allow_private=self.allow_private)
        except BlockedAddress as exc:
            raise Invalid(str(exc), field=FIELD) from None
        try:
            refuse_own_database(host, port, database_url=self.database_url)
        except BlockedAddress:
            # Lily's server: refused when the database is Lily's (or unknown, as for a MySQL target
            # on PostgreSQL's port, which cannot be told apart safely).
            if database is None or self.own_database is None or database == self.own_database:
                raise Invalid(
                    f"refused to connect to {host!r}:{port}: it is Lily's own database", field=FIELD
                ) from None
        return [str(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses]
