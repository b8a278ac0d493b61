"""A plugin's per-use settings, validated against its ``Config`` model before the plugin sees them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from lily.domain.errors import Invalid
from lily.plugins.protocols import NoConfig


def config_model(plugin: Any) -> type[BaseModel]:
    model = getattr(plugin, "Config", NoConfig)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else NoConfig


def plugin_config(plugin: Any, raw: Mapping[str, Any] | None, *, field: str = "config") -> BaseModel:
    """``raw`` as the plugin's ``Config``; :class:`Invalid` names the offending field (``config.url``)."""
    try:
        return config_model(plugin).model_validate(dict(raw or {}))
    except ValidationError as exc:
        errors = [
            {"field": ".".join([field, *(str(p) for p in e["loc"])]), "message": e["msg"]} for e in exc.errors()[:20]
        ]
        name = getattr(plugin, "name", type(plugin).__name__)
        raise Invalid(
            f"invalid {field} for {name!r}: {errors[0]['field']}: {errors[0]['message']}", errors=errors
        ) from None
