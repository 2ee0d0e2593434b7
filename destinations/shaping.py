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
    """An object of texts, or RudderStack's list of `{"from": …, "to": …}` rows (rows blank on both sides, as
    its UI leaves them, dropped); names that differ only in case and spacing must not both appear."""
    if value is None:
        return {}
    if isinstance(value, list):
        rows = {}
        for row in value:
            if not isinstance(row, dict) or not isinstance(row.get("from"), str) or not isinstance(row.get("to"), str):
                raise ValueError(f"must be an object of {what}, or a list of {{from, to}} rows of texts")
            if row["from"].strip() or row["to"].strip():
                rows[row["from"]] = row["to"]
        value = rows
    if not isinstance(value, dict):
        raise ValueError(f"must be an object of {what}")
    seen: dict[str, str] = {}
    for theirs, ours in value.items():
        if not isinstance(ours, str) or not theirs.strip() or not ours.strip():
            raise ValueError(f"must map non-blank names onto non-blank texts ({what}); {theirs!r} does not")
        if (key := name_key(theirs)) in seen:
            raise ValueError(f"names {seen[key]!r} and {theirs!r}, which match the same events")
        seen[key] = theirs
    return {k.strip(): v.strip() for k, v in value.items()}


def _names(value: Any) -> Any:
    """A list of names, or RudderStack's `[{"eventName": …}]` rows; blank names (as its UI leaves them) dropped,
    anything else that is not a name refused."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("must be a list of names")
    out = []
    for row in value:
        name = row.get("eventName") if isinstance(row, dict) and set(row) == {"eventName"} else row
        if not isinstance(name, str):
            raise ValueError('must be a list of names, or of {"eventName": name} rows')
        if name.strip():
            out.append(name)
    return out


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
                raise ValueError(f"maps {theirs!r} onto an event that is not a Segment spec event")
        return value

    @field_validator("fieldMappings")
    @classmethod
    def _segment_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for field, path in value.items():
            if not _PATH.fullmatch(path.strip()):
                raise ValueError(
                    f"maps {field!r} onto something that is not a Segment path (properties.x, traits.x, "
                    "context.x, context.traits.x, userId, anonymousId, event, name, category)"
                )
        return value


class Shaping:
    """One destination instance's shaping settings, ready to apply to messages."""

    __slots__ = ("active", "allowed", "blocked", "consent", "custom_names", "event_mappings", "overrides")

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
        #: Whether any setting here filters or renames events (asked for every message, so worked out once).
        self.active = bool(self.event_mappings or self.custom_names or self.allowed or self.blocked or self.consent)

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
    if preferences is None and management is None:
        return True
    # Consent information that cannot be read grants nothing.
    if preferences is not None and not (
        isinstance(preferences, dict) and all(preferences.get(c) is True for c in categories)
    ):
        return False
    if management is not None:
        if not isinstance(management, dict):
            return False
        allowed, denied = _ids(management.get("allowedConsentIds")), _ids(management.get("deniedConsentIds"))
        if any(c in denied or c not in allowed for c in categories):
            return False
    return True


def _ids(value: Any) -> frozenset[str]:
    """Consent ids as RudderStack's SDKs send them: a list of texts (one text counts as a list of one)."""
    items = value if isinstance(value, list) else [value]
    return frozenset(v for v in items if isinstance(v, str))


def field_overrides(mappings: Mapping[str, str], tables: list[Table]) -> dict[Any, VendorField]:
    """The declared fields each `fieldMappings` key names, each replaced by one reading only the given path
    (and, for `traits.x`, `context.traits.x`, where every call may carry traits), with no computed fallback.

    A key is a field name, for every event that declares it (keyed by the field), or a stable name
    (`PRODUCT_VIEW.image`), for that event's table only (keyed by table and field, which wins); a key no
    table declares is a ValueError naming it.
    """
    out: dict[Any, VendorField] = {}
    for key, path in sorted(mappings.items(), key=lambda kv: "." in kv[0]):  # qualified names last: they win
        found = [(t, f) for t in tables for f in t.fields if key in (f.name, t.key(f))]
        if not found:
            raise ValueError(f"fieldMappings names {key!r}, which no event of this destination declares")
        given = path.strip()
        sources = (given, f"context.{given}") if given.startswith("traits.") else (given,)
        for table, f in found:
            replacement = VendorField(f.name, sources, f.kind, f.required, None, f.to, spelled=False)
            out[(id(table), id(f)) if key == table.key(f) else id(f)] = replacement
    return out
