"""eSputnik "Generate event v2" and contact API (seed 003).

| Segment                                             | eSputnik                           | seed 003 section       |
| --------------------------------------------------- | ---------------------------------- | ---------------------- |
| page                                                | pageViewed                         | pageViewed             |
| Product Viewed                                      | productViewed                      | productViewed          |
| Product List Viewed, Product Category Viewed        | productCategoryViewed              | productCategoryViewed  |
| Cart Viewed, Checkout Started, Product Added,       | cartUpdated (the whole cart)       | cartUpdated            |
| Product Removed, each with properties.products      |                                    |                        |
| Product Added, Product Removed with one product      | cartUpdated (the cart the package  | cartUpdated            |
|   (the `cart` enrichment: serve, worker, send)      | keeps, carts.py)                   |                        |
| the same events without properties.products, and    | filtered                           | cartUpdated            |
|   no cart state (handle, the RudderStack routes)    |                                    |                        |
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

from .base import CART, WHOLE_CART, Credential, Destination, Mapped, Mapper, SettingsModel, http_url, non_empty_secret
from .errors import Filtered
from .fields import (
    CART_PURCHASE_IDS,
    CURRENCY,
    EMAIL,
    FIRST_NAME,
    LAST_NAME,
    PHONE,
    PRODUCT_ID,
    Call,
    F,
    Item,
    Table,
    present,
)
from .spec import compact_json, has_surrogate, has_words, lower_camel

BASIC_USER = "destinations"
EVENT_PATH = "/api/v2/event"
CONTACT_PATH = "/api/v1/contact"
NO_LOCATOR = "eSputnik needs a contact locator: email, phone or userId"
# eSputnik's own event keys: a custom event whose key becomes one of these is sent as `custom<Key>`.
VENDOR_EVENTS = frozenset(
    {"pageViewed", "productViewed", "productCategoryViewed", "cartUpdated", "productImpressions",
     "productAddedToWishlist", "searchRequest"}
)  # fmt: skip

Params = list[tuple[str, Any]]
# Cart events that are also single-product events: their products[] is the cart only beside a product id.
SINGLE_PRODUCT = frozenset({"Product Added", "Product Removed"})


class Settings(SettingsModel):
    apiKey: Annotated[SecretStr, AfterValidator(non_empty_secret)]
    baseUrl: Annotated[str, AfterValidator(http_url)] = "https://esputnik.com"


def basic_auth(api_key: str) -> str:
    """HTTP Basic with the API key as password; eSputnik ignores the user name."""
    return "Basic " + base64.b64encode(f"{BASIC_USER}:{api_key}".encode()).decode("ascii")


# --- declared fields (README "eSputnik") ---------------------------------------------------------

LOCATORS = Table("event", F("email", *EMAIL), F("phone", *PHONE), F("externalCustomerId", "userId"))
KEY_VALUE = F("keyValue", "options.key_value")
EVENT_TYPE_KEY = F("eventTypeKey", "options.event_type_key")


def _product(event: str) -> Table:
    return Table(
        event,
        F("productId", *PRODUCT_ID, required=True),
        F("price", "product.price", kind="number", required=True),
        F("isInStock", "product.in_stock", kind="flag"),
        prefix="product.",
    )


PRODUCT_VIEWED = _product("productViewed")
PRODUCT_ADDED_TO_WISHLIST = _product("productAddedToWishlist")
CURRENCY_CODE = F("currencyCode", *CURRENCY)
# Options read on every event, and the currency of product events (for `destinations list`).
EVENT = Table("event", KEY_VALUE, EVENT_TYPE_KEY, CURRENCY_CODE)
PAGE_VIEWED = Table("pageViewed", F("location", "properties.url", "context.page.url", kind="url", required=True),
                    prefix="page.")  # fmt: skip
PRODUCT_CATEGORY_VIEWED = Table(
    "productCategoryViewed", F("productCategoryId", "properties.category", "properties.list_id", required=True),
    prefix="category.",
)  # fmt: skip
CART_UPDATED = Table(
    "cartUpdated",
    F("recycleStateId", *CART_PURCHASE_IDS, required=True),
    F("currencyCode", "properties.currency"),
)
CART_ITEM = Table(
    "cartUpdated",
    F("productId", *PRODUCT_ID, required=True),
    F("quantity", "product.quantity", kind="number", default=1),
    F("price", "product.price", kind="number", required=True),
    F("name", "product.name"),
    F("category", "product.category"),
    F("discount", "product.discount", kind="number"),
    prefix="products[].",
)
SEARCH_REQUEST = Table(
    "searchRequest", F("search", "properties.query", required=True), F("isFound", "properties.is_found", kind="flag")
)
CONTACT = Table("contact", FIRST_NAME, LAST_NAME, F("name", "traits.name"))

# --- contact locators ---------------------------------------------------------------------------


def locators(call: Call) -> Params:
    """email, phone, externalCustomerId (those known, in that order); Filtered when none is."""
    known = [(name, value.strip()) for name, value in call.map(LOCATORS).items() if value.strip()]
    if not known:
        raise Filtered(f"{NO_LOCATOR}; {call.label} has none (traits.email, traits.phone, userId)")
    return known


def event_body(call: Call, key: str, who: Params, params: Params) -> dict[str, Any]:
    """The Generate event v2 body: locators first, then the event's own params; nulls left out.
    Objects and lists (built by the mappers, so already sendable) travel as compact JSON text, as the
    seed shows."""
    key_value = call.read(KEY_VALUE, target="event (keyValue)")
    return {
        "eventTypeKey": key,
        "keyValue": (key_value or "").strip() or who[0][1],
        "params": [
            {"name": name, "value": compact_json(value) if isinstance(value, (dict, list)) else value}
            for name, value in [*who, *params]
            if value is not None
        ],
    }


def event(key: str, read: Callable[[Call], Params]) -> Mapper:
    """A mapper for one of eSputnik's predefined events; the locators are checked before the fields."""

    def mapper(call: Call) -> Mapped:
        who = locators(call)
        return Mapped(EVENT_PATH, event_body(call, key, who, read(call)))

    return mapper


# --- event params, one reader per eSputnik event ------------------------------------------------


def _extended(item: Item, taken: Mapping[str, Any]) -> dict[str, Any]:
    """Product properties in the seed's `someProductProperty: ["green"]` form: lists of strings."""
    return {
        k: v
        for k, v in item.raw.items()
        if isinstance(v, list) and v and k not in taken and all(type(x) is str and not has_surrogate(x) for x in v)
        and not has_surrogate(k)
    }  # fmt: skip


def product_params(table: Table) -> Callable[[Call], Params]:
    def read(call: Call) -> Params:
        item = call.product()
        product = call.map(table, item)
        product.update(_extended(item, product))
        currency = call.read(CURRENCY_CODE, item, f"{table.event} (currencyCode)")
        return [("product", product), ("currencyCode", currency)]

    return read


def page_params(call: Call) -> Params:
    return [("page", call.map(PAGE_VIEWED))]


def category_params(call: Call) -> Params:
    return [("category", call.map(PRODUCT_CATEGORY_VIEWED))]


WHOLE_CART_OPTION = F(WHOLE_CART, f"options.{WHOLE_CART}", kind="bool")
CART_OPTIONS = Table("cartUpdated", WHOLE_CART_OPTION)  # for `destinations list`


def cart_params(call: Call) -> Params:
    # integrations.eSputnik.wholeCart: products[] is the whole cart, whatever else the event carries (the cart
    # the package keeps says so; a client may too).
    whole = call.read(WHOLE_CART_OPTION, target=f"cartUpdated ({WHOLE_CART})") is True
    if not whole and call.event in SINGLE_PRODUCT and call.product().path.startswith("properties.products"):
        # One item and no product id at the top: the product of the event (MAPPINGS "Real traffic"),
        # not the cart; sending it would set the contact's cart to that one item.
        raise Filtered(
            f"{call.label} carries one product in properties.products, not the whole cart that eSputnik "
            "cartUpdated needs; send every cart item in properties.products with the product's own fields "
            "in properties"
        )
    if not call.has_products:
        raise Filtered(
            f"{call.label} without properties.products: eSputnik cartUpdated needs the whole cart; "
            "send every cart item in properties.products (with properties.cart_id) on Product Added, "
            "Product Removed, Cart Viewed or Checkout Started"
        )
    cart = call.map(CART_UPDATED)
    items = []
    for item in call.products:
        product = call.map(CART_ITEM, item)
        product.update(_extended(item, product))
        items.append(product)
    currency = cart.get("currencyCode") or next(
        (c for c in (call.read(CURRENCY_CODE, item) for item in call.products) if c), None
    )
    return [("products", items), ("currencyCode", currency), ("recycleStateId", cart["recycleStateId"])]


def search_params(call: Call) -> Params:
    return list(call.map(SEARCH_REQUEST).items())


def custom_event(call: Call) -> Mapped:
    """Any other track: the event name in lowerCamelCase over ASCII (`custom` before a key that is one of
    eSputnik's own), one param per property; a property never repeats a locator param."""
    who = locators(call)
    key = (call.read(EVENT_TYPE_KEY, target="event (eventTypeKey)") or "").strip() or call.custom_name or ""
    if not key:
        # Letters and digits of the name as sent: an emoji or a currency sign transliterates to words.
        key = lower_camel(call.event) if has_words(call.event) else ""
        if not key:
            raise call.fail(
                "event",
                f"must contain a letter or digit to name an {call.vendor} event (eventTypeKey); "
                f"or set integrations.{call.vendor}.eventTypeKey",
            )
        if key in VENDOR_EVENTS:
            key = f"custom{key[0].upper()}{key[1:]}"
    taken = {name for name, _ in who}
    params = call.flat(call.properties, "properties", "custom event (params)", taken)
    return Mapped(EVENT_PATH, event_body(call, key, who, list(params.items())))


# --- identify -----------------------------------------------------------------------------------


def contact(call: Call) -> Mapped:
    """identify -> the contact API; `traits.name` is split at its first space when no first/last name is given."""
    who = dict(locators(call))
    names = {k: v.strip() for k, v in call.map(CONTACT).items() if v.strip()}
    first_name, last_name = names.get("firstName"), names.get("lastName")
    if first_name is None and last_name is None and names.get("name"):
        head, _, rest = names["name"].partition(" ")
        first_name, last_name = head, rest.strip() or None
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
    return Mapped(CONTACT_PATH, present(body))


EVENTS: dict[str, Mapper] = {
    "Product Viewed": event("productViewed", product_params(PRODUCT_VIEWED)),
    "Product List Viewed": event("productCategoryViewed", category_params),
    "Product Category Viewed": event("productCategoryViewed", category_params),
    "Cart Viewed": event("cartUpdated", cart_params),
    "Checkout Started": event("cartUpdated", cart_params),
    "Product Added": event("cartUpdated", cart_params),
    "Product Removed": event("cartUpdated", cart_params),
    "Product Added to Wishlist": event("productAddedToWishlist", product_params(PRODUCT_ADDED_TO_WISHLIST)),
    "Products Searched": event("searchRequest", search_params),
}


class EsputnikDestination(Destination):
    vendor_events = VENDOR_EVENTS
    enrichments = frozenset({CART})  # cartUpdated needs the whole cart: the package keeps it (carts.py)
    name = "esputnik"
    display_name = "eSputnik"
    Settings = Settings
    calls = {"page": event("pageViewed", page_params), "identify": contact}  # noqa: RUF012
    events = EVENTS
    other_event = custom_event
    fields = (LOCATORS, EVENT, PAGE_VIEWED, PRODUCT_VIEWED, PRODUCT_ADDED_TO_WISHLIST, PRODUCT_CATEGORY_VIEWED,
              CART_OPTIONS, CART_UPDATED, CART_ITEM, SEARCH_REQUEST, CONTACT)  # fmt: skip
    credentials_declared = (Credential("apiKey", header="Authorization", form=basic_auth),)
