"""eSputnik "Generate event v2" and contact API (seed 003).

| Segment                                             | eSputnik                           | seed 003 section       |
| --------------------------------------------------- | ---------------------------------- | ---------------------- |
| page                                                | pageViewed                         | pageViewed             |
| Product Viewed                                      | productViewed                      | productViewed          |
| Product List Viewed, Product Category Viewed        | productCategoryViewed              | productCategoryViewed  |
| Cart Viewed, Checkout Started, Product Added,       | cartUpdated (the whole cart)       | cartUpdated            |
| Product Removed, each with properties.products      |                                    |                        |
| the same events without properties.products         | filtered                           | cartUpdated            |
| Product Added to Wishlist                           | productAddedToWishlist             | productAddedToWishlist |
| Products Searched                                   | searchRequest                      | searchRequest          |
| identify                                            | POST /api/v1/contact               | (MAPPINGS.md)          |
| any other track                                     | the event name in lowerCamelCase   | Generate event v2      |
| screen, group, alias                                | filtered                           |                        |

Every event: POST {baseUrl}/api/v2/event with `{"eventTypeKey", "keyValue", "params": [{"name", "value"}]}`.
Params start with the contact locators email, phone, externalCustomerId (userId), in that order, when known;
`keyValue` is email || phone || userId. Object and list values travel as compact JSON strings, as the
seed shows. Authorization is HTTP Basic with the API key as password; eSputnik ignores the user name,
so it is always `destinations` (BASIC_USER). Options `integrations.eSputnik.eventTypeKey` (custom events)
and `integrations.eSputnik.keyValue` override the derived values.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, SecretStr

from .base import Destination, HttpRequest, Mapper, SettingsModel, http_url, non_empty_secret
from .errors import Filtered
from .spec import Call, Product, compact_json, first_key, flat_map, lower_camel

BASIC_USER = "destinations"
EVENT_PATH = "/api/v2/event"
CONTACT_PATH = "/api/v1/contact"
NO_LOCATOR = "eSputnik needs a contact locator: email, phone or userId"

Params = list[tuple[str, Any]]
# What a mapper returns: the API path and the JSON body.
Mapped = tuple[str, dict[str, Any]]


class Settings(SettingsModel):
    apiKey: Annotated[SecretStr, AfterValidator(non_empty_secret)]
    baseUrl: Annotated[str, AfterValidator(http_url)] = "https://esputnik.com"


# --- contact locators ---------------------------------------------------------------------------


def _blank_as_none(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip() or None


def locators(call: Call) -> Params:
    """email, phone, externalCustomerId (those known, in that order); Filtered when none is."""
    found = [
        ("email", _blank_as_none(call.email)),
        ("phone", _blank_as_none(call.phone)),
        ("externalCustomerId", call.user_id),
    ]
    known = [(name, value) for name, value in found if value is not None]
    if not known:
        raise Filtered(f"{NO_LOCATOR}; {call.message.event_label} has none (traits.email, traits.phone, userId)")
    return known


def _param_value(value: Any) -> Any:
    return compact_json(value) if isinstance(value, dict | list | tuple) else value


def _option_text(call: Call, key: str) -> str | None:
    return _blank_as_none(call.text(call.options.get(key), f"integrations.{call.vendor}.{key}"))


def event_body(call: Call, key: str, who: Params, params: Params) -> dict[str, Any]:
    """The Generate event v2 body: locators first, then the event's own params; nulls left out."""
    return {
        "eventTypeKey": key,
        "keyValue": _option_text(call, "keyValue") or who[0][1],
        "params": [
            {"name": name, "value": _param_value(value)} for name, value in [*who, *params] if value is not None
        ],
    }


def event(key: str, read: Callable[[Call], Params]) -> Mapper:
    """A mapper for one of eSputnik's predefined events; the locators are checked before the fields."""

    def mapper(call: Call) -> Mapped:
        who = locators(call)
        return EVENT_PATH, event_body(call, key, who, read(call))

    return mapper


# --- event params, one reader per eSputnik event ------------------------------------------------


def _without_nulls(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _extended(p: Product, taken: Mapping[str, Any]) -> dict[str, Any]:
    """Product properties in the seed's `someProductProperty: ["green"]` form: lists of strings."""
    return {
        k: v
        for k, v in p.raw.items()
        if k not in taken and isinstance(v, list) and v and all(isinstance(x, str) for x in v)
    }


def product_params(target: str) -> Callable[[Call], Params]:
    def read(call: Call) -> Params:
        p = call.product()
        product = {
            "productId": call.require(p.id, p.id_path, f"{target} (product.productId)"),
            "price": call.require(p.price, "properties.price", f"{target} (product.price)"),
            "isInStock": None if p.in_stock is None else int(p.in_stock),
        }
        product.update(_extended(p, product))
        return [("product", _without_nulls(product)), ("currencyCode", p.currency)]

    return read


def page_params(call: Call) -> Params:
    url = call.text(call.properties.get("url"), "properties.url") or call.page_url
    location = call.require(url, "properties.url", "pageViewed (page.location; or context.page.url)")
    return [("page", {"location": location})]


def category_params(call: Call) -> Params:
    key, value = first_key(call.properties, "category", "list_id", "listId")
    category = call.require(
        call.text(value, f"properties.{key}"),
        "properties.category",
        "productCategoryViewed (category.productCategoryId; or properties.list_id)",
    )
    return [("category", {"productCategoryId": category})]


def cart_params(call: Call) -> Params:
    if not call.has_products:
        raise Filtered(
            f"{call.message.event_label} without properties.products: eSputnik cartUpdated needs the whole cart; "
            "send every cart item in properties.products (with properties.cart_id) on Product Added, "
            "Product Removed, Cart Viewed or Checkout Started"
        )
    key, value = first_key(call.properties, "cart_id", "cartId", "checkout_id", "checkoutId")
    recycle_state_id = call.require(
        call.text(value, f"properties.{key}"),
        "properties.cart_id",
        "cartUpdated (recycleStateId; or properties.checkout_id)",
    )
    items = []
    for p in call.products:
        item = {
            "productId": call.require(p.id, p.id_path, "cartUpdated (products[].productId)"),
            "quantity": p.quantity,
            "price": call.require(p.price, f"{p.path}.price", "cartUpdated (products[].price)"),
            "name": p.name,
            "category": p.category,
            "discount": call.number(p.raw.get("discount"), f"{p.path}.discount", "cartUpdated (products[].discount)"),
        }
        item.update(_extended(p, item))
        items.append(_without_nulls(item))
    currency = call.currency or next((p.currency for p in call.products if p.currency), None)
    return [("products", items), ("currencyCode", currency), ("recycleStateId", recycle_state_id)]


def search_params(call: Call) -> Params:
    props = call.properties
    query = call.require(
        call.text(props.get("query"), "properties.query"), "properties.query", "searchRequest (search)"
    )
    key, value = first_key(props, "is_found", "isFound")
    found = call.boolean(value, f"properties.{key}")
    return [("search", query), ("isFound", None if found is None else int(found))]


def custom_event(call: Call) -> Mapped:
    """Any other track: one param per property; a property never repeats a locator param."""
    who = locators(call)
    key = _option_text(call, "eventTypeKey") or lower_camel(call.event)
    if not key:
        raise call.fail(
            "event",
            f"gives no {call.vendor} eventTypeKey in lowerCamelCase (ASCII letters and digits); "
            f"set integrations.{call.vendor}.eventTypeKey",
        )
    taken = {name for name, _ in who}
    params = [(name, value) for name, value in flat_map(call.properties).items() if name not in taken]
    return EVENT_PATH, event_body(call, key, who, params)


# --- identify -----------------------------------------------------------------------------------


def contact(call: Call) -> Mapped:
    """identify -> the contact API; `traits.name` is split at its first space when no first/last name is given."""
    who = dict(locators(call))
    first_name, last_name = _blank_as_none(call.first_name), _blank_as_none(call.last_name)
    if first_name is None and last_name is None:
        name = _blank_as_none(call.text(call.trait("name"), "traits.name"))
        if name:
            head, _, rest = name.partition(" ")
            first_name, last_name = head, _blank_as_none(rest)
    channels = [
        {"type": kind, "value": who[locator]}
        for kind, locator in (("email", "email"), ("sms", "phone"))
        if locator in who
    ]
    body = {
        "externalCustomerId": who.get("externalCustomerId"),
        "firstName": first_name,
        "lastName": last_name,
        "channels": channels,
    }
    return CONTACT_PATH, _without_nulls(body)


EVENTS: dict[str, Mapper] = {
    "Product Viewed": event("productViewed", product_params("productViewed")),
    "Product List Viewed": event("productCategoryViewed", category_params),
    "Product Category Viewed": event("productCategoryViewed", category_params),
    "Cart Viewed": event("cartUpdated", cart_params),
    "Checkout Started": event("cartUpdated", cart_params),
    "Product Added": event("cartUpdated", cart_params),
    "Product Removed": event("cartUpdated", cart_params),
    "Product Added to Wishlist": event("productAddedToWishlist", product_params("productAddedToWishlist")),
    "Products Searched": event("searchRequest", search_params),
}


class EsputnikDestination(Destination):
    name = "esputnik"
    display_name = "eSputnik"
    Settings = Settings
    calls = {"page": event("pageViewed", page_params), "identify": contact}  # noqa: RUF012
    events = EVENTS
    other_event = custom_event

    def credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        basic = f"{BASIC_USER}:{self.settings.apiKey.get_secret_value()}".encode()
        return {}, {"Authorization": f"Basic {base64.b64encode(basic).decode('ascii')}"}

    def build(self, call: Call, mapped: Mapped) -> list[HttpRequest]:
        path, body = mapped
        return [
            HttpRequest(
                method="POST",
                url=f"{self.settings.baseUrl}{path}",
                params={},
                headers={**self.credentials()[1], "Content-Type": "application/json"},
                json=body,
            )
        ]
