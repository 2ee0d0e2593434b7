"""Segment message models (pydantic v2) and the spec helpers every destination shares.

Everything a second vendor would need lives here: reading products and totals, traits and identity,
numbers, times, the e-commerce v1 event aliases and the `integrations` rule. Vendor modules only
decide which of these values go where.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError

from .errors import InvalidMessage

Number = int | float

# --- field types --------------------------------------------------------------------------------


def _lenient_str(value: Any) -> str | None:
    """Segment libraries send ids and context strings as numbers at times; keep them as text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a string")
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    raise ValueError("must be a string")


def _id(value: Any) -> str | None:
    """An id: text or a number; `null` and blank text count as absent."""
    text = _lenient_str(value)
    if text is None:
        return None
    text = text.strip()
    return text or None


def _object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise ValueError("must be an object")


_ISO_FRACTION = re.compile(r"(\.\d+)")


def parse_iso_datetime(value: str) -> datetime:
    """ISO-8601 date or date-time; naive values are taken as UTC. Raises ValueError otherwise."""
    text = value.strip()
    if not re.match(r"^\d{4}-\d{2}-\d{2}", text):
        raise ValueError("must be an ISO-8601 date-time")
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat wants 3 or 6 fraction digits; libraries send 1 to 9.
    text = _ISO_FRACTION.sub(lambda m: (m.group(1) + "000000")[:7], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be an ISO-8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


_ISO_START = re.compile(r"^\s*\d{4}-\d{2}-\d{2}")


def _time_text(value: Any) -> Any:
    """Only ISO-8601 text: pydantic alone would also take unix numbers and digit strings."""
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_START.match(value):
        return value.strip()
    raise ValueError("must be an ISO-8601 date-time")


def _utc_if_naive(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


Str = str | None  # numbers become text through the models' coerce_numbers_to_str
Id = Annotated[str | None, BeforeValidator(_id)]
# A plain validator: properties and traits are read as they are, not copied key by key.
Obj = Annotated[dict[str, Any], PlainValidator(_object)]
Time = Annotated[datetime | None, BeforeValidator(_time_text), AfterValidator(_utc_if_naive)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, coerce_numbers_to_str=True)


class PageContext(_Model):
    url: Str = None
    referrer: Str = None
    path: Str = None
    title: Str = None
    search: Str = None


class DeviceContext(_Model):
    type: Str = None
    id: Str = None
    manufacturer: Str = None
    model: Str = None


class OSContext(_Model):
    name: Str = None
    version: Str = None


class CampaignContext(_Model):
    name: Str = None
    source: Str = None
    medium: Str = None
    term: Str = None
    content: Str = None


class Context(_Model):
    page: PageContext | None = None
    device: DeviceContext | None = None
    os: OSContext | None = None
    campaign: CampaignContext | None = None
    traits: Obj = Field(default_factory=dict)
    locale: Str = None
    userAgent: Str = None
    ip: Str = None
    sessionId: Id = None
    session_id: Id = None


def _context(value: Any) -> Any:
    return {} if value is None else value


class Message(_Model):
    """Fields common to every Segment call."""

    type: str
    messageId: Str = None
    userId: Id = None
    anonymousId: Id = None
    timestamp: Time = None
    originalTimestamp: Time = None
    receivedAt: Time = None
    sentAt: Time = None
    context: Annotated[Context, BeforeValidator(_context)] = Field(default_factory=Context)
    integrations: Obj = Field(default_factory=dict)

    label: ClassVar[str] = "message"

    @property
    def event_label(self) -> str:
        """How errors name this message: the event name for track, the call type otherwise."""
        return self.type


def _event_name(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


class Track(Message):
    type: Literal["track"]
    event: Annotated[str, BeforeValidator(_event_name)]
    properties: Obj = Field(default_factory=dict)

    @property
    def event_label(self) -> str:
        return self.event


class Page(Message):
    type: Literal["page"]
    name: Str = None
    category: Str = None
    properties: Obj = Field(default_factory=dict)


class Screen(Message):
    type: Literal["screen"]
    name: Str = None
    category: Str = None
    properties: Obj = Field(default_factory=dict)


class Identify(Message):
    type: Literal["identify"]
    traits: Obj = Field(default_factory=dict)


class Group(Message):
    type: Literal["group"]
    groupId: Id = None
    traits: Obj = Field(default_factory=dict)


class Alias(Message):
    type: Literal["alias"]
    previousId: Id = None


MESSAGE_TYPES: dict[str, type[Message]] = {
    "track": Track,
    "page": Page,
    "screen": Screen,
    "identify": Identify,
    "group": Group,
    "alias": Alias,
}

_PYDANTIC_RULES = {
    "missing": "is required by the Segment spec",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "literal_error": "has an unexpected value",
}


def raw_label(raw: Mapping[str, Any]) -> str:
    """The label of a raw message for errors raised before it is parsed."""
    event = raw.get("event")
    if raw.get("type") == "track" and isinstance(event, str) and event.strip():
        return event
    kind = raw.get("type")
    return kind if isinstance(kind, str) and kind in MESSAGE_TYPES else "message"


def check_envelope(raw: Any) -> dict[str, Any]:
    """The first checks of MAPPINGS.md 'Shared': an object with a known `type`."""
    if not isinstance(raw, dict):
        raise InvalidMessage("message", "", f"must be a JSON object, not {type(raw).__name__}")
    kind = raw.get("type")
    if kind is None:
        raise InvalidMessage("message", "type", "is required by the Segment spec")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise InvalidMessage(
            "message", "type", f"must be one of {', '.join(MESSAGE_TYPES)} (Segment spec message types)"
        )
    return raw


def parse_message(raw: Mapping[str, Any] | Message) -> Message:
    """Validate a raw Segment message into its model; errors name the Segment path."""
    if isinstance(raw, Message):
        return raw
    raw = check_envelope(raw)
    model = MESSAGE_TYPES[raw["type"]]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        path = format_path(err["loc"])
        rule = _PYDANTIC_RULES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
        if err["type"].startswith(("datetime_", "date_")):
            rule = "must be an ISO-8601 date-time"
        raise InvalidMessage(raw_label(raw), path, rule) from None


def format_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('properties', 'products', 1, 'price') -> 'properties.products[1].price'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --- event names --------------------------------------------------------------------------------

V1_ALIASES: dict[str, str] = {
    "Viewed Product Category": "Product List Viewed",
    "Viewed Product": "Product Viewed",
    "Clicked Product": "Product Clicked",
    "Added Product": "Product Added",
    "Removed Product": "Product Removed",
    "Started Order": "Checkout Started",
    "Viewed Checkout Step": "Checkout Step Viewed",
    "Completed Checkout Step": "Checkout Step Completed",
    "Completed Order": "Order Completed",
    "Updated Order": "Order Updated",
    "Refunded Order": "Order Refunded",
    "Viewed Promotion": "Promotion Viewed",
    "Clicked Promotion": "Promotion Clicked",
}


def canonical_event(name: str) -> str:
    """The e-commerce v2 name of an event (v1 aliases matched exactly)."""
    return V1_ALIASES.get(name, name)


_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def snake_case(name: str) -> str:
    """'Coupon Applied' -> 'coupon_applied'; 'checkoutStepViewed' -> 'checkout_step_viewed'."""
    return "_".join(w.lower() for w in _WORDS.findall(name))


def lower_camel(name: str) -> str:
    """'Order Completed' -> 'orderCompleted'."""
    words = [w.lower() for w in _WORDS.findall(name)]
    return words[0] + "".join(w.capitalize() for w in words[1:]) if words else ""


# --- integrations -------------------------------------------------------------------------------


def integration_setting(integrations: Any, display_name: str) -> tuple[bool, dict[str, Any]]:
    """Whether `display_name` gets the message, and its options (DESIGN.md section 4).

    `All` (any case) sets the default; the destination's own key overrides it: `false` turns it
    off, `true` or an object turns it on (an object also carries options). Other values are absent.
    """
    if not isinstance(integrations, dict):
        return True, {}
    own = integrations.get(display_name)
    if own is True:
        return True, {}
    if isinstance(own, dict):
        return True, own
    if own is False:
        return False, {}
    enabled = True
    for key, value in integrations.items():
        if isinstance(key, str) and key.lower() == "all" and isinstance(value, bool):
            enabled = value
    return enabled, {}


# --- values -------------------------------------------------------------------------------------

_INT_TEXT = re.compile(r"^[+-]?\d+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def as_number(value: Any) -> Number | None:
    """A number from a number or numeric text; None when `value` is not one (bools, NaN, inf)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.match(text):
            return int(text)
        if _FLOAT_TEXT.match(text):
            number = float(text)
            return number if math.isfinite(number) else None
    return None


def first(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The first value among `keys` that is present and not null."""
    for key in keys:
        value = mapping.get(key)
        if value is not None:
            return value
    return None


def first_key(mapping: Mapping[str, Any], *keys: str) -> tuple[str, Any]:
    """Like `first`, with the key it came from (for error paths); the first key when none is set."""
    for key in keys:
        value = mapping.get(key)
        if value is not None:
            return key, value
    return keys[0], None


def compact_json(value: Any) -> str:
    """Compact JSON text; NaN and infinities, which JSON cannot hold, become null."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def flat_map(values: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars as they are, objects and lists as compact JSON text, nulls left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[str(key)] = compact_json(value) if isinstance(value, dict | list | tuple) else value
    return out


def language(locale: str | None) -> str | None:
    """'en-US' -> 'en'; None when there is no usable locale."""
    if not locale:
        return None
    return locale.strip().replace("_", "-").partition("-")[0] or None


def money_sum(terms: list[tuple[Number, Number]]) -> Number:
    """Sum of price x quantity without binary-float noise (349.99 * 2 + 249.99 == 949.97)."""
    total = sum((Decimal(str(p)) * Decimal(str(q)) for p, q in terms), Decimal(0))
    return int(total) if total == total.to_integral_value() else float(total)


# --- products -----------------------------------------------------------------------------------


class Product:
    """A product as MAPPINGS.md 'Shared' reads it, from the Segment path `path`.

    Fields are read when asked for, so a vendor is never refused a message over a field it does
    not send; a field that is read and malformed is an InvalidMessage naming its path.
    """

    __slots__ = ("_call", "path", "raw")

    def __init__(self, call: Call, raw: Mapping[str, Any], path: str) -> None:
        self._call = call
        self.raw = raw
        self.path = path

    def _text(self, *keys: str) -> str | None:
        key, value = first_key(self.raw, *keys)
        return self._call.text(value, f"{self.path}.{key}")

    def _number(self, key: str, what: str) -> Number | None:
        return self._call.number(self.raw.get(key), f"{self.path}.{key}", what)

    @property
    def id_path(self) -> str:
        return f"{self.path}.product_id"

    @property
    def id(self) -> str | None:
        """product_id || productId || id || sku."""
        return self._text("product_id", "productId", "id", "sku")

    @property
    def sku(self) -> str | None:
        return self._text("sku")

    @property
    def name(self) -> str | None:
        return self._text("name")

    @property
    def brand(self) -> str | None:
        return self._text("brand")

    @property
    def variant(self) -> str | None:
        return self._text("variant")

    @property
    def category(self) -> str | None:
        return self._text("category")

    @property
    def url(self) -> str | None:
        return self._text("url")

    @property
    def image_url(self) -> str | None:
        return self._text("image_url", "imageUrl")

    @property
    def price(self) -> Number | None:
        return self._number("price", "product price")

    @property
    def quantity(self) -> Number:
        """Default 1."""
        quantity = self._number("quantity", "product quantity")
        return 1 if quantity is None else quantity

    @property
    def currency(self) -> str | None:
        """The item's currency, else the event's."""
        return self._text("currency") or self._call.currency

    @property
    def in_stock(self) -> bool | None:
        key, value = first_key(self.raw, "in_stock", "inStock")
        return self._call.boolean(value, f"{self.path}.{key}")

    @property
    def variant_id(self) -> str | None:
        """variant_id || variantId || the product id, so a vendor that needs one never gets null."""
        return self._text("variant_id", "variantId") or self.id


# --- the per-message view handed to vendor mappers -----------------------------------------------


class Call:
    """One message as a vendor mapper sees it: the parsed model, options and the shared readers.

    Errors raised through it name the event, the Segment path and the vendor rule.
    """

    __slots__ = (
        "_currency", "_is_track", "_products", "_traits_root", "event", "message", "options", "properties",
        "settings", "traits", "vendor",
    )  # fmt: skip

    def __init__(self, message: Message, options: dict[str, Any], settings: Any, vendor: str) -> None:
        self.message = message
        self.options = options
        self.settings = settings
        self.vendor = vendor
        self._is_track = isinstance(message, Track)
        self.event = canonical_event(message.event) if isinstance(message, Track) else message.type
        #: The call's properties ({} for identify, group and alias).
        self.properties: dict[str, Any] = message.properties if isinstance(message, Track | Page | Screen) else {}
        identify = isinstance(message, Identify)
        #: `traits` on identify, `context.traits` on every other call.
        self.traits: dict[str, Any] = message.traits if identify else message.context.traits
        self._traits_root = "traits" if identify else "context.traits"
        self._products: list[Product] | None = None
        self._currency: str | None = None

    # errors and checked values

    def fail(self, path: str, rule: str) -> InvalidMessage:
        return InvalidMessage(self.message.event_label, path, rule)

    def require(self, value: Any, path: str, target: str) -> Any:
        """`value`, or an InvalidMessage saying `path` is required by `target` (vendor event/field)."""
        if value is None or value in ("", []):
            raise self.fail(path, f"is required by {self.vendor} {target}")
        return value

    def number(self, value: Any, path: str, target: str) -> Number | None:
        """A number or None when absent; present but not a number is an error, never a silent 0."""
        if value is None:
            return None
        number = as_number(value)
        if number is None:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise self.fail(path, f"must be a number for {self.vendor} {target} (got {shown})")
        return number

    def text(self, value: Any, path: str) -> str | None:
        """Text from text or a number; objects and lists where text is expected are errors."""
        if value is None or type(value) is str:
            return value
        try:
            return _lenient_str(value)
        except ValueError:
            raise self.fail(path, "must be text") from None

    def boolean(self, value: Any, path: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.fail(path, "must be true or false")

    def date(self, value: Any, path: str) -> date | None:
        """A calendar date from ISO-8601 text (the date as written, before any zone shift)."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                if len(value) == 10:  # the common YYYY-MM-DD, without the date-time machinery
                    return date.fromisoformat(value)
                return parse_iso_datetime(value).date()
            except ValueError:
                pass
        raise self.fail(path, "must be an ISO-8601 date (YYYY-MM-DD)")

    # identity and traits

    @property
    def user_id(self) -> str | None:
        return self.message.userId

    @property
    def visitor_id(self) -> str:
        """userId || anonymousId (the handler has checked that one exists)."""
        return self.message.userId or self.message.anonymousId or ""

    def trait(self, *keys: str) -> Any:
        """A trait's value (see `trait_at`)."""
        return self.trait_at(*keys)[1]

    def trait_at(self, *keys: str) -> tuple[str, Any]:
        """(Segment path, value) of a trait, falling back to properties on track calls (MAPPINGS 'Shared')."""
        root = self._traits_root
        key, value = first_key(self.traits, *keys)
        if value is None and self._is_track:
            root = "properties"
            key, value = first_key(self.properties, *keys)
        return f"{root}.{key}", value

    def trait_text(self, *keys: str) -> str | None:
        path, value = self.trait_at(*keys)
        return self.text(value, path)

    @property
    def email(self) -> str | None:
        return self.trait_text("email")

    @property
    def phone(self) -> str | None:
        return self.trait_text("phone")

    @property
    def first_name(self) -> str | None:
        return self.trait_text("firstName", "first_name")

    @property
    def last_name(self) -> str | None:
        return self.trait_text("lastName", "last_name")

    @property
    def full_name(self) -> str | None:
        name = self.trait_text("name")
        if name:
            return name
        parts = [p for p in (self.first_name, self.last_name) if p]
        return " ".join(parts) or None

    @property
    def address(self) -> dict[str, Any]:
        address = self.trait("address")
        return address if isinstance(address, dict) else {}

    @property
    def time(self) -> datetime | None:
        """timestamp || originalTimestamp || receivedAt || sentAt."""
        m = self.message
        return m.timestamp or m.originalTimestamp or m.receivedAt or m.sentAt

    # page context

    @property
    def page_url(self) -> str | None:
        page = self.message.context.page
        return page.url if page else None

    @property
    def referrer(self) -> str | None:
        page = self.message.context.page
        return page.referrer if page else None

    @property
    def language(self) -> str | None:
        return language(self.message.context.locale)

    # products and totals

    @property
    def currency(self) -> str | None:
        """The event's `properties.currency`."""
        if self._currency is None:
            self._currency = self.text(self.properties.get("currency"), "properties.currency") or ""
        return self._currency or None

    def product(self, data: Mapping[str, Any] | None = None, path: str = "properties") -> Product:
        """One product from `data` (the event's properties by default)."""
        return Product(self, self.properties if data is None else data, path)

    @property
    def has_products(self) -> bool:
        return self.properties.get("products") is not None

    @property
    def products(self) -> list[Product]:
        """`properties.products[]`, each item read as a product; [] when absent."""
        if self._products is None:
            self._products = [self.product(item, path) for path, item in self.objects("products")]
        return self._products

    def objects(self, key: str) -> list[tuple[str, dict[str, Any]]]:
        """`properties.<key>` as (Segment path, object) pairs; [] when absent, an error when not a list of objects."""
        items = self.properties.get(key)
        if items is None:
            return []
        if not isinstance(items, list):
            raise self.fail(f"properties.{key}", "must be a list of objects")
        out = []
        for i, item in enumerate(items):
            path = f"properties.{key}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(path, "must be an object")
            out.append((path, item))
        return out

    def order_total(self, target: str) -> Number | None:
        """total || revenue || value || sum(price x quantity) of the products that have a price."""
        key, value = first_key(self.properties, "total", "revenue", "value")
        if value is not None:
            return self.number(value, f"properties.{key}", target)
        priced = [(p.price, p.quantity) for p in self.products if p.price is not None]
        return money_sum(priced) if priced else None
