"""Slack: a Block Kit message (what changed, on which asset, by whom, a link) through an incoming
webhook (``webhook_url``) or the Web API's ``chat.postMessage`` (``token`` + ``channel``), in plain HTTP.

``base_url`` overrides ``https://slack.com/api`` (a proxy, or a test server). A 429 is retried after its
``Retry-After``. ``chat.postMessage`` answers 200 with ``{"ok": false, "error"}`` on failure: rate
limits and Slack's own errors are retried, everything else (a bad token, an archived channel) is not.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, SecretStr, model_validator

from lily.dispatch.channels import http
from lily.plugins.protocols import DeliveryContext, DeliveryResult

# chat.postMessage errors worth another attempt (https://api.slack.com/methods/chat.postMessage).
_TRANSIENT = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})


class SlackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: SecretStr | None = None  # an incoming webhook's URL embeds its secret
    token: SecretStr | None = None
    channel: str | None = None
    base_url: AnyHttpUrl = AnyHttpUrl("https://slack.com/api")
    link_base_url: AnyHttpUrl | None = None  # where people open Lily: the message links the asset there

    @model_validator(mode="after")
    def _one_way(self) -> SlackConfig:
        if self.webhook_url is None and (self.token is None or not self.channel):
            raise ValueError("give webhook_url, or token and channel")
        if self.webhook_url is not None and not self.webhook_url.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http(s) URL")
        return self


def _text(value: Any, limit: int = 300) -> str:
    text = str(value) if value is not None else "-"
    return text if len(text) <= limit else text[:limit] + "…"


def blocks(message: dict[str, Any], link_base: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, Block Kit blocks) for a change event or a notification."""
    kind = str(message.get("type", "change"))
    changes = message.get("changes") or {}
    if kind == "notification.sent":
        title = _text(changes.get("title"), 150)
        summary = f"[{_text(changes.get('severity'))}] {title}"
        lines = [_text(changes.get("message"), 2500)]
    else:
        title = f"{kind} on {_text(message.get('qualified_name'), 150)}"
        summary = title
        changed = ", ".join(sorted(changes)) if isinstance(changes, dict) else ""
        lines = [f"*What changed:* {_text(changed or kind)}"]
    fields = [
        {"type": "mrkdwn", "text": f"*Asset:*\n{_text(message.get('qualified_name'))}"},
        {"type": "mrkdwn", "text": f"*By:*\n{_text(message.get('actor'))}"},
    ]
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}, "fields": fields},
    ]
    if link_base and message.get("asset_id"):
        url = f"{link_base.rstrip('/')}/lily/v1/metadata/{message['asset_id']}"
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{url}|Open in Lily>"}})
    out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"{_text(message.get('occurred_at'))}"}]})
    return summary, out


class SlackChannel:
    name = "slack"
    Config: ClassVar[type[BaseModel]] = SlackConfig

    async def deliver(self, ctx: DeliveryContext, config: BaseModel, message: dict[str, Any]) -> DeliveryResult:
        assert isinstance(config, SlackConfig)
        text, payload = blocks(message, str(config.link_base_url) if config.link_base_url else None)

        async def send() -> DeliveryResult:
            if config.webhook_url is not None:
                response = await ctx.http.post(
                    config.webhook_url.get_secret_value(),
                    json={"text": text, "blocks": payload},
                    headers=http.headers(),
                    timeout=ctx.timeout,
                )
                return http.from_response(response)
            assert config.token is not None
            response = await ctx.http.post(
                f"{str(config.base_url).rstrip('/')}/chat.postMessage",
                json={"channel": config.channel, "text": text, "blocks": payload},
                headers=http.headers({"Authorization": f"Bearer {config.token.get_secret_value()}"}),
                timeout=ctx.timeout,
            )
            result = http.from_response(response)
            if not result.ok:
                return result
            try:
                answer = response.json()
            except ValueError:
                return DeliveryResult(ok=False, status=response.status_code, error="Slack answered no JSON")
            if answer.get("ok") is True:
                return result
            error = http.truncated(str(answer.get("error", "unknown")), 100)
            return DeliveryResult(
                ok=False,
                status=response.status_code,
                error=f"Slack error: {error}",
                permanent=error not in _TRANSIENT,
                retry_after_seconds=http.retry_after(response),
                response=result.response,
            )

        return await http.attempt(send, ctx.timeout)
