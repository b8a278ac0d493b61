"""Users and API keys as the admin API takes them: names, groups, passwords, roles.

Names are 1 to 256 printable characters (no NUL, no lone surrogate, no control character: nothing
PostgreSQL cannot store or a log line could be forged with), and no ``/``, so every name can appear in
a URL path. Groups are short identifiers (``finance``, ``data-eng``), kept sorted and unique.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lily.domain.roles import Role

MAX_NAME = 256
MAX_GROUPS = 64
GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024


def check_name(value: str) -> str:
    if not value or len(value) > MAX_NAME or not value.isprintable():
        raise ValueError(f"must be 1 to {MAX_NAME} printable characters")
    return value


def check_username(value: str) -> str:
    check_name(value)
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


def check_groups(value: list[str]) -> list[str]:
    for group in value:
        if GROUP.fullmatch(group) is None:
            raise ValueError(
                f"group {group[:80]!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
    return sorted(set(value))


def check_password(value: str) -> str:
    if len(value) < MIN_PASSWORD:
        raise ValueError(f"must be at least {MIN_PASSWORD} characters")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from exc
    return value


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(check_name)]
Username = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(check_username)]
Groups = Annotated[list[str], Field(max_length=MAX_GROUPS), AfterValidator(check_groups)]
Password = Annotated[
    str,
    Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, description="Write-only"),
    AfterValidator(check_password),
]


class UserIn(BaseModel):
    """A new user. The password is write-only: no response ever contains it or its hash."""

    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password
    role: Role
    groups: Groups = Field(default_factory=list)
    disabled: bool = False


class UserPatch(BaseModel):
    """The fields to change; those left out stay as they are. A new password or disabling the user ends
    every session the user has (its tokens are refused from the next request on)."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    groups: Groups | None = None
    disabled: bool | None = None
    password: Password | None = None


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    role: Role
