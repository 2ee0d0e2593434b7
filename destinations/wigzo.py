"""Wigzo (Engage 360) REST API (seed 000), as Segment's Wigzo destination feeds it (seed 001).

| Segment                         | Wigzo                                  | seed 000 section                 |
| ------------------------------- | -------------------------------------- | -------------------------------- |
| identify                        | POST /rest/v1/learn/identify           | Step 2: Identify Users           |
| page                            | event `view`                           | Step 3: Track Events             |
| Product Viewed, Product Clicked | event `product_view`                   | 1. Product View                  |
| Order Completed                 | event `order_completed`                | 2. Order Completed               |
| Checkout Started                | event `checkout_started`               | 3. Checkout Started              |
| Product Added                   | event `add_to_cart`                    | 4. Add to Cart                   |
| any other track                 | event named in snake_case              | Step 3 (eventName, eventval)     |
| screen, group, alias            | filtered                               | (seed 001: Track, Page, Identify)|

Every request: POST {baseUrl}/rest/v1/learn/identify or /rest/v1/learn/event, query params `token`
(when set) and `org_token`. Events travel as `{"eventName", "eventval", "eventCategory": "EXTERNAL",
"userId", "is_active": true, "source"}`.

Wigzo's userId must be a UUIDv4 (seed 000, Step 2). A Segment id that already is one, in canonical
8-4-4-4-12 form, is sent lower-cased; any other id is mapped to
`uuid.UUID(bytes=uuid.uuid5(USER_ID_NAMESPACE, id).bytes, version=4)`, so one Segment user is one Wigzo
user on identify, track and page, in every process. Where the seed's samples send prices and totals
as decimal text (product_view, checkout_started), they are sent as text; elsewhere as numbers.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import date, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import AfterValidator, BeforeValidator, SecretStr

from .base import Credential, Destination, Mapped, Mapper, SettingsModel, http_url, non_empty_secret
from .fields import (
    CART_TOTAL,
    EMAIL,
    FIRST_NAME,
    ITEM_PRICE,
    ITEM_QUANTITY,
    LAST_NAME,
    ORDER_TOTAL,
    PHONE,
    PRODUCT_ID,
    VARIANT_ID,
    Call,
    F,
    Item,
    Table,
    full_name,
    line_item_sum,
)  # fmt: skip
from .spec import Number, snake_case

# uuid.uuid5(uuid.NAMESPACE_DNS, "tracker.wigzopush.com"), fixed for good: changing it re-keys every user.
USER_ID_NAMESPACE = uuid.UUID("3e278de4-edb2-5a21-980a-b21ae59db985")

IDENTIFY_PATH = "/rest/v1/learn/identify"
EVENT_PATH = "/rest/v1/learn/event"

# Wigzo's own event keys: a custom event whose name becomes one of these is sent as `custom_<key>`.
VENDOR_EVENTS = frozenset({"product_view", "order_completed", "checkout_started", "add_to_cart", "view"})


def _blank_as_none(value: Any) -> Any:
    """An optional secret left blank (RudderStack and Segment UIs send "") counts as unset."""
    return None if isinstance(value, str) and not value.strip() else value


class Settings(SettingsModel):
    orgToken: Annotated[SecretStr, AfterValidator(non_empty_secret)]
    token: Annotated[SecretStr | None, BeforeValidator(_blank_as_none)] = None
    baseUrl: Annotated[str, AfterValidator(http_url)] = "https://tracker.wigzopush.com"
    source: Literal["web", "app"] = "web"


# --- the Wigzo user id --------------------------------------------------------------------------

_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE)


@lru_cache(maxsize=4096)  # a visitor sends many events: derive each id once
def wigzo_user_id(segment_id: str) -> str:
    """A canonical UUIDv4 kept lower-cased; any other id mapped to a stable UUIDv4:
    `uuid.UUID(bytes=uuid.uuid5(USER_ID_NAMESPACE, segment_id).bytes, version=4)`."""
    if _UUID4.fullmatch(segment_id):
        return segment_id.lower()
    digest = hashlib.sha1(USER_ID_NAMESPACE.bytes + segment_id.encode(), usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


USER_ID_OPTION = F("userId", "options.user_id")


def user_id(call: Call) -> str:
    """options userId || userId || anonymousId, through `wigzo_user_id`."""
    option = call.read(USER_ID_OPTION, target="userId")
    return wigzo_user_id((option or "").strip() or call.visitor_id)


def decimal_text(value: Number) -> str:
    """A number as the seed's samples write prices: "72000", "18.99"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else repr(value)


def iso_date(day: date) -> str:
    """YYYY-MM-DD, zero-padded for every year (strftime does not pad years before 1000)."""
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def iso_time(moment: datetime) -> str:
    """HH:MM:SS, as strftime("%H:%M:%S") writes it, without strftime's cost on every order."""
    return f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"


def _language(call: Call, _: Any = None) -> str | None:
    return call.language


# --- declared fields: one table per Wigzo event (README "Wigzo") ----------------------------------

IDENTIFY = Table(
    "identify",
    F("email", *EMAIL),
    F("phone", *PHONE),
    FIRST_NAME,
    LAST_NAME,
    F("customer_id", "userId"),
    F("postal_code", "traits.address.postal_code", "traits.address.zip"),
    F("city", "traits.address.city"),
    F("state", "traits.address.state"),
    F("country", "traits.address.country"),
    F("country_code", "traits.address.country_code"),
    F("createdAt", "traits.created_at", kind="date", to=iso_date),
    F("updatedAt", "traits.updated_at", kind="date", to=iso_date),
    F("is_active", "traits.is_active", kind="bool", default=True),
)
# Traits identify sends in fields of their own; every other trait goes along as a top-level key.
_PROFILE_TRAITS = IDENTIFY.keys_of("traits")

VIEW = Table(
    "view",
    F("canonicalUrl", "properties.url", "context.page.url", kind="url"),
    F("title", "name", "properties.title", "context.page.title"),
    F("path", "properties.path", "context.page.path"),
    F("referrer", "properties.referrer", "context.page.referrer"),
)
# Page properties sent in fields of their own; the others go along in eventval.
_PAGE_FIELDS = VIEW.keys_of("properties")

PRODUCT_VIEW = Table(
    "product_view",
    F("canonicalUrl", "product.url", "context.page.url", kind="url", required=True),
    F("productId", *PRODUCT_ID, required=True),
    F("title", "product.name"),
    F("description", "options.description", "product.description"),
    F("price", "product.price", kind="number", to=decimal_text),
    F("image", "options.image_url", "product.image_url"),
    F("category", "product.category"),
    F("language", "options.language", default=_language),
    F("tags", "product.tags", kind="texts", to=", ".join),
    F("productType", "product.product_type"),
    F("vendor", "product.brand"),
)
# One variant built from the product when the event has no `variants`.
VARIANT = Table(
    "product_view",
    F("variant_id", *VARIANT_ID),
    F("product_id", *PRODUCT_ID),
    F("title", "product.variant", "product.name"),
    F("sku", "product.sku"),
    F("price", "product.price", kind="number", to=decimal_text),
    F("image", "options.image_url", "product.image_url"),
    F("inventory_quantity", "product.inventory_quantity", kind="number", to=decimal_text),
    prefix="variants.",
)
GIVEN_VARIANT_ID = F("variant_id", "product.variant_id", required=True)

ORDER_COMPLETED = Table(
    "order_completed",
    F("orderId", "properties.order_id", required=True),
    F("customer_id", "userId", required=True),
    F("email", *EMAIL),
    F("phone", *PHONE),
    F("fullName", "traits.name", default=full_name),
    F("total_price", *ORDER_TOTAL, kind="number", default=line_item_sum),
    F("total_line_items_price", "properties.subtotal", kind="number", default=line_item_sum),
    F("shipping_cost", "properties.shipping", kind="number"),
    F("total_discounts", "properties.discount", kind="number"),
    F("currency", "properties.currency"),
    F("coupons", "properties.coupons", "properties.coupon", kind="texts"),
    F("city", "traits.address.city"),
    F("state", "traits.address.state"),
    F("country", "traits.address.country"),
    F("zip", "traits.address.postal_code", "traits.address.zip"),
)
LINE_ITEM = Table(
    "order_completed",
    F("line_item_id", "product.line_item_id"),
    F("product_id", *PRODUCT_ID, required=True),
    F("variant_id", *VARIANT_ID, required=True),
    ITEM_PRICE,
    F("quantity", "product.quantity", kind="number", required=True, default=1),
    F("product_discount", "product.discount", kind="number"),
    F("categories", "product.category"),
    F("type", "product.type"),
    prefix="line_items.",
)

CHECKOUT_STARTED = Table(
    "checkout_started",
    F("currency", "properties.currency"),
    F("total_price", *CART_TOTAL, kind="number", default=line_item_sum, to=decimal_text),
    F("total_discounts", "properties.discount", kind="number", to=decimal_text),
    F("total_line_items_price", "properties.subtotal", kind="number", default=line_item_sum, to=decimal_text),
    F("total_tax", "properties.tax", kind="number", to=decimal_text),
    F("referring_site", "context.page.referrer"),
    F("abandoned_checkout_url", "properties.checkout_url", "properties.cart_url"),
)
CHECKOUT_ITEM = Table(
    "checkout_started",
    # An item's own id first; Segment's own Checkout Started example carries only order_id.
    F(
        "checkout_id",
        *("product.checkout_id", "product.cart_id", "properties.checkout_id", "properties.cart_id"),
        "properties.order_id",
        required=True,
    ),
    F("product_id", *PRODUCT_ID),
    ITEM_QUANTITY,
    F("title", "product.name"),
    F("variant_id", *VARIANT_ID),
    F("variant_title", "product.variant"),
    F("variant_price", "product.price", kind="number", to=decimal_text),
    F("vendor", "product.brand"),
    F("price", "product.price", kind="number", to=decimal_text),
    prefix="line_items.",
)

# context.campaign as the utm parameters of checkout_started's source_identifier.
CAMPAIGN = Table(
    "checkout_started",
    F("utm_source", "context.campaign.source"),
    F("utm_medium", "context.campaign.medium"),
    F("utm_campaign", "context.campaign.name"),
    F("utm_term", "context.campaign.term"),
    F("utm_content", "context.campaign.content"),
    prefix="source_identifier.",
)
ADD_TO_CART = Table(
    "add_to_cart",
    F("canonicalUrl", "product.url", "context.page.url", kind="url", required=True),
    F("productId", *PRODUCT_ID),
    F("variant_id", *VARIANT_ID),
    ITEM_QUANTITY,
    ITEM_PRICE,
)

# --- mappers ------------------------------------------------------------------------------------


def _event(call: Call, name: str, eventval: dict[str, Any]) -> Mapped:
    return Mapped(
        EVENT_PATH,
        {
            "eventName": name,
            "eventval": eventval,
            "eventCategory": "EXTERNAL",
            "userId": user_id(call),
            "is_active": True,
            "source": call.settings.source,
        },
    )


def identify(call: Call) -> Mapped:
    profile = call.map(IDENTIFY)
    if "email" not in profile and "phone" not in profile:
        email, phone = call.path_of(IDENTIFY["email"]), call.path_of(IDENTIFY["phone"])
        raise call.fail(email, f"or {phone} is required by {call.vendor} identify")
    others = call.flat(call.traits, "traits", "identify (traits)", _PROFILE_TRAITS)
    return Mapped(IDENTIFY_PATH, {**others, "userId": user_id(call), **profile, "source": call.settings.source})


def view(call: Call) -> Mapped:
    others = call.passthrough(call.properties, "properties", "view (eventval)", _PAGE_FIELDS)
    return _event(call, "view", {**others, **call.map(VIEW)})


# Read on every event (the user id's option), and from each variant a Product Viewed gives.
EVENT = Table("event", USER_ID_OPTION)
GIVEN_VARIANT = Table("product_view", GIVEN_VARIANT_ID, prefix="variants[].")


def _variants(call: Call, product: Item) -> list[dict[str, Any]]:
    """properties.variants as given (each with a variant_id), else one variant built from the product."""
    given = call.objects("variants", product)
    if not given:
        return [call.map(VARIANT, product)]
    product_id = call.read(PRODUCT_VIEW["productId"], product)
    out = []
    for item in given:
        variant_id = call.map(GIVEN_VARIANT, item)["variant_id"]
        # As given, with the id under Wigzo's own name whichever spelling carried it.
        rest = call.passthrough(item.raw, item.path, "product_view (variants)", ("variant_id", "variantId"))
        out.append({"product_id": product_id, **rest, "variant_id": variant_id})
    return out


def product_view(call: Call) -> Mapped:
    product = call.product()
    fields = call.map(PRODUCT_VIEW, product)
    return _event(call, "product_view", {**fields, "variants": _variants(call, product)})


def order_completed(call: Call) -> Mapped:
    fields = call.map(ORDER_COMPLETED)
    products = call.require(call.products, "properties.products", "order_completed (line_items)")
    moment = call.time("order_completed (created_at)")
    created_at = {"created_at": f"{iso_date(moment)}T{iso_time(moment)}Z"} if moment else {}
    line_items = call.map_each(LINE_ITEM, products)
    return _event(call, "order_completed", {**fields, **created_at, "line_items": line_items})


def _source_identifier(call: Call) -> dict[str, str]:
    """context.campaign as a utm query string ("utm_source=test"), as the seed's sample shows."""
    text = urlencode(list(call.map(CAMPAIGN).items()))
    return {"source_identifier": text} if text else {}


def checkout_started(call: Call) -> Mapped:
    fields = call.map(CHECKOUT_STARTED)
    line_items = call.map_each(CHECKOUT_ITEM, call.products)
    rest = {"line_items": line_items} if line_items else {}
    return _event(call, "checkout_started", {**fields, **_source_identifier(call), **rest})


def add_to_cart(call: Call) -> Mapped:
    return _event(call, "add_to_cart", call.map(ADD_TO_CART, call.product()))


def custom_event(call: Call) -> Mapped:
    """Any other track: the event name in snake_case over Unicode letters (`custom_` before a name
    that is one of Wigzo's own keys), the properties as they are (nulls left out)."""
    if call.custom_name:  # a name the user gave (customEventNames): sent exactly as given
        return _event(
            call, call.custom_name, call.passthrough(call.properties, "properties", "custom event (eventval)")
        )
    name = snake_case(call.event)
    if not name:
        raise call.fail("event", f"must contain a letter or digit to name a {call.vendor} event (eventName)")
    if name in VENDOR_EVENTS:
        name = f"custom_{name}"
    return _event(call, name, call.passthrough(call.properties, "properties", "custom event (eventval)"))


EVENTS: dict[str, Mapper] = {
    "Product Viewed": product_view,
    "Product Clicked": product_view,
    "Order Completed": order_completed,
    "Checkout Started": checkout_started,
    "Product Added": add_to_cart,
}


class WigzoDestination(Destination):
    vendor_events = VENDOR_EVENTS
    name = "wigzo"
    display_name = "Wigzo"
    Settings = Settings
    calls = {"identify": identify, "page": view}  # noqa: RUF012
    events = EVENTS
    other_event = custom_event
    fields = (EVENT, IDENTIFY, VIEW, PRODUCT_VIEW, VARIANT, ORDER_COMPLETED, LINE_ITEM, CHECKOUT_STARTED,
              CHECKOUT_ITEM, CAMPAIGN, GIVEN_VARIANT, ADD_TO_CART)  # fmt: skip
    credentials_declared = (Credential("token", param="token"), Credential("orgToken", param="org_token"))
