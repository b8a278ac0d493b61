"""Tenants: the id rule (the same as the ``tenants`` table's CHECK constraint) and their configuration.

Ids appear in API keys (``lily_<tenant>.<key id>.<secret>``), URLs and the RLS setting, so they are
kept to lower-case letters, digits and ``-``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lily.domain.lineage import MAX_DEPTH

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def is_tenant_id(value: str) -> bool:
    return TENANT_ID.fullmatch(value) is not None


class PropagationConfig(BaseModel):
    """Downstream propagation (see ``lily.pipeline.propagate``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_depth: int = Field(default=10, ge=1, le=MAX_DEPTH)


class TenantConfig(BaseModel):
    """A tenant's settings. Stored as JSON on the tenant; fields left out keep their defaults."""

    model_config = ConfigDict(extra="forbid")

    propagation: PropagationConfig = Field(default_factory=PropagationConfig)

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> TenantConfig:
        """The effective configuration from what is stored (unknown keys from older versions ignored)."""
        known = {k: v for k, v in (stored or {}).items() if k in cls.model_fields}
        return cls.model_validate(known)
