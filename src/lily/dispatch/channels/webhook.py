"""Signed webhooks, following Standard Webhooks (https://www.standardwebhooks.com).

Each request carries ``webhook-id`` (the change event's id: the same on every retry, so a receiver
de-duplicates on it), ``webhook-timestamp`` (seconds) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256
of id.timestamp.body>``, signed by the ``standardwebhooks`` library with the channel's secret — and,
during the overlap after a rotation, also with the previous one (several space-separated signatures, as
the spec allows), so a receiver still configured with the old secret keeps verifying. The body is
``{"type", "timestamp", "data"}`` with the change event as ``data``. A 410 answer disables the channel.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from pydantic import AnyHttpUrl, BaseModel, ConfigDict
from standardwebhooks.webhooks import Webhook

from lily.dispatch.channels import http
from lily.plugins.protocols import DeliveryContext, DeliveryResult


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl  # the receiver; any host (the address guard applies), so also the base-URL override


def body(message: dict[str, Any], now: datetime) -> bytes:
    return orjson.dumps({"type": message.get("type"), "timestamp": now.isoformat(), "data": message})


def signature(secrets: tuple[str, ...], message_id: str, now: datetime, data: str) -> str:
    return " ".join(Webhook(s).sign(msg_id=message_id, timestamp=now, data=data) for s in secrets)


class WebhookChannel:
    name = "webhook"
    Config: ClassVar[type[BaseModel]] = WebhookConfig
    signs = True  # the API generates a signing secret for channels of this type

    async def deliver(self, ctx: DeliveryContext, config: BaseModel, message: dict[str, Any]) -> DeliveryResult:
        assert isinstance(config, WebhookConfig)
        now = datetime.now(UTC)
        data = body(message, now)
        extra = {"webhook-id": ctx.message_id, "webhook-timestamp": str(int(now.timestamp()))}
        if ctx.signing_secrets:
            extra["webhook-signature"] = signature(ctx.signing_secrets, ctx.message_id, now, data.decode())

        async def send() -> DeliveryResult:
            response = await ctx.http.post(
                str(config.url), content=data, headers=http.headers(extra), timeout=ctx.timeout, follow_redirects=True
            )
            return http.from_response(response, gone_disables=True)

        return await http.attempt(send, ctx.timeout)
