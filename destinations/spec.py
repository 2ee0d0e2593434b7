"""Segment message models (pydantic v2) and the value rules every destination shares.

Here: the message models, event and type names as people type them, the `integrations` rule, and the
readers of single values (numbers, text, dates, times, values passed through as they are). Reading a
declared vendor field from a message lives in `fields.py`, on top of these.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

from anyascii import anyascii
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError

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


_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE = "holds a lone surrogate, which is not valid Unicode text"


def has_surrogate(text: str) -> bool:
    """True when `text` holds a lone surrogate (a valid JSON escape, but no Unicode character)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def _id(value: Any) -> str | None:
    """An id: text or a number; `null` and blank text count as absent; lone surrogates are refused."""
    text = _lenient_str(value)
    if text is None:
        return None
    text = text.strip()
    if has_surrogate(text):
        raise ValueError(LONE_SURROGATE)
    return text or None


def _plain_id(value: Any) -> bool:
    """An id `_id` keeps as it is: ASCII text, not blank, without spaces around it (`plain_parts`)."""
    return type(value) is str and value.isascii() and value != "" and not value[0].isspace() and not value[-1].isspace()


def _object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise ValueError("must be an object")


_ISO_START = re.compile(r"^\s*[+-]?\d{4}-\d{2}-\d{2}")
_DATETIME = TypeAdapter(datetime)
TIME_RULE = "must be an ISO-8601 date-time"


def parse_iso_datetime(value: str) -> datetime:
    """ISO-8601 date or date-time, read by pydantic; naive values are taken as UTC. Raises ValueError.

    Only text that starts like a date is taken: pydantic alone would also read unix numbers.
    """
    if not isinstance(value, str) or not _ISO_START.match(value):
        raise ValueError(TIME_RULE)
    text = value.strip()
    try:
        parsed = _DATETIME.validator.validate_python(text)  # what TypeAdapter.validate_python calls
    except ValidationError:
        try:  # forms pydantic leaves out and the stdlib takes: "2024-01-01 00:00:00+00", a bare hour
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(TIME_RULE) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; ValueError when it has no UTC form (year 1 at +01:00, year 9999 at -01:00)."""
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 once taken to UTC") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_date(value: Any) -> date:
    """A calendar date: ISO-8601 text (the date as written, before any zone shift) or epoch seconds,
    milliseconds when above 10^11 (MAPPINGS "Real traffic"), taken in UTC. Raises ValueError."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:  # the common YYYY-MM-DD, without the date-time machinery
                return date.fromisoformat(text)
            return parse_iso_datetime(text).date()
        except ValueError:
            pass
        number = as_number(text)
    else:
        number = as_number(value)
    if number is None:
        raise ValueError("must be an ISO-8601 date (YYYY-MM-DD) or epoch seconds")
    try:
        seconds = number / 1000 if abs(number) > 10**11 else number
        return (_EPOCH + timedelta(seconds=seconds)).date()
    except (OverflowError, ValueError):
        raise ValueError("is an epoch time outside the years 1 to 9999") from None


Id = Annotated[str | None, BeforeValidator(_id)]
# A plain validator: properties and traits are read as they are, not copied key by key.
Obj = Annotated[dict[str, Any], PlainValidator(_object)]
# Times are kept as sent and read only when a vendor request uses them (MAPPINGS "Real traffic").
Time = Any


def _lenient_object(value: Any) -> dict[str, Any]:
    """`context` and `integrations`: an object, anything else counts as absent. Their values are read,
    and checked, only when a vendor request uses them (MAPPINGS "Real traffic")."""
    return value if isinstance(value, dict) else {}


# Read as they are: only what a vendor request uses is checked, by the field that reads it.
Loose = Annotated[dict[str, Any], PlainValidator(_lenient_object)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, coerce_numbers_to_str=True)


class Message(_Model):
    """Fields common to every Segment call. `context` stays the object as sent (a dict)."""

    type: str
    messageId: Any = None
    userId: Id = None
    anonymousId: Id = None
    timestamp: Time = None
    originalTimestamp: Time = None
    receivedAt: Time = None
    sentAt: Time = None
    context: Loose = Field(default_factory=dict)
    integrations: Loose = Field(default_factory=dict)

    label: ClassVar[str] = "message"

    @property
    def event_label(self) -> str:
        """How errors name this message: the event name for track, the call type otherwise."""
        return self.type


def _event_name(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        if has_surrogate(value):
            raise ValueError(LONE_SURROGATE)
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
    name: Any = None
    category: Any = None
    properties: Obj = Field(default_factory=dict)


class Screen(Message):
    type: Literal["screen"]
    name: Any = None
    category: Any = None
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


def message_type(raw: Mapping[str, Any]) -> str | None:
    """The call type of a raw message, matched ignoring case and surrounding spaces ("Track" is track)."""
    kind = raw.get("type")
    if type(kind) is str:
        if kind in MESSAGE_TYPES:
            return kind
        kind = kind.strip().lower()
        if kind in MESSAGE_TYPES:
            return kind
    return None


def message_id_of(message: Any) -> str:
    """The message's `messageId`, or `sha256:` and 32 hex digits of its content (keys sorted), so a message sent
    twice is known as the same either way: the outbox's dedupe, a cart change applied once (carts.py)."""
    if isinstance(message, dict):
        mid = message.get("messageId")
        if isinstance(mid, str) and mid.strip():
            return mid
    text = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    # surrogatepass: a lone surrogate in the content is still content, and the digest stays the same each time.
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def plain_parts(raw: Any) -> tuple[str, str | None, dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """(type, event, properties, context, integrations) of a raw track, page or screen message that its model takes
    exactly as it is, so that reading the raw message reads what `parse_message` gives: keys of text, the type as
    the model names it, userId and anonymousId absent or plain ids (`_plain_id`, one at least), a track's event
    ASCII text that is not blank, properties, context and integrations objects or absent ({}). None for anything
    else, which `parse_message` reads (and may refuse)."""
    if type(raw) is not dict:
        return None
    try:
        "".join(raw)  # keys of text (the model refuses any other), asked at C speed
    except TypeError:
        return None
    kind = raw.get("type")
    if type(kind) is not str:  # as `message_type` reads it: text alone, never a value that only equals it
        return None
    if kind == "track":
        event = raw.get("event")
        if type(event) is not str or not event.isascii() or event.isspace() or not event:
            return None
    elif kind == "page" or kind == "screen":  # noqa: PLR1714 - the common case first, without a set
        event = None
    else:
        return None
    user, anonymous = raw.get("userId"), raw.get("anonymousId")
    if (
        (user is None and anonymous is None)
        or (user is not None and not _plain_id(user))
        or (anonymous is not None and not _plain_id(anonymous))
    ):
        return None
    parts = [raw.get(key) for key in ("properties", "context", "integrations")]
    for i, value in enumerate(parts):
        if value is None:
            parts[i] = {}
        elif type(value) is not dict:
            return None
    return kind, event, *parts  # type: ignore[return-value]


def raw_label(raw: Mapping[str, Any]) -> str:
    """The label of a raw message for errors raised before it is parsed."""
    kind = message_type(raw)
    event = raw.get("event")
    if kind == "track" and isinstance(event, str) and event.strip() and not has_surrogate(event):
        return event
    return kind or "message"


def check_envelope(raw: Any) -> str:
    """The first checks of MAPPINGS.md 'Shared': an object with a known `type`; returns the type."""
    if not isinstance(raw, dict):
        raise InvalidMessage("message", "", f"must be a JSON object, not {type(raw).__name__}")
    kind = message_type(raw)
    if kind is None:
        if raw.get("type") is None:
            raise InvalidMessage("message", "type", "is required by the Segment spec")
        raise InvalidMessage(
            "message", "type", f"must be one of {', '.join(MESSAGE_TYPES)} (Segment spec message types)"
        )
    return kind


def parse_message(raw: Mapping[str, Any] | Message) -> Message:
    """Validate a raw Segment message into its model; errors name the Segment path."""
    if isinstance(raw, Message):
        return raw
    return validate_message(raw, check_envelope(raw))


def validate_message(raw: Mapping[str, Any], kind: str) -> Message:
    """`parse_message` of a raw message whose envelope `check_envelope` has passed, giving `kind`."""
    if raw["type"] != kind:
        raw = {**raw, "type": kind}
    try:
        # The model's validator itself: what model_validate calls, without its frame and checks of arguments.
        return MESSAGE_TYPES[kind].__pydantic_validator__.validate_python(raw)  # type: ignore[no-any-return]
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        path = format_path(err["loc"])
        rule = _PYDANTIC_RULES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
        raise InvalidMessage(raw_label(raw), path, rule) from None
    except RecursionError:
        raise InvalidMessage(raw_label(raw), "", "is nested too deeply to be read") from None


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


# Spec event names (e-commerce v2, and the B2B SaaS user events the vendors take), matched as people type them.
SPEC_EVENTS = (
    "Products Searched", "Product List Viewed", "Product List Filtered", "Product Category Viewed",
    "Promotion Viewed", "Promotion Clicked", "Product Clicked", "Product Viewed", "Product Added", "Product Removed",
    "Cart Viewed", "Checkout Started", "Checkout Step Viewed", "Checkout Step Completed", "Payment Info Entered",
    "Order Updated", "Order Completed", "Order Refunded", "Order Cancelled", "Coupon Entered", "Coupon Applied",
    "Coupon Denied", "Coupon Removed", "Product Added to Wishlist", "Product Removed from Wishlist",
    "Wishlist Product Added to Cart", "Product Shared", "Cart Shared", "Product Reviewed",
    "Signed Up", "Signed In", "Signed Out",
)  # fmt: skip


def name_key(name: str) -> str:
    """How names are compared: case and runs of spaces do not count."""
    return " ".join(name.split()).casefold()


_EXACT = frozenset(SPEC_EVENTS)
_CANONICAL: dict[str, str] = {
    **{name_key(name): name for name in SPEC_EVENTS},
    **{name_key(v1): v2 for v1, v2 in V1_ALIASES.items()},
}


def canonical_event(name: str) -> str:
    """The e-commerce v2 name of a spec event (v2 or v1, any case and spacing); other names as they are."""
    if name in _EXACT:
        return name
    return V1_ALIASES.get(name) or _CANONICAL.get(name_key(name), name)


def words(name: str) -> list[str]:
    """The words of a name over Unicode letters and digits, split at spaces, punctuation and case changes:
    'checkoutStepViewed' -> checkout, Step, Viewed; 'HTMLPage2' -> HTML, Page, 2; 'Sipariş Tamamlandı' kept whole."""
    out: list[str] = []
    for run in re.findall(r"[^\W_]+", name):
        start = 0
        for i in range(1, len(run)):
            prev, char = run[i - 1], run[i]
            nxt = run[i + 1] if i + 1 < len(run) else ""
            if (
                prev.isdigit() != char.isdigit()
                or (prev.islower() and char.isupper())
                or (prev.isupper() and char.isupper() and nxt.islower())
            ):
                out.append(run[start:i])
                start = i
        out.append(run[start:])
    return out


@lru_cache(maxsize=4096)  # a shop has few event names; each is looked at once
def has_words(name: str) -> bool:
    """Whether a name has a letter or digit (`words` finds any): what a vendor event name is made of."""
    return bool(words(name))


@lru_cache(maxsize=4096)  # a shop has few event names; each is derived once
def snake_case(name: str) -> str:
    """'Coupon Applied' -> 'coupon_applied'; 'Sipariş Tamamlandı' -> 'sipariş_tamamlandı' (every letter kept)."""
    # Lower-casing "İ" gives "i" and a combining dot; Turkish writers type "iade" for "İade".
    return "_".join(w.lower().replace("i\u0307", "i") for w in words(name))


@lru_cache(maxsize=4096)
def lower_camel(name: str) -> str:
    """'Order Completed' -> 'orderCompleted'; other scripts transliterated to ASCII with anyascii first
    ('Заказ Оформлен' -> 'zakazOformlen')."""
    found = [w.lower() for w in words(anyascii(name))]
    return found[0] + "".join(w.capitalize() for w in found[1:]) if found else ""


# --- integrations -------------------------------------------------------------------------------


def integration_setting(integrations: Any, display_name: str) -> tuple[bool, dict[str, Any], str]:
    """Whether `display_name` gets the message, its options, and the key that decided (DESIGN.md section 4).

    `All` (any case) sets the default; the destination's own key overrides it: `false` turns it
    off, `true` or an object turns it on (an object also carries options). Other values are absent.
    The key is "" when nothing in `integrations` decided.
    """
    if not isinstance(integrations, dict) or not integrations:  # most messages: nothing to look through
        return True, {}, ""
    own = integrations.get(display_name)
    if own is True:
        return True, {}, display_name
    if isinstance(own, dict):
        return True, own, display_name
    if own is False:
        return False, {}, display_name
    for key, value in integrations.items():
        if isinstance(key, str) and key.lower() == "all" and isinstance(value, bool):
            return value, {}, key
    return True, {}, ""


# A named tuple's own __new__ is a Python function; tuple.__new__ given every field, in order, skips that frame on
# the path every event takes (fields.Item, base.HttpRequest and base.Handled). tests/test_api.py checks that the
# field counts are still the ones those calls pass.
new_tuple = tuple.__new__


# --- values -------------------------------------------------------------------------------------

# The largest integer a number field takes, past it "too large" (as_number); a name, so it is not computed
# at each use (10**300 is not folded into a constant).
NUMBER_LIMIT = 10**300
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def as_number(value: Any) -> Number | None:
    """A number from a number or numeric text; None when `value` is not one (bools, NaN, inf)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # Past 4,300 digits Python will not even print it; 300 leaves room for any real amount.
        return value if -NUMBER_LIMIT < value < NUMBER_LIMIT else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.match(text):
            return int(text) if len(text) < 300 else None
        if _FLOAT_TEXT.match(text):
            number = float(text)
            if not math.isfinite(number):
                return None
            # Integral text is an int ("1.0000" is 1: MAPPINGS "Real traffic"), within exact float range.
            return int(number) if number.is_integer() and abs(number) < 2**53 else number
    return None


# json.dumps with these arguments builds the same encoder on every call; one made once encodes the same.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def _c_encoder() -> Any:
    """`_COMPACT`'s C encoder, made once (`encode` makes one on every call), without the check for circular
    references: a value `sendable` has passed is a fresh tree of bounded depth. None where the stdlib's private
    `c_make_encoder` is missing or takes other arguments: `_COMPACT` then encodes, the same text a little slower."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder = make(None, str, json.encoder.encode_basestring, None, ":", ",", False, False, False)
        probe = {"a": [1, 2.5, None, True, "é"]}
        return encoder if "".join(encoder(probe, 0)) == _COMPACT.encode(probe) else None
    except (TypeError, ValueError):
        return None


_COMPACT_C = _c_encoder()


def compact_json(value: Any) -> str:
    """Compact JSON text of a value that `sendable` has passed."""
    if _COMPACT_C is not None:
        return "".join(_COMPACT_C(value, 0))
    return _COMPACT.encode(value)  # pragma: no cover - CPython has the C encoder


def _json_text_stdlib(value: Any) -> str:
    """Compact JSON that SQLite can always store: lone surrogates escaped, NaN and infinities as null."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(finite(value), separators=(",", ":"), allow_nan=False)


try:  # several times faster; the stdlib takes over for what orjson refuses (huge integers, lone surrogates)
    import orjson

    def json_text(value: Any) -> str:
        """Compact JSON text of any JSON-like value, for storing: orjson, or the stdlib where orjson refuses
        (huge integers, lone surrogates escaped); NaN and infinities become null."""
        try:
            return orjson.dumps(value).decode()  # UTF-8
        except (TypeError, orjson.JSONEncodeError):
            return _json_text_stdlib(value)

except ImportError:  # pragma: no cover - orjson comes with the server extra
    json_text = _json_text_stdlib
    orjson = None  # type: ignore[assignment]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Every digit as "0": a run of 19 of them is a number orjson may turn into a float (it reads integers past
# 64 bits, and below -2**63, as floats without a word), so such a document is read by the stdlib instead.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def json_value(body: bytes | str) -> Any:
    """The JSON value of a document (a request body, a stored event): orjson, several times faster, or the
    stdlib where orjson would not give the same value (an integer of 19 digits or more, exact as Python
    reads it) or refuses (a lone surrogate). NaN and Infinity are not JSON.

    Raises ValueError (json.JSONDecodeError with its line and column, for text that is not JSON) or
    RecursionError (nested past the stdlib's limit)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if orjson is not None and _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body, parse_constant=_no_constant)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it replaced by None (for JSON, which has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


#: How deep a value passed through as it is may nest (orjson, which stores it, stops at 255).
MAX_DEPTH = 32


def sendable(value: Any, depth: int = 0) -> Any:
    """`value` as it can travel in a JSON body: NaN and infinities inside it become null.

    Raises ValueError, with a rule that says where, when it cannot travel at all: a lone surrogate in
    a text or a key, an integer of 300 digits or more, or nesting deeper than MAX_DEPTH (MAPPINGS
    "Real traffic": no internal errors).
    """
    kind = type(value)
    if kind is str:
        if not value.isascii() and _SURROGATE.search(value) is not None:
            raise ValueError(LONE_SURROGATE)
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool:
        return value
    if kind is int:
        if -NUMBER_LIMIT < value < NUMBER_LIMIT:
            return value
        raise ValueError("is a number too large to send (300 digits or more)")
    if depth >= MAX_DEPTH:
        raise ValueError(f"is nested more than {MAX_DEPTH} levels deep")
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is str and not key.isascii() and has_surrogate(key):
                raise ValueError(f"has a key that {LONE_SURROGATE}")
            item_kind = type(item)
            if (
                (item_kind is str and item.isascii())
                or item_kind is bool
                or item is None
                or (item_kind is float and math.isfinite(item))
                or (item_kind is int and -NUMBER_LIMIT < item < NUMBER_LIMIT)
            ):
                out[key] = item  # the common cases (a product's text, price, quantity), without a call
                continue
            try:
                out[key] = sendable(item, depth + 1)
            except ValueError as exc:
                raise ValueError(_inside(f".{key}", exc)) from None
        return out
    if kind is list or kind is tuple:
        out_list = []
        for i, item in enumerate(value):
            try:
                out_list.append(sendable(item, depth + 1))
            except ValueError as exc:
                raise ValueError(_inside(f"[{i}]", exc)) from None
        return out_list
    return str(value)


def _inside(step: str, exc: ValueError) -> str:
    """Prefix the place inside a value to a rule: '.a[0]: holds a lone surrogate ...'."""
    text = str(exc)
    return f"{step}{text}" if text.startswith((".", "[")) else f"{step}: {text}"


@lru_cache(maxsize=1024)  # a shop's visitors send a few dozen locales
def language(locale: str | None) -> str | None:
    """'en-US' -> 'en'; None when there is no usable locale."""
    if not locale:
        return None
    return locale.strip().replace("_", "-").partition("-")[0] or None


_EXACT_TERM = 10**18  # a price x quantity below it sums exactly in 28-digit Decimal too


def money_sum(terms: list[tuple[Number, Number]]) -> Number:
    """Sum of price x quantity without binary-float noise (349.99 * 2 + 249.99 == 949.97)."""
    # Integers are exact as they are: Decimal(q) is Decimal(str(q)), and while every term stays below 10**18 the
    # Decimal sum (28 digits) is exact too, so it is the integer sum.
    if all(type(p) is int and type(q) is int and -_EXACT_TERM < p * q < _EXACT_TERM for p, q in terms):
        return sum(p * q for p, q in terms)
    total = Decimal(0)
    for p, q in terms:  # Decimal times an int takes the int exactly, as Decimal(q) would
        total += Decimal(str(p)) * (q if type(q) is int else Decimal(str(q)))
    return int(total) if total == total.to_integral_value() else float(total)
