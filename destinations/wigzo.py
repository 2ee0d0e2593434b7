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
from collections.abc import Mapping
from datetime import timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import AfterValidator, BeforeValidator, SecretStr

from .base import Destination, HttpRequest, Mapper, SettingsModel, http_url, non_empty_secret
from .spec import Call, Number, Product, finite, first_key, flat_map, money_sum, snake_case

# uuid.uuid5(uuid.NAMESPACE_DNS, "tracker.wigzopush.com"), fixed for good: changing it re-keys every user.
USER_ID_NAMESPACE = uuid.UUID("3e278de4-edb2-5a21-980a-b21ae59db985")

IDENTIFY_PATH = "/rest/v1/learn/identify"
EVENT_PATH = "/rest/v1/learn/event"

# What a mapper returns: the API path and the JSON body.
Mapped = tuple[str, dict[str, Any]]


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


def wigzo_user_id(segment_id: str) -> str:
    """A canonical UUIDv4 kept lower-cased; any other id mapped to a stable UUIDv4.

    Same as `uuid.UUID(bytes=uuid.uuid5(USER_ID_NAMESPACE, segment_id).bytes, version=4)`, written out
    so that ids carrying lone surrogates (valid JSON escapes) hash too instead of failing to encode.
    """
    if _UUID4.fullmatch(segment_id):
        return segment_id.lower()
    name = segment_id.encode("utf-8", "surrogatepass")
    digest = hashlib.sha1(USER_ID_NAMESPACE.bytes + name, usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def user_id(call: Call) -> str:
    """options userId || userId || anonymousId, through `wigzo_user_id`."""
    option = call.text(call.options.get("userId"), f"integrations.{call.vendor}.userId")
    return wigzo_user_id((option or "").strip() or call.visitor_id)


# --- small readers ------------------------------------------------------------------------------


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """Absent fields are left out: no nulls and no blank text in a payload."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def decimal_text(value: Number | None) -> str | None:
    """A number as the seed's samples write prices: "72000", "18.99"."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else repr(value)


def _option(call: Call, key: str) -> str | None:
    return call.text(call.options.get(key), f"integrations.{call.vendor}.{key}")


def _prop_text(call: Call, *keys: str) -> str | None:
    key, value = first_key(call.properties, *keys)
    return call.text(value, f"properties.{key}")


def _item_text(call: Call, p: Product, *keys: str) -> str | None:
    key, value = first_key(p.raw, *keys)
    return call.text(value, f"{p.path}.{key}")


def _prop_number(call: Call, key: str, target: str) -> Number | None:
    return call.number(call.properties.get(key), f"properties.{key}", target)


def _canonical_url(call: Call, p: Product, target: str) -> str:
    url = p.url or call.page_url
    if not url:
        raise call.fail("properties.url", f"or context.page.url is required by {call.vendor} {target} (canonicalUrl)")
    return url


def _event(call: Call, name: str, eventval: Mapping[str, Any]) -> Mapped:
    return EVENT_PATH, {
        "eventName": name,
        "eventval": dict(eventval),
        "eventCategory": "EXTERNAL",
        "userId": user_id(call),
        "is_active": True,
        "source": call.settings.source,
    }


# --- identify -----------------------------------------------------------------------------------

# Traits identify sends in fields of their own; every other trait goes along as a top-level key.
_PROFILE_TRAITS = frozenset(
    {
        "email", "phone", "firstName", "first_name", "lastName", "last_name", "address",
        "createdAt", "created_at", "updatedAt", "updated_at", "is_active",
    }
)  # fmt: skip


def _iso_date(call: Call, *keys: str) -> str | None:
    key, value = first_key(call.traits, *keys)
    day = call.date(value, f"traits.{key}")
    return day.isoformat() if day else None


def identify(call: Call) -> Mapped:
    email, phone = call.email, call.phone
    if not (email or phone):
        raise call.fail("traits.email", f"or traits.phone is required by {call.vendor} identify")
    address = call.address
    postal_key, postal = first_key(address, "postal_code", "postalCode", "zip")
    code_key, code = first_key(address, "country_code", "countryCode")
    is_active = call.boolean(call.traits.get("is_active"), "traits.is_active")
    profile = _present(
        {
            "userId": user_id(call),
            "email": email,
            "phone": phone,
            "firstName": call.first_name,
            "lastName": call.last_name,
            "customer_id": call.user_id,
            "postal_code": call.text(postal, f"traits.address.{postal_key}"),
            "city": call.text(address.get("city"), "traits.address.city"),
            "state": call.text(address.get("state"), "traits.address.state"),
            "country": call.text(address.get("country"), "traits.address.country"),
            "country_code": call.text(code, f"traits.address.{code_key}"),
            "createdAt": _iso_date(call, "createdAt", "created_at"),
            "updatedAt": _iso_date(call, "updatedAt", "updated_at"),
            "is_active": True if is_active is None else is_active,
            "source": call.settings.source,
        }
    )
    others = flat_map({k: v for k, v in call.traits.items() if k not in _PROFILE_TRAITS})
    return IDENTIFY_PATH, {**others, **profile}


# --- page ---------------------------------------------------------------------------------------

_PAGE_FIELDS = frozenset({"url", "title", "path", "referrer"})


def view(call: Call) -> Mapped:
    props, page = call.properties, call.message.context.page
    title = getattr(call.message, "name", None) or _prop_text(call, "title") or (page.title if page else None)
    others = {k: finite(v) for k, v in props.items() if k not in _PAGE_FIELDS and v is not None}
    fields = {
        "canonicalUrl": _prop_text(call, "url") or call.page_url,
        "title": title,
        "path": _prop_text(call, "path") or (page.path if page else None),
        "referrer": _prop_text(call, "referrer") or call.referrer,
    }
    return _event(call, "view", {**others, **_present(fields)})


# --- track events -------------------------------------------------------------------------------


def _tags(call: Call) -> str | None:
    tags = call.properties.get("tags")
    if isinstance(tags, list):
        texts = [call.text(t, f"properties.tags[{i}]") for i, t in enumerate(tags)]
        return ", ".join(t for t in texts if t)
    return call.text(tags, "properties.tags")


def _variants(call: Call, p: Product, image: str | None) -> list[dict[str, Any]]:
    """properties.variants in Wigzo's form (variant_id required), else one variant built from the product."""
    given = call.properties.get("variants")
    if given is None:
        key, inventory = first_key(call.properties, "inventory_quantity", "inventoryQuantity")
        built = {
            "variant_id": p.variant_id,
            "product_id": p.id,
            "title": p.variant or p.name,
            "sku": p.sku,
            "price": decimal_text(p.price),
            "image": image,
            "inventory_quantity": decimal_text(call.number(inventory, f"properties.{key}", "product_view")),
        }
        return [_present(built)]
    out = []
    for path, item in call.objects("variants"):
        variant_id = call.text(item.get("variant_id"), f"{path}.variant_id")
        call.require(variant_id, f"{path}.variant_id", "product_view (variants.variant_id)")
        out.append({"product_id": p.id, **{k: finite(v) for k, v in item.items() if v is not None}})
    return out


def product_view(call: Call) -> Mapped:
    p, target = call.product(), "product_view"
    image = _option(call, "imageUrl") or p.image_url
    fields = {
        "canonicalUrl": _canonical_url(call, p, target),
        "productId": call.require(p.id, p.id_path, f"{target} (productId)"),
        "title": p.name,
        "description": _option(call, "description") or _prop_text(call, "description"),
        "price": decimal_text(p.price),
        "image": image,
        "category": p.category,
        "language": _option(call, "language") or call.language,
        "tags": _tags(call),
        "productType": _prop_text(call, "product_type", "productType"),
        "vendor": p.brand,
        "variants": _variants(call, p, image),
    }
    return _event(call, target, _present(fields))


def _coupons(call: Call) -> list[str] | None:
    coupons = call.properties.get("coupons")
    if isinstance(coupons, list):
        texts = [call.text(c, f"properties.coupons[{i}]") for i, c in enumerate(coupons)]
        return [c for c in texts if c] or None
    coupon = call.text(coupons, "properties.coupons") or _prop_text(call, "coupon")
    return [coupon] if coupon else None


def _line_items_price(call: Call, target: str) -> Number | None:
    """subtotal || sum(price x quantity) of the line items that have a price."""
    subtotal = _prop_number(call, "subtotal", f"{target} (total_line_items_price)")
    if subtotal is not None:
        return subtotal
    priced = [(p.price, p.quantity) for p in call.products if p.price is not None]
    return money_sum(priced) if priced else None


def order_completed(call: Call) -> Mapped:
    target = "order_completed"
    order_id = call.require(_prop_text(call, "order_id", "orderId"), "properties.order_id", f"{target} (orderId)")
    customer_id = call.require(call.user_id, "userId", f"{target} (customer_id)")
    products = call.require(call.products, "properties.products", f"{target} (line_items)")
    line_items = [
        _present(
            {
                "line_item_id": _item_text(call, p, "line_item_id", "lineItemId"),
                "product_id": call.require(p.id, p.id_path, f"{target} (line_items.product_id)"),
                "variant_id": call.require(p.variant_id, f"{p.path}.variant_id", f"{target} (line_items.variant_id)"),
                "price": p.price,
                "quantity": call.require(p.quantity, f"{p.path}.quantity", f"{target} (line_items.quantity)"),
                "product_discount": call.number(p.raw.get("discount"), f"{p.path}.discount", target),
                "categories": p.category,
                "type": _item_text(call, p, "type"),
            }
        )
        for p in products
    ]
    address = call.address
    zip_key, zip_code = first_key(address, "postal_code", "postalCode", "zip")
    moment = call.time
    fields = {
        "orderId": order_id,
        "customer_id": customer_id,
        "email": call.email,
        "phone": call.phone,
        "fullName": call.full_name,
        "total_price": call.order_total(f"{target} (total_price)"),
        "total_line_items_price": _line_items_price(call, target),
        "shipping_cost": _prop_number(call, "shipping", f"{target} (shipping_cost)"),
        "total_discounts": _prop_number(call, "discount", f"{target} (total_discounts)"),
        "currency": call.currency,
        "coupons": _coupons(call),
        "created_at": moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None,
        "city": call.text(address.get("city"), "traits.address.city"),
        "state": call.text(address.get("state"), "traits.address.state"),
        "country": call.text(address.get("country"), "traits.address.country"),
        "zip": call.text(zip_code, f"traits.address.{zip_key}"),
        "line_items": line_items,
    }
    return _event(call, target, _present(fields))


_UTM = (("utm_source", "source"), ("utm_medium", "medium"), ("utm_campaign", "name"), ("utm_term", "term"),
        ("utm_content", "content"))  # fmt: skip


def _source_identifier(call: Call) -> str | None:
    """context.campaign as a utm query string ("utm_source=test"), as the seed's sample shows."""
    campaign = call.message.context.campaign
    if campaign is None:
        return None
    pairs = [(utm, getattr(campaign, attr)) for utm, attr in _UTM]
    return urlencode([(k, v) for k, v in pairs if v]) or None


def checkout_started(call: Call) -> Mapped:
    target = "checkout_started"
    checkout_key, event_checkout = first_key(call.properties, "checkout_id", "checkoutId", "cart_id", "cartId")
    event_checkout = call.text(event_checkout, f"properties.{checkout_key}")
    line_items = []
    for p in call.products:
        checkout_id = _item_text(call, p, "checkout_id", "checkoutId", "cart_id", "cartId") or event_checkout
        if not checkout_id:
            rule = f"or properties.cart_id is required by {call.vendor} {target} (line_items.checkout_id)"
            raise call.fail("properties.checkout_id", rule)
        price = decimal_text(p.price)
        item = {
            "checkout_id": checkout_id,
            "product_id": p.id,
            "quantity": p.quantity,
            "title": p.name,
            "variant_id": p.variant_id,
            "variant_title": p.variant,
            "variant_price": price,
            "vendor": p.brand,
            "price": price,
        }
        line_items.append(_present(item))
    fields = {
        "currency": call.currency,
        "total_price": decimal_text(call.order_total(f"{target} (total_price)")),
        "total_discounts": decimal_text(_prop_number(call, "discount", f"{target} (total_discounts)")),
        "total_line_items_price": decimal_text(_line_items_price(call, target)),
        "total_tax": decimal_text(_prop_number(call, "tax", f"{target} (total_tax)")),
        "referring_site": call.referrer,
        "abandoned_checkout_url": _prop_text(call, "checkout_url", "checkoutUrl", "cart_url", "cartUrl"),
        "source_identifier": _source_identifier(call),
        "line_items": line_items or None,
    }
    return _event(call, target, _present(fields))


def add_to_cart(call: Call) -> Mapped:
    p, target = call.product(), "add_to_cart"
    fields = {
        "canonicalUrl": _canonical_url(call, p, target),
        "productId": p.id,
        "variant_id": p.variant_id,
        "quantity": p.quantity,
        "price": p.price,
    }
    return _event(call, target, _present(fields))


def custom_event(call: Call) -> Mapped:
    """Any other track: the event name in snake_case, the properties as they are (nulls left out)."""
    name = snake_case(call.event) or "_".join(re.findall(r"\w+", call.event.lower()))
    if not name:
        raise call.fail("event", f"must contain letters or digits to name a {call.vendor} event (eventName)")
    # As they are, but valid JSON: NaN and infinities (never in standard JSON input) become null.
    return _event(call, name, {k: finite(v) for k, v in call.properties.items() if v is not None})


EVENTS: dict[str, Mapper] = {
    "Product Viewed": product_view,
    "Product Clicked": product_view,
    "Order Completed": order_completed,
    "Checkout Started": checkout_started,
    "Product Added": add_to_cart,
}


class WigzoDestination(Destination):
    name = "wigzo"
    display_name = "Wigzo"
    Settings = Settings
    calls = {"identify": identify, "page": view}  # noqa: RUF012
    events = EVENTS
    other_event = custom_event

    def credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        settings: Settings = self.settings
        params = {"org_token": settings.orgToken.get_secret_value()}
        if settings.token is not None:
            params = {"token": settings.token.get_secret_value(), **params}
        return params, {}

    def build(self, call: Call, mapped: Mapped) -> list[HttpRequest]:
        path, body = mapped
        return [
            HttpRequest(
                method="POST",
                url=f"{self.settings.baseUrl}{path}",
                params=self.credentials()[0],
                headers={"Content-Type": "application/json"},
                json=body,
            )
        ]
