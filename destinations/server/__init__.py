"""HTTP intake server: Segment tracking API, webhooks and RudderStack transformer protocol.

`create_app` is imported on first use, so `destinations.server.rudder` (or any one part) can be
imported without the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
