"""Built-in destinations, plus third-party ones from the `destinations` entry point group."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from . import dengage, esputnik, segmentify, wigzo
from .base import Destination, SettingsModel
from .errors import ConfigurationError

ENTRY_POINT_GROUP = "destinations"

BUILT_IN: dict[str, type[Destination]] = {
    "segmentify": segmentify.SegmentifyDestination,
    "dengage": dengage.DengageDestination,
    "esputnik": esputnik.EsputnikDestination,
    "wigzo": wigzo.WigzoDestination,
}


@cache
def destination_types() -> dict[str, type[Destination]]:
    """Every destination type by name; a built-in name cannot be taken over by a plugin."""
    found: dict[str, type[Destination]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            raise ConfigurationError(f"destination plugin {ep.name!r} failed to load: {exc}") from None
        if isinstance(cls, type) and issubclass(cls, Destination):
            found[ep.name] = cls
    found.update(BUILT_IN)
    return found


def get_destination(name: str, settings: Mapping[str, Any] | SettingsModel | None = None) -> Destination:
    """A destination instance of type `name`, with its settings validated."""
    types = destination_types()
    cls = types.get(name)
    if cls is None:
        raise ConfigurationError(f"unknown destination {name!r}; known: {', '.join(sorted(types))}")
    return cls(settings)
