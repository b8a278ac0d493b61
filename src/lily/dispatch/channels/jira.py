"""Jira Cloud (REST v3): one open issue per (asset, cause).

A cause is what an event is about: ``classification:<name>`` for ``classification.added``/``removed``,
``quality:<rule>`` for ``quality.failed``/``passed``, else the event type. The first event of a cause
opens an issue (``POST /rest/api/3/issue``, the description in Atlassian Document Format) labelled with
a digest of (tenant, asset, cause); a repeat while it is open comments on it; a recovery event
(``resolve_on``) comments and moves it through the ``resolve_transition`` (default ``Done``). The open
issue is found by that label through JQL, so Lily keeps no Jira state and a retried delivery that had
already created the issue comments on it instead of opening a second one.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import httpx
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr

from lily.dispatch.channels import http
from lily.plugins.protocols import DeliveryContext, DeliveryResult


class JiraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: AnyHttpUrl  # https://<site>.atlassian.net, or any server speaking the same API
    email: str = Field(min_length=1, max_length=320)
    api_token: SecretStr
    project_key: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    issue_type: str = Field(default="Task", min_length=1, max_length=100)
    resolve_on: list[str] = Field(
        default_factory=lambda: ["classification.removed", "quality.passed", "quality.recovered"], max_length=20
    )
    resolve_transition: str = Field(default="Done", min_length=1, max_length=100)


def cause(message: dict[str, Any]) -> str:
    kind = str(message.get("type", ""))
    subject = kind.split(".", 1)[0]
    changes = message.get("changes") or {}
    if subject == "classification":
        name = changes.get("classification") or changes.get("name")
        return f"classification:{name}" if name else kind
    if subject == "quality":
        rule = changes.get("rule") or changes.get("rule_id") or changes.get("check")
        return f"quality:{rule}" if rule else "quality"
    if kind == "notification.sent":
        return f"notification:{changes.get('title', '')}"
    return kind


def label(message: dict[str, Any], why: str) -> str:
    key = f"{message.get('tenant_id')}|{message.get('asset_id') or message.get('qualified_name')}|{why}"
    return "lily-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _paragraph(text: str) -> dict[str, Any]:
    return {"type": "paragraph", "content": [{"type": "text", "text": text[:5000] or "-"}]}


def adf(message: dict[str, Any]) -> dict[str, Any]:
    """An ADF document telling what happened, where, by whom, when."""
    changes = message.get("changes") or {}
    lines = [
        f"Event: {message.get('type')}",
        f"Asset: {message.get('qualified_name') or '-'} ({message.get('asset_id') or '-'})",
        f"By: {message.get('actor') or '-'}",
        f"At: {message.get('occurred_at') or '-'}",
    ]
    if message.get("type") == "notification.sent":
        lines.append(str(changes.get("message", "")))
    elif changes:
        lines.append("Changed: " + ", ".join(sorted(str(k) for k in changes)))
    return {"type": "doc", "version": 1, "content": [_paragraph(line) for line in lines]}


def summary(message: dict[str, Any], why: str) -> str:
    where = message.get("qualified_name") or message.get("asset_id") or "Lily"
    return f"[Lily] {why} on {where}"[:250]


class JiraChannel:
    name = "jira"
    Config: ClassVar[type[BaseModel]] = JiraConfig

    async def deliver(self, ctx: DeliveryContext, config: BaseModel, message: dict[str, Any]) -> DeliveryResult:
        assert isinstance(config, JiraConfig)
        base = str(config.base_url).rstrip("/")
        auth = httpx.BasicAuth(config.email, config.api_token.get_secret_value())
        why = cause(message)
        tag = label(message, why)
        recovery = message.get("type") in config.resolve_on

        async def call(method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
            return await ctx.http.request(
                method, base + path, json=body, auth=auth, headers=http.headers(), timeout=ctx.timeout
            )

        async def send() -> DeliveryResult:
            found = await call(
                "POST",
                "/rest/api/3/search/jql",
                {
                    "jql": f'project = "{config.project_key}" AND labels = "{tag}" AND statusCategory != Done',
                    "maxResults": 1,
                    "fields": ["status"],
                },
            )
            result = http.from_response(found)
            if not result.ok:
                return result
            issues = found.json().get("issues") or []
            key = issues[0].get("key") if issues else None
            if key is None and recovery:
                return DeliveryResult(ok=True, status=found.status_code, response="no open issue to resolve")
            if key is None:
                created = await call(
                    "POST",
                    "/rest/api/3/issue",
                    {
                        "fields": {
                            "project": {"key": config.project_key},
                            "issuetype": {"name": config.issue_type},
                            "summary": summary(message, why),
                            "description": adf(message),
                            "labels": ["lily", tag],
                        }
                    },
                )
                return http.from_response(created)
            commented = await call("POST", f"/rest/api/3/issue/{key}/comment", {"body": adf(message)})
            result = http.from_response(commented)
            if not result.ok or not recovery:
                return result
            listed = await call("GET", f"/rest/api/3/issue/{key}/transitions")
            result = http.from_response(listed)
            if not result.ok:
                return result
            wanted = config.resolve_transition.casefold()
            match = [t for t in listed.json().get("transitions", []) if str(t.get("name", "")).casefold() == wanted]
            if not match:
                return DeliveryResult(
                    ok=False,
                    status=listed.status_code,
                    error=f"issue {key} has no transition named {config.resolve_transition!r}",
                    permanent=True,
                )
            moved = await call("POST", f"/rest/api/3/issue/{key}/transitions", {"transition": {"id": match[0]["id"]}})
            return http.from_response(moved)

        try:
            return await http.attempt(send, ctx.timeout)
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            return DeliveryResult(ok=False, error=f"unexpected answer from Jira ({type(exc).__name__})")
