"""The API layer as connectors see it: :class:`lily.plugins.protocols.WebContext`, built once per app.

A connector's routes get authentication, the runtime, the request id, the JSON response class and the
error-response docs from here, handed to :meth:`Connector.router`, so ``lily.connectors`` never imports
``lily.api`` (and the API can mount any connector without knowing it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from lily.api import access
from lily.api.deps import Admin, Editor, Principal, RequestId, RuntimeDep, Steward, Viewer
from lily.api.errors import problem_responses
from lily.api.responses import FastJSON
from lily.api.runtime import Runtime


@dataclass
class Web:
    viewer: Any
    editor: Any
    steward: Any
    admin: Any
    runtime: Any
    request_id: Any
    json_response: type[Any]

    def problem_responses(self, *statuses: int) -> dict[int | str, dict[str, Any]]:
        return problem_responses(*statuses)

    async def check_writes(
        self, runtime: Runtime, caller: Principal, written: Sequence[str], read: Sequence[str] = ()
    ) -> None:
        await access.check_named_write(runtime, caller, list(dict.fromkeys(written)), read=list(dict.fromkeys(read)))


def _marker(alias: Any) -> Any:
    """The ``Depends(...)`` inside one of :mod:`lily.api.deps`' ``Annotated`` aliases: the very same
    dependency Lily's own routes use, so connectors authenticate exactly as they do."""
    return get_args(alias)[1]


def web_context() -> Web:
    return Web(
        viewer=_marker(Viewer),
        editor=_marker(Editor),
        steward=_marker(Steward),
        admin=_marker(Admin),
        runtime=_marker(RuntimeDep),
        request_id=_marker(RequestId),
        json_response=FastJSON,
    )
