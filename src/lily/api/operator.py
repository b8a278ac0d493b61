"""The operator credential: deployment-wide views (all tenants, the process) that no tenant may see.

An operator is whoever holds ``LILY_OPERATOR_TOKEN``, sent as ``Authorization: Bearer <token>``. It is
not a tenant principal and carries no tenant: routes that take it act on the deployment. When no token
is configured those routes are closed (403) rather than open: secure by default.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lily.api.deps import RuntimeDep
from lily.config import Settings
from lily.domain.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(
    auto_error=False, scheme_name="OperatorToken", description="LILY_OPERATOR_TOKEN, for deployment-wide views"
)


def is_operator_token(settings: Settings, token: str | None) -> bool:
    """Whether ``token`` is the configured operator token (for routes that also take tenant tokens)."""
    return settings.is_operator_token(token)


async def require_operator(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    # No credential at all is 401 whatever the configuration (RFC 9110: 403 is for a known caller).
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    if runtime.settings.operator_token is None:
        raise Forbidden("deployment-wide views are closed: no operator token is configured (LILY_OPERATOR_TOKEN)")
    if not runtime.settings.is_operator_token(credentials.credentials):
        raise Unauthorized("this needs the operator token")


Operator = Annotated[None, Depends(require_operator)]
