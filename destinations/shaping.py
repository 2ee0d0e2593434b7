"""Settings every destination takes to shape its mapping without changing tracking code (README "Shaping the
mapping"): event mappings, custom event names, allowed and blocked events, field mappings and consent.

They are validated with the destination's own settings (so they arrive the same way through the library,
`destinations.toml`, `transform --settings` and a rudder-server destination `Config`), and applied by
`Destination.handle` in this order: `integrations`, consent, allowed/blocked, event mappings, the vendor's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import Filtered
from .fields import Field as VendorField
from .fields import Table
from .spec import SPEC_EVENTS, Message, canonical_event, name_key

# A Segment path a field may be mapped to: a key under properties, traits, context or context.traits, or a
# top-level message key.
_PATH = re.compile(
    r"(?:(?:properties|traits|context)(?:\.[A-Za-z0-9_$@-]+)+|userId|anonymousId|event|name|category|messageId)"
)


def _pairs(value: Any, what: str) -> Any:
    """An object, or RudderStack's list of `{"from": …, "to": …}` rows (blank rows dropped)."""
    if isinstance(value, list):
        out = {}
        for row in value:
            if not isinstance(row, dict) or not {"from", "to"} <= set(row):
                raise ValueError(f"must be an object of {what}, or a list of {{from, to}} rows")
            if str(row["from"]).strip() and str(row["to"]).strip():
                out[str(row["from"]).strip()] = str(row["to"]).strip()
        return out
    return value


def _names(value: Any) -> Any:
    """A list of names, or RudderStack's `[{"eventName": …}]` rows; blank names dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [
            str(v.get("eventName", "")).strip() if isinstance(v, dict) else v
            for v in value
            if not (isinstance(v, dict) and not str(v.get("eventName", "")).strip()) and v != ""
        ]
    return value


class ShapingSettings(BaseModel):
    """The shaping keys, mixed into every destination's settings model (base.SettingsModel)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eventMappings: dict[str, str] = Field(default_factory=dict)
    customEventNames: dict[str, str] = Field(default_factory=dict)
    allowedEvents: list[str] = Field(default_factory=list)
    blockedEvents: list[str] = Field(default_factory=list)
    fieldMappings: dict[str, str] = Field(default_factory=dict)
    consentCategories: list[str] = Field(default_factory=list)

    @field_validator("eventMappings", "customEventNames", "fieldMappings", mode="before")
    @classmethod
    def _from_rows(cls, value: Any) -> Any:
        return _pairs(value, "name pairs")

    @field_validator("allowedEvents", "blockedEvents", "consentCategories", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _names(value)

    @field_validator("eventMappings")
    @classmethod
    def _spec_events(cls, value: dict[str, str]) -> dict[str, str]:
        for theirs, spec in value.items():
            if canonical_event(spec) not in SPEC_EVENTS:
                raise ValueError(f"maps {theirs!r} onto {spec!r}, which is not a Segment spec event")
        return value

    @field_validator("fieldMappings")
    @classmethod
    def _segment_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for field, path in value.items():
            if not _PATH.fullmatch(path.strip()):
                raise ValueError(
                    f"maps {field!r} onto {path!r}, which is not a Segment path (properties.x, traits.x, "
                    "context.x, context.traits.x, userId, anonymousId, event, name, category)"
                )
        return value


class Shaping:
    """One destination instance's shaping settings, ready to apply to messages."""

    __slots__ = ("allowed", "blocked", "consent", "custom_names", "event_mappings", "overrides")

    def __init__(self, settings: ShapingSettings, tables: Iterable[Table], vendor_events: Iterable[str]) -> None:
        self.event_mappings = {name_key(k): canonical_event(v) for k, v in settings.eventMappings.items()}
        reserved = set(vendor_events)
        for theirs, name in settings.customEventNames.items():
            if name in reserved:
                raise ValueError(
                    f"customEventNames gives {theirs!r} the name {name!r}, one of the vendor's own event keys; "
                    "map it onto the spec event with eventMappings instead"
                )
        self.custom_names = {name_key(k): v for k, v in settings.customEventNames.items()}
        self.allowed = frozenset(settings.allowedEvents)
        self.blocked = frozenset(settings.blockedEvents)
        self.consent = tuple(settings.consentCategories)
        #: id(declared field) -> the field reading the one path the user gave.
        self.overrides = field_overrides(settings.fieldMappings, list(tables))

    @property
    def active(self) -> bool:
        return bool(self.event_mappings or self.custom_names or self.allowed or self.blocked or self.consent)

    def check(self, message: Message, event: str | None, display_name: str) -> None:
        """Consent, then allowed/blocked events: Filtered, naming the setting, when the message must not go."""
        if self.consent and not consented(message.context, self.consent):
            raise Filtered(
                f"consent: {display_name} needs consent to {', '.join(self.consent)} (consentCategories), "
                "which this message does not give"
            )
        if event is None:
            return
        if self.allowed and event not in self.allowed:
            raise Filtered(f"allowedEvents of {display_name} does not list {event!r}")
        if event in self.blocked:
            raise Filtered(f"blockedEvents of {display_name} lists {event!r}")

    def spec_event(self, event: str) -> str | None:
        """The spec event a user mapped this event name onto, if any."""
        return self.event_mappings.get(name_key(event)) if self.event_mappings else None

    def custom_name(self, event: str) -> str | None:
        """The vendor event name a user gave this custom event, if any."""
        return self.custom_names.get(name_key(event)) if self.custom_names else None


def consented(context: Mapping[str, Any], categories: tuple[str, ...]) -> bool:
    """Every category consented, by Segment's `context.consent.categoryPreferences` (a category missing there
    is not consented) and RudderStack's `context.consentManagement`; a message with neither is consented."""
    consent = context.get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    management = context.get("consentManagement")
    if not isinstance(preferences, dict) and not isinstance(management, dict):
        return True
    if isinstance(preferences, dict) and not all(preferences.get(c) is True for c in categories):
        return False
    if isinstance(management, dict):
        allowed = management.get("allowedConsentIds")
        denied = management.get("deniedConsentIds")
        allowed = set(allowed) if isinstance(allowed, list) else set()
        denied = set(denied) if isinstance(denied, list) else set()
        if any(c in denied or c not in allowed for c in categories):
            return False
    return True


def field_overrides(mappings: Mapping[str, str], tables: list[Table]) -> dict[int, VendorField]:
    """The declared fields each `fieldMappings` key names, each replaced by one reading only the given path.

    A key is a field name (every event that declares it) or a stable name (`PRODUCT_VIEW.image`); a key no
    table declares is a ValueError naming it.
    """
    out: dict[int, VendorField] = {}
    for key, path in mappings.items():
        found = [f for t in tables for f in t.fields if key in (f.name, t.key(f))]
        if not found:
            raise ValueError(f"fieldMappings names {key!r}, which no event of this destination declares")
        for f in found:
            out[id(f)] = VendorField(f.name, (path.strip(),), f.kind, f.required, f.default, f.to, spelled=False)
    return out
