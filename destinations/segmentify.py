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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, SecretStr

from .base import Credential, Destination, Mapped, Mapper, SettingsModel, http_url, non_empty_secret, origin_of
from .fields import (
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
    Call,
    F,
    Row,
    Table,
    full_name,
    line_item_sum,
    present,
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

# --- mappers: one per vendor event --------------------------------------------------------------


def page_view(call: Call) -> dict[str, Any]:
    return {"name": "PAGE_VIEW", **call.map(PAGE_VIEW)}


def product_view(call: Call) -> dict[str, Any]:
    return {"name": "PRODUCT_VIEW", **call.map(PRODUCT_VIEW, call.product())}


def basket(step: str) -> Mapper:
    def mapper(call: Call) -> dict[str, Any]:
        return {"name": "BASKET_OPERATIONS", "step": step, **call.map(BASKET_OPERATIONS, call.product())}

    return mapper


def checkout(step: str) -> Mapper:
    table = PURCHASE if step == "purchase" else CHECKOUT

    def mapper(call: Call) -> dict[str, Any]:
        products = call.products
        if not products and step != "basket":
            raise call.fail("properties.products", f"is required by {call.vendor} CHECKOUT (productList)")
        return {
            "name": "CHECKOUT",
            "step": step,
            **call.map(table),
            "productList": call.map_each(PRODUCT_LIST, products),
        }

    return mapper


def user_operation(step: str) -> Mapper:
    def mapper(call: Call) -> dict[str, Any]:
        return {"name": "USER_OPERATIONS", "step": step, **call.map(USER_OPERATIONS)}

    return mapper


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


EVENTS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "Product Viewed": product_view,
    "Product Clicked": product_view,
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
    explicit = (option or "").strip()
    if explicit:
        return explicit
    visitor = call.message.anonymousId or call.message.userId or ""
    moment = call.time("event (sessionId, derived from the message time)", required=True)
    return _daily_session(visitor, moment.date().isoformat() if moment else "")


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
        if option.strip().upper() not in DEVICES:  # named where it was read: a field mapping may move it
            raise call.fail(call.path_of(DEVICE_OPTION), f"must be one of {', '.join(DEVICES)} ({call.vendor} device)")
        return option.strip().upper()
    os_name, kind, agent = call.row(DEVICE_SIGNS)
    return _device_of(os_name or "", (kind or "").lower(), agent or "", default)


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


def event(mapper: Callable[[Call], dict[str, Any]]) -> Mapper:
    """A Segmentify mapper wrapped into the request body: the common and derived fields, then the
    event's own, nulls left out, as a one-event JSON array (batchable), with the `Origin` header."""

    def mapped(call: Call) -> Mapped:
        settings: Settings = call.settings
        own = mapper(call)
        locale, session_option, device_option = call.row(EVENT_READS)
        lang = language(locale)
        body = {
            "name": own.pop("name"),
            "userId": call.visitor_id,
            "sessionId": session_id(call, session_option),
            "device": device(call, device_option, settings.device),
        }
        if lang:
            body["lang"] = lang.upper()
        if settings.testMode:
            body["testMode"] = True
        body.update(own)
        if any(v is None for v in own.values()):  # a mapper's own null (a plugin's, wrapped by `event`): left out
            body = present(body)
        # pageUrl, when the event has one, was read and checked with the common fields.
        origin = settings.origin or origin_of(body.get("pageUrl"))
        headers = {"Origin": origin} if origin else {}
        return Mapped(EVENTS_PATH, [body], headers)

    return mapped


class SegmentifyDestination(Destination):
    name = "segmentify"
    display_name = "Segmentify"
    Settings = Settings
    calls = {"page": event(page_view), "screen": event(page_view), "identify": event(user_update)}  # noqa: RUF012
    events = {name: event(mapper) for name, mapper in EVENTS.items()}  # noqa: RUF012
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
