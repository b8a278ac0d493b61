"""Tenant ids: the same rule as the ``tenants`` table's CHECK constraint.

Ids appear in API keys (``lily_<tenant>.<key id>.<secret>``), URLs and the RLS setting, so they are
kept to lower-case letters, digits and ``-``.
"""

from __future__ import annotations

import re

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def is_tenant_id(value: str) -> bool:
    return TENANT_ID.fullmatch(value) is not None
