"""Rules that both the API and the pipeline apply: one function each, so the two never drift apart.

The API applies them before it appends an event (so a client hears at once); the pipeline applies them
again when the event is applied, since another write may land in between.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args
from uuid import UUID

from lily.domain.assets import Asset
from lily.domain.errors import Conflict, Invalid, NotFound, PreconditionFailed
from lily.domain.lineage import Direction

LINEAGE_DIRECTIONS: tuple[str, ...] = get_args(Direction)  # the API's query parameter takes the same


def require_asset(asset: Asset | None, asset_id: UUID | str, *, include_deleted: bool = False) -> Asset:
    """The asset, or 404 if there is none (a soft-deleted one counts as none unless ``include_deleted``)."""
    if asset is None or (not include_deleted and not asset.live):
        raise NotFound(f"asset {asset_id} does not exist")
    return asset


def check_if_match(wanted: int | None, current: int) -> None:
    """``If-Match``: ``wanted`` is the version it names (:func:`lily.domain.assets.parse_if_match`:
    0 for ``*``, -1 for an ETag of another asset or garbage), None when the header was absent."""
    if wanted is None or wanted == 0 or wanted == current:
        return
    raise PreconditionFailed(
        f"If-Match names version {wanted if wanted > 0 else '?'}; the asset is at version {current}",
        current_version=current,
    )


def refuse_deleted_links(named: Iterable[tuple[str, Asset | None]]) -> None:
    """Lineage may not name a soft-deleted asset (409): its lineage would come back to life unseen.

    ``named`` pairs each asset with how the request spelled it (a name, or an id and its name). Writing
    the asset again restores it; then it can be linked.
    """
    for spelled, asset in named:
        if asset is not None and not asset.live:
            raise Conflict(
                f"asset {spelled} is deleted; write it again to restore it before recording lineage to it",
                asset_id=str(asset.asset_id),
            )


def check_lineage_direction(value: Any) -> str:
    """The direction of a lineage removal."""
    if value not in LINEAGE_DIRECTIONS:
        raise Invalid("direction must be upstream, downstream or both", field="direction")
    return str(value)
