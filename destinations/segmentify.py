"""Segmentify custom (backend) integration REST API (seed 004); D·engage speaks the same protocol.

| Segment                                   | Segmentify                      | seed 004 section              |
| ----------------------------------------- | ------------------------------- | ----------------------------- |
| page, screen                              | PAGE_VIEW                       | Page View                     |
| Product Viewed, Product Clicked           | PRODUCT_VIEW                    | Product View                  |
| Product Added, Wishlist Product Added ... | BASKET_OPERATIONS step add      | Add Product to Basket         |
| Product Removed                           | BASKET_OPERATIONS step remove   | Remove Product from Basket    |
| Cart Viewed                               | CHECKOUT step basket            | View Basket                   |
| Checkout Started                          | CHECKOUT step customer          | Customer Information          |
| Payment Info Entered                      | CHECKOUT step payment           | Payment Information           |
| Order Completed                           | CHECKOUT step purchase          | Purchase/Success              |
| Signed Up, Signed In, Signed Out          | USER_OPERATIONS signup/in/out   | New User, User Login/Logout   |
| identify                                  | USER_OPERATIONS step update     | User Update                   |
| any other track                           | CUSTOM_EVENT                    | Custom Event                  |
| group, alias                              | filtered                        |                               |

Every request: POST {dataCenterUrl}/add/events/v1.json?apiKey=..., a JSON array body (batchable).

The events of declared fields alone are declared bodies (`fields.Body`); `event` wraps each into the request, by the
general path and by the straight-line code made from the same body for raw messages of plain values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import date, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, SecretStr

from .base import (
    Credential,
    Destination,
    FastMapper,
    Mapped,
    Mapper,
    SettingsModel,
    http_url,
    non_empty_secret,
    origin_of,
)
from .fields import (
    BAIL,
    CART_TOTAL,
    EMAIL,
    FIRST_NAME,
    ITEM_CURRENCY,
    ITEM_PRICE,
    ITEM_QUANTITY,
    LAST_NAME,
    LOCALE,
    ORDER_TOTAL,
    PHONE,
    PRODUCT_ID,
    Body,
    Call,
    F,
    Row,
    Table,
    full_name,
    line_item_sum,
    plain_time,
    present,
    visitor_of,
)  # fmt: skip
from .spec import Number, has_words, language

Device = Literal["PC", "TABLET", "MOBILE", "ANDROID", "IOS"]
DEVICES = ("PC", "TABLET", "MOBILE", "ANDROID", "IOS")
EVENTS_PATH = "/add/events/v1.json"


class Settings(SettingsModel):
    apiKey: Annotated[SecretStr, AfterValidator(non_empty_secret)]
    dataCenterUrl: Annotated[str, AfterValidator(http_url)]
    origin: Annotated[str, AfterValidator(http_url), AfterValidator(an_origin)] | None = None
    device: Device = "PC"
    testMode: bool = False


def an_origin(value: str) -> str:
    """The `origin` setting as an Origin header value: scheme://host[:port], the host IDNA-encoded."""
    if urlsplit(value).path not in ("", "/"):
        raise ValueError("must be an origin, scheme://host[:port], without a path")
    origin = origin_of(value)
    if origin is None:
        raise ValueError("must be an origin with a valid host name, such as https://shop.example")
    return origin


def dotted_date(day: date) -> str:
    """DD.MM.YYYY, as the seed writes birthdate and memberSince."""
    return f"{day.day:02d}.{day.month:02d}.{day.year:04d}"


def zero_for_empty_cart(call: Call, _: object = None) -> Number | None:
    """Cart Viewed of an empty cart has a total of 0; any other checkout sums its products."""
    total = line_item_sum(call)
    return 0 if total is None and call.event == "Cart Viewed" and not call.products else total


# --- declared fields: one table per vendor event (README "Segmentify and D·engage") -----------------

# On every event (language and the rest of the computed ones are added by `event`).
COMMON = (
    F("pageUrl", "context.page.url", kind="url"),
    F("referrer", "context.page.referrer"),
    F("userAgent", "context.userAgent"),
)
EVENT_CURRENCY = F("currency", "properties.currency")


def _table(name: str, *fields: Any) -> Table:
    return Table(name, *COMMON, *fields)


PAGE_VIEW = _table(
    "PAGE_VIEW",
    F("category", "properties.category", "category", "name", required=True, default="Page"),
    F("subCategory", "properties.sub_category"),
    EVENT_CURRENCY,
)
PRODUCT_VIEW = _table(
    "PRODUCT_VIEW",
    F("productId", *PRODUCT_ID, required=True),
    F("title", "product.name", required=True),
    F("url", "product.url", "context.page.url", kind="url", required=True),
    F("image", "product.image_url", "options.image_url", required=True),
    F("category", "product.category", required=True),
    F("price", "product.price", kind="number", required=True),
    F("brand", "product.brand"),
    F("oldPrice", "product.old_price", "product.compare_at_price", kind="number"),
    F("inStock", "product.in_stock", kind="bool"),
    ITEM_CURRENCY,
    F("gender", "product.gender", kind="raw"),
    F("colors", "product.colors", kind="raw"),
    F("sizes", "product.sizes", kind="raw"),
    F("labels", "product.labels", kind="raw"),
    F("mUrl", "product.m_url", kind="url"),
    *(F(size, f"product.{size}", kind="url") for size in ("imageXS", "imageS", "imageM", "imageL", "imageXL")),
)
# A product in a basket event and in a checkout's productList: the same four rows.
_BASKET_PRODUCT = (F("productId", *PRODUCT_ID, required=True), ITEM_PRICE, ITEM_CURRENCY, ITEM_QUANTITY)
BASKET_OPERATIONS = _table("BASKET_OPERATIONS", *_BASKET_PRODUCT)
_CHECKOUT_FIELDS = (
    EVENT_CURRENCY,
    F("cartUrl", "properties.cart_url", kind="url"),
)
# Totals by event (MAPPINGS "Real traffic"): an order prefers revenue, a cart its value.
CHECKOUT = _table(
    "CHECKOUT", F("totalPrice", *CART_TOTAL, kind="number", required=True, default=zero_for_empty_cart),
    *_CHECKOUT_FIELDS,
)  # fmt: skip
PURCHASE = _table(
    "CHECKOUT.purchase", F("totalPrice", *ORDER_TOTAL, kind="number", required=True, default=line_item_sum),
    *_CHECKOUT_FIELDS, F("orderNo", "properties.order_id"),
)  # fmt: skip
PRODUCT_LIST = Table("CHECKOUT", *_BASKET_PRODUCT, prefix="productList.")
USER_OPERATIONS = _table(
    "USER_OPERATIONS", F("username", "properties.username", "userId", required=True), EVENT_CURRENCY
)
USER_UPDATE = _table(
    "USER_OPERATIONS.update",
    F("username", "traits.username", "userId", required=True),
    F("fullName", "traits.name", default=full_name),
    F("email", *EMAIL),
    F("phone", *PHONE),
    F("age", "traits.age", kind="number"),
    F("birthdate", "traits.birthday", kind="date", to=dotted_date),
    F("memberSince", "traits.created_at", kind="date", to=dotted_date),
    F("location", "traits.address.city"),
    F("segments", "traits.segments", kind="texts"),
    EVENT_CURRENCY,
)
CUSTOM_EVENT = _table("CUSTOM_EVENT", EVENT_CURRENCY)

_GENDERS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
GENDER = F("gender", "traits.gender")  # M or F when recognisable, else kept in `custom`
GENDER_TABLE = Table("USER_OPERATIONS.update", GENDER)
# Traits that `user_update` sends in fields of their own (the name's parts too); the rest go to `custom`.
_PROFILE_TRAITS = USER_UPDATE.keys_of("traits") | Table("", FIRST_NAME, LAST_NAME).keys_of("traits")
_PROFILE_TRAITS_AND_GENDER = _PROFILE_TRAITS | GENDER_TABLE.keys_of("traits")

# --- mappers: one per vendor event; those of declared fields alone are declared bodies ---------------

PAGE_VIEW_BODY = Body("PAGE_VIEW", {"name": "PAGE_VIEW"}, PAGE_VIEW)
PRODUCT_VIEW_BODY = Body("PRODUCT_VIEW", {"name": "PRODUCT_VIEW"}, PRODUCT_VIEW, product=True)


def basket(step: str) -> Body:
    return Body("BASKET_OPERATIONS", {"name": "BASKET_OPERATIONS", "step": step}, BASKET_OPERATIONS, product=True)


def checkout(step: str) -> Body:
    """A checkout step's products are its productList; every step but the basket's needs one at least."""
    return Body("CHECKOUT", {"name": "CHECKOUT", "step": step}, PURCHASE if step == "purchase" else CHECKOUT,
                each=(("productList", PRODUCT_LIST),), each_required=step != "basket")  # fmt: skip


def user_operation(step: str) -> Body:
    return Body("USER_OPERATIONS", {"name": "USER_OPERATIONS", "step": step}, USER_OPERATIONS)


def user_update(call: Call) -> dict[str, Any]:
    gender_text = call.read(GENDER, target="USER_OPERATIONS.update (gender)")
    gender = _GENDERS.get(gender_text.strip().lower()) if gender_text else None
    # A gender that is not recognisably male or female stays in `custom` rather than being dropped.
    skip = _PROFILE_TRAITS_AND_GENDER if gender else _PROFILE_TRAITS
    custom = call.flat(call.traits, "traits", "USER_OPERATIONS (custom)", skip)
    update = {"name": "USER_OPERATIONS", "step": "update", **call.map(USER_UPDATE)}
    # Only when known, so that `event` needs no copy of the body without nulls.
    if gender:
        update["gender"] = gender
    if custom:
        update["custom"] = custom
    return update


def custom_event(call: Call) -> dict[str, Any]:
    """Any other track: `type` is the event name as sent, `params` the properties as a flat map."""
    if not call.custom_name and not has_words(call.label):
        raise call.fail("event", f"must contain a letter or digit to name a {call.vendor} CUSTOM_EVENT (type)")
    custom = {"name": "CUSTOM_EVENT", **call.map(CUSTOM_EVENT), "type": call.custom_name or call.label}
    params = call.flat(call.properties, "properties", "CUSTOM_EVENT (params)")
    if params:  # left out rather than null, so `event` has no null to take out
        custom["params"] = params
    return custom


EVENTS: dict[str, Body] = {
    "Product Viewed": PRODUCT_VIEW_BODY,
    "Product Clicked": PRODUCT_VIEW_BODY,
    "Product Added": basket("add"),
    "Wishlist Product Added to Cart": basket("add"),
    "Product Removed": basket("remove"),
    "Cart Viewed": checkout("basket"),
    "Checkout Started": checkout("customer"),
    "Payment Info Entered": checkout("payment"),
    "Order Completed": checkout("purchase"),
    "Signed Up": user_operation("signup"),
    "Signed In": user_operation("signin"),
    "Signed Out": user_operation("signout"),
}

# --- derived common fields ----------------------------------------------------------------------

SESSION_OPTION = F("sessionId", "options.session_id", "context.sessionId", "context.session_id")
DEVICE_OPTION = F("device", "options.device")
OS_NAME = F("os", "context.os.name")
DEVICE_TYPE = F("deviceType", "context.device.type")
USER_AGENT = F("userAgent", "context.userAgent")
# The inputs of the fields every event derives (sessionId, device, lang), for `destinations list`.
EVENT = Table("event", SESSION_OPTION, DEVICE_OPTION, OS_NAME, DEVICE_TYPE, USER_AGENT, LOCALE)
# Read together: what every event reads (in `event`'s order), and what tells the device when no option does.
EVENT_READS = Row(
    "event", (LOCALE, "event (language)"), (SESSION_OPTION, "event (sessionId)"), (DEVICE_OPTION, "event (device)")
)
DEVICE_SIGNS = Row(
    "device", (OS_NAME, "event (device)"), (DEVICE_TYPE, "event (device)"), (USER_AGENT, "event (device)")
)


def session_id(call: Call, option: str | None) -> str:
    """options || context.sessionId || context.session_id (`option`, as read) || one session per visitor per UTC
    day."""
    explicit = given_session(option)
    if explicit:
        return explicit
    moment = call.time("event (sessionId, derived from the message time)", required=True)
    return daily_session(call.message.anonymousId, call.message.userId, moment)


def given_session(option: str | None) -> str:
    """The session a message gives (its option or context, as read), trimmed; "" when none."""
    return (option or "").strip()


def daily_session(anonymous_id: str | None, user_id: str | None, moment: datetime | None) -> str:
    """The session of a visitor (anonymousId || userId) on the UTC day of `moment` (none: the empty day)."""
    return _daily_session(anonymous_id or user_id or "", moment.date().isoformat() if moment else "")


@lru_cache(maxsize=4096)  # a visitor sends many events a day: hash each (visitor, day) once
def _daily_session(visitor: str, day: str) -> str:
    """The session of a visitor on a UTC day: 32 hex digits of sha256("visitor|day")."""
    return hashlib.sha256(f"{visitor}|{day}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


_IOS = ("ios", "ipados", "iphone os")
_MOBILE_TYPES = ("mobile", "phone", "smartphone")


def device(call: Call, option: str | None, default: str) -> str:
    """options (`option`, as read) || from context.os.name, context.device.type, context.userAgent ||
    settings.device."""
    if option is not None:
        chosen = _option_device(option)
        if chosen is None:  # named where it was read: a field mapping may move it
            raise call.fail(call.path_of(DEVICE_OPTION), f"must be one of {', '.join(DEVICES)} ({call.vendor} device)")
        return chosen
    os_name, kind, agent = call.row(DEVICE_SIGNS)
    return device_of_signs(os_name, kind, agent, default)


def device_of_signs(os_name: str | None, kind: str | None, agent: str | None, default: str) -> str:
    """The device that context.os.name, context.device.type and context.userAgent (as read) tell, else `default`."""
    return _device_of(os_name or "", (kind or "").lower(), agent or "", default)


def _option_device(option: str) -> str | None:
    """The Segmentify device an `integrations` option names (any case, spaces around), or None."""
    chosen = option.strip().upper()
    return chosen if chosen in DEVICES else None


@lru_cache(maxsize=2048)  # a shop's traffic has a few hundred user agents: classify each once
def _device_of(os_name: str, kind: str, agent: str, default: str) -> str:
    """The Segmentify device for an OS name, a device type (lower case) and a user agent."""
    if os_name.lower() in _IOS or kind == "ios":
        return "IOS"
    if os_name.lower() == "android" or kind == "android":
        return "ANDROID"
    if kind == "tablet":
        return "TABLET"
    if kind in _MOBILE_TYPES:
        return "MOBILE"
    if any(word in agent for word in ("iPhone", "iPad", "iPod")):
        return "IOS"
    if "Android" in agent:
        return "ANDROID"
    if "Tablet" in agent:
        return "TABLET"
    if "Mobi" in agent:
        return "MOBILE"
    return default


# A 200 answer whose body has a `statusCode` other than SUCCESS is a failure (seed 004, API Errors).
PERMANENT_CODES = frozenset({"BAD_INPUT", "NO_EVENT", "NO_USERID", "NO_SESSIONID"})
CONFIGURATION_CODES = frozenset(
    {"NO_API_KEY", "NO_ACCOUNT", "UNVERIFIED_ACCOUNT", "FAILED_ACCOUNT", "NO_DOMAIN_APIKEY_MATCH"}
)


def event(own: Body | Callable[[Call], dict[str, Any]]) -> Mapper:
    """A Segmentify mapper (a declared body, or a function of the call) wrapped into the request body: the common
    and derived fields, then the event's own, nulls left out, as a one-event JSON array (batchable), with the
    `Origin` header. A declared body also gets its straight-line code for raw messages (`FastMapper`)."""

    def mapped(call: Call) -> Mapped:
        settings: Settings = call.settings
        body = call.body(own) if isinstance(own, Body) else own(call)
        if any(v is None for v in body.values()):  # a mapper's own null (a plugin's, wrapped by `event`): left out
            body = present(body)
        locale, session_option, device_option = call.row(EVENT_READS)
        session = session_id(call, session_option)
        chosen = device(call, device_option, settings.device)
        return _event_mapped(settings, body, call.visitor_id, session, chosen, locale)

    if not isinstance(own, Body):
        return mapped
    declared = own

    def fast(destination: Destination, roots: list[Any], message: dict[str, Any]) -> Mapped | None:
        """`mapped` for a raw message whose every value read is plain (`Body.fast`, `Row.plain`), or None: each
        derived value as `session_id` and `device` derive it, from the same reads."""
        settings: Settings = destination.settings
        reads = EVENT_READS.plain(roots)
        if reads is BAIL:
            return None
        locale, session_option, device_option = reads
        session = given_session(session_option)
        if not session:
            moment = plain_time(message)
            if moment is BAIL:
                return None
            session = daily_session(message.get("anonymousId"), message.get("userId"), moment)
        if device_option is None:
            signs = DEVICE_SIGNS.plain(roots)
            if signs is BAIL:
                return None
            os_name, kind, agent = signs
            chosen = device_of_signs(os_name, kind, agent, settings.device)
        else:
            chosen = _option_device(device_option)
            if chosen is None:  # the general path says why
                return None
        body = declared.fast(roots)
        if body is BAIL:
            return None
        # `plain_parts` took the ids as the model keeps them.
        visitor = visitor_of(message.get("userId"), message.get("anonymousId"))
        return _event_mapped(settings, body, visitor, session, chosen, locale)

    return FastMapper(mapped, fast)


def _event_mapped(  # noqa: PLR0917 - on every event's path, where keyword arguments cost
    settings: Settings, own: dict[str, Any], visitor: str, session: str, device: str, locale: str | None
) -> Mapped:
    """The Mapped of an event's own fields (`own`, without nulls, its `name` taken out of it here): the name, the
    visitor, session and device, the language when known and the test flag when set, then the event's own fields;
    the `Origin` header."""
    lang = language(locale)
    body = {"name": own.pop("name"), "userId": visitor, "sessionId": session, "device": device}
    if lang:
        body["lang"] = lang.upper()
    if settings.testMode:
        body["testMode"] = True
    body.update(own)
    # pageUrl, when the event has one, was read and checked with the common fields.
    origin = settings.origin or origin_of(body.get("pageUrl"))
    return Mapped(EVENTS_PATH, [body], {"Origin": origin} if origin else {})


class SegmentifyDestination(Destination):
    name = "segmentify"
    display_name = "Segmentify"
    Settings = Settings
    calls = {"page": event(PAGE_VIEW_BODY), "screen": event(PAGE_VIEW_BODY), "identify": event(user_update)}  # noqa: RUF012
    events = {name: event(body) for name, body in EVENTS.items()}  # noqa: RUF012
    other_event = event(custom_event)
    fields = (EVENT, PAGE_VIEW, PRODUCT_VIEW, BASKET_OPERATIONS, CHECKOUT, PURCHASE, PRODUCT_LIST, USER_OPERATIONS,
              USER_UPDATE, GENDER_TABLE, CUSTOM_EVENT)  # fmt: skip
    credentials_declared = (Credential("apiKey", param="apiKey"),)
    url_setting = "dataCenterUrl"
    headers = MappingProxyType({"Content-Type": "application/json", "Accept": "application/json"})
    batchable = True

    def response_problem(self, status: int, body: bytes) -> tuple[str, str] | None:
        if not 200 <= status < 300 or b"statusCode" not in body:
            return None
        try:
            code = json.loads(body).get("statusCode")
        except (ValueError, AttributeError, RecursionError):  # not an object it can read: no statusCode
            return None
        if not isinstance(code, str) or code == "SUCCESS":
            return None
        return ("config" if code in CONFIGURATION_CODES else "permanent"), code
