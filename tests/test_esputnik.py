"""eSputnik beyond the fixtures: secrets, settings errors, locator order and the JSON-string params."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from destinations import ConfigurationError, Filtered, InvalidMessage, get_destination
from destinations.base import Destination
from destinations.demo import shop_session

SECRET = "es-live-0123456789abcdef"  # a made-up key the tests look for
TOKEN = base64.b64encode(f"destinations:{SECRET}".encode()).decode()

TRAITS = {"email": "jane@example.com", "phone": "+380501234567"}
CART = {"cart_id": "cart-1", "products": [{"product_id": "EP-1", "price": 10, "quantity": 2}]}

# One message per mapped event: (message, eventTypeKey, the event's own param names in order).
MAPPED: list[tuple[dict[str, Any], str, list[str]]] = [
    ({"type": "page", "properties": {"url": "https://shop.example.com/"}}, "pageViewed", ["page"]),
    (
        {"type": "track", "event": "Product Viewed", "properties": {"product_id": "P1", "price": 1, "currency": "EUR"}},
        "productViewed",
        ["product", "currencyCode"],
    ),
    (
        {"type": "track", "event": "Product List Viewed", "properties": {"category": "Mugs"}},
        "productCategoryViewed",
        ["category"],
    ),
    (
        {"type": "track", "event": "Product Category Viewed", "properties": {"list_id": "mugs"}},
        "productCategoryViewed",
        ["category"],
    ),
    (
        {"type": "track", "event": "Cart Viewed", "properties": {**CART, "currency": "EUR"}},
        "cartUpdated",
        ["products", "currencyCode", "recycleStateId"],
    ),
    ({"type": "track", "event": "Checkout Started", "properties": CART}, "cartUpdated", ["products", "recycleStateId"]),
    # The product's own fields at the top, the whole cart in products[] (a lone item would be the product).
    (
        {"type": "track", "event": "Product Added", "properties": {"product_id": "EP-1", **CART}},
        "cartUpdated",
        ["products", "recycleStateId"],
    ),
    (
        {"type": "track", "event": "Product Removed", "properties": {"product_id": "EP-2", **CART}},
        "cartUpdated",
        ["products", "recycleStateId"],
    ),
    (
        {"type": "track", "event": "Product Added to Wishlist", "properties": {"product_id": "P1", "price": 1}},
        "productAddedToWishlist",
        ["product"],
    ),
    (
        {"type": "track", "event": "Products Searched", "properties": {"query": "mug", "is_found": 1}},
        "searchRequest",
        ["search", "isFound"],
    ),
    (
        {"type": "track", "event": "Order Completed", "properties": {"order_id": "o1", "products": [{"id": "x"}]}},
        "orderCompleted",
        ["order_id", "products"],
    ),
]


def esputnik(**settings: Any) -> Destination:
    return get_destination("esputnik", {"apiKey": SECRET, **settings})


def with_user(message: dict[str, Any], traits: dict[str, Any] | None = None, **ids: Any) -> dict[str, Any]:
    ids = ids or {"userId": "u1"}
    return {**message, **ids, "context": {"traits": dict(TRAITS if traits is None else traits)}}


# --- secrets ------------------------------------------------------------------------------------


def test_secret_never_in_reprs() -> None:
    destination = esputnik()
    assert SECRET not in repr(destination)
    assert SECRET not in str(destination.settings)
    (request,) = destination.handle(with_user(MAPPED[0][0]))
    for text in (repr(request), str(request)):
        assert SECRET not in text
        assert TOKEN not in text


def test_authorization_is_basic_with_the_api_key_as_password() -> None:
    (request,) = esputnik().handle(with_user(MAPPED[0][0]))
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(token).decode().partition(":")
    assert (user, password) == ("destinations", SECRET)
    assert request.to_dict()["headers"]["Authorization"] == f"Basic {TOKEN}"  # to_dict() is what is sent


@pytest.mark.parametrize(
    "message",
    [
        {"type": "track", "event": "Product Viewed", "userId": "u1", "properties": {"price": "x"}},
        {"type": "track", "event": "Cart Viewed", "userId": "u1", "properties": {"products": [{"id": "p"}]}},
        {"type": "track", "event": "Product Added", "userId": "u1"},
        {"type": "track", "event": "Anything", "anonymousId": "a1"},
        {"type": "page", "userId": "u1"},
        {"type": "screen", "userId": "u1"},
        {"type": "track", "event": "!!!", "userId": "u1"},
        {"type": "identify", "userId": "u1", "integrations": {"eSputnik": False}},
    ],
)
def test_secret_never_in_error_texts(message: dict[str, Any]) -> None:
    with pytest.raises((InvalidMessage, Filtered)) as info:
        esputnik().handle(message)
    for text in (str(info.value), repr(info.value)):
        assert SECRET not in text
        assert TOKEN not in text


# --- settings -----------------------------------------------------------------------------------


def test_missing_api_key_is_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_destination("esputnik", {})
    assert "apiKey is required" in str(info.value)
    assert info.value.problems == ["apiKey is required"]


def test_settings_errors_name_each_key_without_the_secret() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_destination("esputnik", {"apiKey": SECRET, "baseUrl": f"esputnik.com/{SECRET}", "apikey": SECRET})
    text = str(info.value)
    assert "baseUrl must be an http(s) URL" in text
    assert "apikey is not a setting" in text
    assert SECRET not in text
    assert SECRET not in repr(info.value)


def test_blank_api_key_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="apiKey must not be empty"):
        get_destination("esputnik", {"apiKey": "   "})


def test_settings_description() -> None:
    described = {s["name"]: s for s in type(esputnik()).describe_settings()}
    assert described["apiKey"] == {"name": "apiKey", "required": True, "secret": True}
    assert described["baseUrl"] == {"name": "baseUrl", "required": False, "secret": False}
    assert esputnik().settings.baseUrl == "https://esputnik.com"


# --- params -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "key", "own"), MAPPED, ids=[m[1] + "-" + str(i) for i, m in enumerate(MAPPED)])
def test_locators_come_first_in_order_then_the_event_params(message: dict[str, Any], key: str, own: list[str]) -> None:
    (request,) = esputnik().handle(with_user(message))
    body = request.json
    assert request.url == "https://esputnik.com/api/v2/event"
    assert body["eventTypeKey"] == key
    assert body["keyValue"] == "jane@example.com"
    assert [p["name"] for p in body["params"]] == ["email", "phone", "externalCustomerId", *own]
    assert [p["value"] for p in body["params"][:3]] == ["jane@example.com", "+380501234567", "u1"]


@pytest.mark.parametrize(
    ("traits", "ids", "names", "key_value"),
    [
        ({"phone": "+380501234567"}, {"userId": "u1"}, ["phone", "externalCustomerId"], "+380501234567"),
        ({"email": "jane@example.com"}, {"anonymousId": "a1"}, ["email"], "jane@example.com"),
        ({}, {"userId": "u1", "anonymousId": "a1"}, ["externalCustomerId"], "u1"),
        ({"email": "", "phone": " "}, {"userId": "u1"}, ["externalCustomerId"], "u1"),
    ],
)
def test_key_value_follows_email_phone_user_id(
    traits: dict[str, Any], ids: dict[str, Any], names: list[str], key_value: str
) -> None:
    (request,) = esputnik().handle(with_user(MAPPED[0][0], traits, **ids))
    assert [p["name"] for p in request.json["params"]] == [*names, "page"]
    assert request.json["keyValue"] == key_value


@pytest.mark.parametrize(("message", "key", "own"), MAPPED, ids=[m[1] + "-" + str(i) for i, m in enumerate(MAPPED)])
def test_no_locator_is_filtered_for_every_event(message: dict[str, Any], key: str, own: list[str]) -> None:
    with pytest.raises(Filtered, match="eSputnik needs a contact locator: email, phone or userId"):
        esputnik().handle(with_user(message, {}, anonymousId="a1"))


def test_object_and_list_params_are_compact_json_strings() -> None:
    for message, _, _ in MAPPED:
        (request,) = esputnik().handle(with_user(message))
        for param in request.json["params"]:
            value = param["value"]
            assert not isinstance(value, dict | list), param
            if isinstance(value, str) and value[:1] in "[{":
                decoded = json.loads(value)
                assert json.dumps(decoded, separators=(",", ":"), ensure_ascii=False) == value
        json.dumps(request.to_dict(), allow_nan=False)  # the whole request is plain JSON


def test_cart_items_decode_to_the_products() -> None:
    message = with_user(
        {
            "type": "track",
            "event": "Cart Viewed",
            "properties": {
                "cart_id": "c1",
                "products": [
                    {"product_id": "A", "price": "1.5", "quantity": "3", "sizes": ["M", "L"], "tags": [1, 2]},
                    {"sku": "B", "price": 2, "name": "Bee", "discount": 0.5},
                ],
            },
        }
    )
    (request,) = esputnik().handle(message)
    products = next(p["value"] for p in request.json["params"] if p["name"] == "products")
    assert json.loads(products) == [
        {"productId": "A", "quantity": 3, "price": 1.5, "sizes": ["M", "L"]},
        {"productId": "B", "quantity": 1, "price": 2, "name": "Bee", "discount": 0.5},
    ]


def test_product_added_with_one_item_and_no_product_id_is_the_product_not_the_cart() -> None:
    # Real traffic: one item in products[] is the event's product; cartUpdated with it would empty the rest.
    message = with_user({"type": "track", "event": "Product Removed", "properties": CART})
    with pytest.raises(Filtered, match=r"carries one product in properties.products, not the whole cart"):
        esputnik().handle(message)


def test_bad_discount_is_left_out_with_a_warning_never_a_silent_zero() -> None:
    message = with_user(
        {
            "type": "track",
            "event": "Cart Viewed",
            "properties": {"cart_id": "c1", "products": [{"id": "A", "price": 1, "discount": "ten"}]},
        }
    )
    (request,), warnings = esputnik().handle_with_warnings(message)
    products = json.loads(next(p["value"] for p in request.json["params"] if p["name"] == "products"))
    assert products == [{"productId": "A", "quantity": 1, "price": 1}]
    assert [(w.path, w.vendor, w.target, w.field) for w in warnings] == [
        (
            "properties.products[0].discount",
            "eSputnik",
            "cartUpdated (products[].discount)",
            "cartUpdated.products[].discount",
        )
    ]
    assert "must be a number (got 'ten')" in str(warnings[0])


def test_event_type_key_option_that_is_not_text_gives_way_to_the_name() -> None:
    message = with_user({"type": "track", "event": "Custom", "integrations": {"eSputnik": {"eventTypeKey": ["x"]}}})
    (request,), warnings = esputnik().handle_with_warnings(message)
    assert request.json["eventTypeKey"] == "custom"
    assert [w.path for w in warnings] == ["integrations.eSputnik.eventTypeKey"]


def test_identify_goes_to_the_contact_api() -> None:
    message = {"type": "identify", "userId": "u1", "traits": {**TRAITS, "firstName": "Jane", "lastName": "Doe"}}
    (request,) = esputnik(baseUrl="https://esputnik.example.com").handle(message)
    assert request.url == "https://esputnik.example.com/api/v1/contact"
    assert request.json["channels"] == [
        {"type": "email", "value": "jane@example.com"},
        {"type": "sms", "value": "+380501234567"},
    ]


def test_handle_is_deterministic_and_the_shop_session_maps() -> None:
    destination = esputnik()
    sent = []
    for message in shop_session(1):
        first = [r.to_dict() for r in destination.handle(message)]
        assert first == [r.to_dict() for r in destination.handle(message)]
        sent += [r["json"].get("eventTypeKey", "contact") for r in first]
    assert sent == [
        "contact",
        "pageViewed",
        "productCategoryViewed",
        "productViewed",
        "cartUpdated",
        "cartUpdated",
        "cartUpdated",
        "cartUpdated",
        "orderCompleted",
        "couponApplied",
    ]
