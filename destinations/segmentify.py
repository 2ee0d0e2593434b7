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
from datetime import timezone
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, SecretStr

from .base import Destination, HttpRequest, Mapper, SettingsModel, http_url, non_empty_secret
from .spec import Call, first, flat_map

Device = Literal["PC", "TABLET", "MOBILE", "ANDROID", "IOS"]
DEVICES = ("PC", "TABLET", "MOBILE", "ANDROID", "IOS")


class Settings(SettingsModel):
    apiKey: Annotated[SecretStr, AfterValidator(non_empty_secret)]
    dataCenterUrl: Annotated[str, AfterValidator(http_url)]
    origin: Annotated[str, AfterValidator(http_url)] | None = None
    device: Device = "PC"
    testMode: bool = False


# --- mappers: one per vendor event --------------------------------------------------------------


def page_view(call: Call) -> dict[str, Any]:
    props, m = call.properties, call.message
    category = call.text(props.get("category"), "properties.category")
    return {
        "name": "PAGE_VIEW",
        "category": category or getattr(m, "category", None) or getattr(m, "name", None) or "Page",
        "subCategory": call.text(first(props, "subCategory", "sub_category"), "properties.subCategory"),
    }


_PRODUCT_EXTRAS = ("gender", "colors", "sizes", "labels")
_IMAGE_SIZES = ("imageXS", "imageS", "imageM", "imageL", "imageXL")


def product_view(call: Call) -> dict[str, Any]:
    p, props = call.product(), call.properties
    need = "PRODUCT_VIEW"
    image_option = call.text(call.options.get("imageUrl"), f"integrations.{call.vendor}.imageUrl")
    event = {
        "name": "PRODUCT_VIEW",
        "productId": call.require(p.id, p.id_path, f"{need} (productId)"),
        "title": call.require(p.name, "properties.name", f"{need} (title)"),
        "url": call.require(p.url or call.page_url, "properties.url", f"{need} (url)"),
        "image": call.require(p.image_url or image_option, "properties.image_url", f"{need} (image)"),
        "category": call.require(p.category, "properties.category", f"{need} (category)"),
        "price": call.require(p.price, "properties.price", f"{need} (price)"),
        "brand": p.brand,
        "oldPrice": call.number(
            first(props, "old_price", "compare_at_price"), "properties.old_price", f"{need} (oldPrice)"
        ),
        "inStock": p.in_stock,
        "currency": p.currency,
        "mUrl": call.text(first(props, "mUrl", "m_url"), "properties.mUrl"),
    }
    for key in _PRODUCT_EXTRAS:
        event[key] = props.get(key)
    for key in _IMAGE_SIZES:
        event[key] = call.text(props.get(key), f"properties.{key}")
    return event


def basket(step: str) -> Mapper:
    def mapper(call: Call) -> dict[str, Any]:
        p = call.product()
        return {
            "name": "BASKET_OPERATIONS",
            "step": step,
            "productId": call.require(p.id, p.id_path, "BASKET_OPERATIONS (productId)"),
            "price": p.price,
            "currency": p.currency,
            "quantity": p.quantity,
        }

    return mapper


def checkout(step: str) -> Mapper:
    def mapper(call: Call) -> dict[str, Any]:
        products = call.products
        empty_cart = step == "basket" and not products
        if not products and not empty_cart:
            raise call.fail("properties.products", f"is required by {call.vendor} CHECKOUT (productList)")
        total = call.order_total("CHECKOUT (totalPrice)")
        if total is None and empty_cart:
            total = 0
        product_list = [
            {
                "productId": call.require(p.id, p.id_path, "CHECKOUT (productList.productId)"),
                "price": p.price,
                "currency": p.currency,
                "quantity": p.quantity,
            }
            for p in products
        ]
        props = call.properties
        return {
            "name": "CHECKOUT",
            "step": step,
            "totalPrice": call.require(total, "properties.total", "CHECKOUT (totalPrice)"),
            "currency": call.currency,
            "cartUrl": call.text(first(props, "cart_url", "cartUrl"), "properties.cart_url"),
            "orderNo": call.text(props.get("order_id"), "properties.order_id") if step == "purchase" else None,
            "productList": [{k: v for k, v in item.items() if v is not None} for item in product_list],
        }

    return mapper


def user_operation(step: str) -> Mapper:
    def mapper(call: Call) -> dict[str, Any]:
        username = call.text(call.properties.get("username"), "properties.username") or call.user_id
        return {
            "name": "USER_OPERATIONS",
            "step": step,
            "username": call.require(username, "properties.username", "USER_OPERATIONS (username, or userId)"),
        }

    return mapper


_GENDERS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
# Traits `user_update` sends in fields of their own; every other trait goes to `custom`.
_PROFILE_TRAITS = frozenset(
    {
        "username", "name", "firstName", "lastName", "first_name", "last_name", "email", "phone",
        "age", "birthday", "createdAt", "created_at", "address", "segments",
    }
)  # fmt: skip


def user_update(call: Call) -> dict[str, Any]:
    traits = call.traits
    gender_text = traits.get("gender")
    gender = _GENDERS.get(gender_text.strip().lower()) if isinstance(gender_text, str) else None
    birthday = call.date(traits.get("birthday"), "traits.birthday")
    created_key = "createdAt" if traits.get("createdAt") is not None else "created_at"
    member_since = call.date(traits.get(created_key), f"traits.{created_key}")
    segments = traits.get("segments")
    if segments is not None and not isinstance(segments, list):
        segments = [call.text(segments, "traits.segments")]
    consumed = _PROFILE_TRAITS | ({"gender"} if gender else set())
    username = call.text(traits.get("username"), "traits.username") or call.user_id
    return {
        "name": "USER_OPERATIONS",
        "step": "update",
        "username": call.require(username, "traits.username", "USER_OPERATIONS (username, or userId)"),
        "fullName": call.full_name,
        "email": call.email,
        "phone": call.phone,
        "gender": gender,
        "age": call.number(traits.get("age"), "traits.age", "USER_OPERATIONS (age)"),
        "birthdate": birthday.strftime("%d.%m.%Y") if birthday else None,
        "memberSince": member_since.strftime("%d.%m.%Y") if member_since else None,
        "location": call.text(call.address.get("city"), "traits.address.city"),
        "segments": segments,
        "custom": flat_map({k: v for k, v in traits.items() if k not in consumed}) or None,
    }


def custom_event(call: Call) -> dict[str, Any]:
    return {
        "name": "CUSTOM_EVENT",
        "type": call.message.event_label,
        "params": flat_map(call.properties) or None,
    }


EVENTS: dict[str, Mapper] = {
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


def session_id(call: Call) -> str:
    """options || context.sessionId || context.session_id || one session per visitor per UTC day."""
    context = call.message.context
    option = call.text(call.options.get("sessionId"), f"integrations.{call.vendor}.sessionId")
    explicit = option or context.sessionId or context.session_id
    if explicit:
        return explicit
    visitor = call.message.anonymousId or call.message.userId
    moment = call.time
    day = moment.astimezone(timezone.utc).date().isoformat() if moment else ""
    return hashlib.sha256(f"{visitor}|{day}".encode()).hexdigest()[:32]


_IOS = ("ios", "ipados", "iphone os")
_MOBILE_TYPES = ("mobile", "phone", "smartphone")


def device(call: Call, default: str) -> str:
    """options || from context.os.name, context.device.type, context.userAgent || settings.device."""
    option = call.options.get("device")
    if option is not None:
        if not isinstance(option, str) or option.upper() not in DEVICES:
            raise call.fail(f"integrations.{call.vendor}.device", f"must be one of {', '.join(DEVICES)}")
        return option.upper()
    context = call.message.context
    os_name = (context.os.name if context.os else None) or ""
    kind = ((context.device.type if context.device else None) or "").lower()
    agent = context.userAgent or ""
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


@lru_cache(maxsize=1024)  # a shop has few page URLs per origin; parsing each once is enough
def origin_of(url: str | None) -> str | None:
    """scheme://host[:port] of a URL, as written in it; None when it has no scheme or host."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# A 200 answer whose body has a `statusCode` other than SUCCESS is a failure (seed 004, API Errors).
PERMANENT_CODES = frozenset({"BAD_INPUT", "NO_EVENT", "NO_USERID", "NO_SESSIONID"})
CONFIGURATION_CODES = frozenset(
    {"NO_API_KEY", "NO_ACCOUNT", "UNVERIFIED_ACCOUNT", "FAILED_ACCOUNT", "NO_DOMAIN_APIKEY_MATCH"}
)


class SegmentifyDestination(Destination):
    name = "segmentify"
    display_name = "Segmentify"
    Settings = Settings
    calls = {"page": page_view, "screen": page_view, "identify": user_update}  # noqa: RUF012
    events = EVENTS
    other_event = custom_event

    def credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        return {"apiKey": self.settings.apiKey.get_secret_value()}, {}

    def response_problem(self, status: int, body: bytes) -> tuple[str, str] | None:
        if not 200 <= status < 300 or b"statusCode" not in body:
            return None
        try:
            code = json.loads(body).get("statusCode")
        except (ValueError, AttributeError):
            return None
        if not isinstance(code, str) or code == "SUCCESS":
            return None
        return ("config" if code in CONFIGURATION_CODES else "permanent"), code

    def build(self, call: Call, mapped: dict[str, Any]) -> list[HttpRequest]:
        settings: Settings = self.settings
        context = call.message.context
        lang = call.language
        event = {
            "name": mapped["name"],
            "userId": call.visitor_id,
            "sessionId": session_id(call),
            "device": device(call, settings.device),
            "pageUrl": call.page_url,
            "referrer": call.referrer,
            "userAgent": context.userAgent,
            "lang": lang.upper() if lang else None,
            "currency": call.currency,
            "testMode": True if settings.testMode else None,
            **mapped,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        origin = settings.origin or origin_of(call.page_url)
        if origin:
            headers["Origin"] = origin
        return [
            HttpRequest(
                method="POST",
                url=f"{settings.dataCenterUrl}/add/events/v1.json",
                params=self.credentials()[0],
                headers=headers,
                json=[{k: v for k, v in event.items() if v is not None}],
                batchable=True,
            )
        ]
