"""The shared spec helpers of MAPPINGS.md 'Shared'."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from destinations import InvalidMessage
from destinations.spec import (
    Call,
    Identify,
    Track,
    as_number,
    canonical_event,
    flat_map,
    integration_setting,
    lower_camel,
    money_sum,
    parse_message,
    snake_case,
)


def call_for(message: dict[str, Any], options: dict[str, Any] | None = None) -> Call:
    return Call(parse_message(message), options or {}, None, "Vendor")


def track(properties: dict[str, Any], **extra: Any) -> Call:
    return call_for({"type": "track", "event": "Order Completed", "userId": "u1", "properties": properties, **extra})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3),
        (2.5, 2.5),
        ("12", 12),
        (" 12 ", 12),
        ("-4", -4),
        ("349.99", 349.99),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("abc", None),
        ("", None),
        ("1_000", None),
        ("NaN", None),
        ("inf", None),
        (float("nan"), None),
        (float("inf"), None),
        (True, None),
        (False, None),
        (None, None),
        ([1], None),
        ({"a": 1}, None),
    ],
)
def test_as_number(value: Any, expected: Any) -> None:
    got = as_number(value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("integrations", "expected"),
    [
        (None, (True, {})),
        ({}, (True, {})),
        ({"All": False}, (False, {})),
        ({"all": False}, (False, {})),
        ({"ALL": False, "Vendor": True}, (True, {})),
        ({"All": False, "Vendor": {"imageUrl": "x"}}, (True, {"imageUrl": "x"})),
        ({"Vendor": False}, (False, {})),
        ({"vendor": False}, (True, {})),  # keys other than All are matched exactly
        ({"Vendor": "yes"}, (True, {})),  # other values count as absent
        ({"All": "no"}, (True, {})),
        ({"All": False, "Vendor": None}, (False, {})),
        ("not an object", (True, {})),
    ],
)
def test_integration_setting(integrations: Any, expected: tuple[bool, dict[str, Any]]) -> None:
    assert integration_setting(integrations, "Vendor") == expected


def test_v1_aliases_are_matched_exactly() -> None:
    assert canonical_event("Completed Order") == "Order Completed"
    assert canonical_event("Viewed Product Category") == "Product List Viewed"
    assert canonical_event("completed order") == "completed order"
    assert canonical_event("Order Completed") == "Order Completed"


@pytest.mark.parametrize(
    ("name", "snake", "camel"),
    [
        ("Coupon Applied", "coupon_applied", "couponApplied"),
        ("Order Completed", "order_completed", "orderCompleted"),
        ("checkoutStepViewed", "checkout_step_viewed", "checkoutStepViewed"),
        ("Viewed-FAQ page 2", "viewed_faq_page_2", "viewedFaqPage2"),
        ("already_snake", "already_snake", "alreadySnake"),
    ],
)
def test_event_name_cases(name: str, snake: str, camel: str) -> None:
    assert snake_case(name) == snake
    assert lower_camel(name) == camel


def test_money_sum_has_no_float_noise() -> None:
    assert money_sum([(349.99, 2), (249.99, 1)]) == 949.97
    assert money_sum([(10, 2), (5, 1)]) == 25
    assert isinstance(money_sum([(10, 2)]), int)


def test_flat_map_encodes_nested_values_and_drops_nulls() -> None:
    assert flat_map({"a": 1, "b": None, "c": {"x": [1, 2]}, "d": ["p", "q"], "e": "text", "f": False}) == {
        "a": 1,
        "c": '{"x":[1,2]}',
        "d": '["p","q"]',
        "e": "text",
        "f": False,
    }


def test_product_fields_and_fallbacks() -> None:
    call = track({"productId": "P1", "price": " 10.5 ", "imageUrl": "https://i/1.png", "inStock": "true"})
    p = call.product()
    assert p.path == "properties"
    assert (p.id, p.price, p.quantity, p.image_url, p.in_stock, p.variant_id) == (
        "P1",
        10.5,
        1,
        "https://i/1.png",
        True,
        "P1",
    )
    assert track({"sku": "SKU-9"}).product().id == "SKU-9"
    assert track({"product_id": 42}).product().id == "42"
    assert track({"product_id": "P", "variant_id": "V"}).product().variant_id == "V"


def test_product_currency_falls_back_to_the_event() -> None:
    call = track({"currency": "EUR", "products": [{"product_id": "a"}, {"product_id": "b", "currency": "USD"}]})
    assert [p.currency for p in call.products] == ["EUR", "USD"]


def test_bad_price_names_the_item_path() -> None:
    call = track({"products": [{"product_id": "a", "price": 1}, {"product_id": "b", "price": "cheap"}]})
    assert call.products[0].price == 1
    with pytest.raises(InvalidMessage, match=r"^Order Completed: properties\.products\[1\]\.price must be a number"):
        _ = call.products[1].price


def test_products_must_be_a_list_of_objects() -> None:
    with pytest.raises(InvalidMessage, match=r"properties\.products must be a list of objects"):
        _ = track({"products": {"product_id": "a"}}).products
    with pytest.raises(InvalidMessage, match=r"properties\.products\[0\] must be an object"):
        _ = track({"products": ["a"]}).products


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"total": "99.5", "revenue": 80}, 99.5),
        ({"revenue": 80, "value": 70}, 80),
        ({"value": 70}, 70),
        ({"products": [{"price": 349.99, "quantity": 2}, {"price": 249.99}, {"product_id": "free"}]}, 949.97),
        ({"products": [{"product_id": "no price"}]}, None),
        ({}, None),
    ],
)
def test_order_total(properties: dict[str, Any], expected: Any) -> None:
    assert track(properties).order_total("order (total)") == expected


def test_order_total_that_is_not_a_number_is_an_error() -> None:
    with pytest.raises(InvalidMessage, match=r"^Order Completed: properties\.revenue must be a number"):
        track({"revenue": "lots"}).order_total("order (total)")


def test_traits_come_from_traits_on_identify_and_context_traits_elsewhere() -> None:
    ident = call_for({"type": "identify", "userId": "u", "traits": {"email": "a@x.io"}})
    assert isinstance(ident.message, Identify)
    assert ident.email == "a@x.io"
    tr = track({"email": "prop@x.io"}, context={"traits": {"email": "ctx@x.io"}})
    assert isinstance(tr.message, Track)
    assert tr.email == "ctx@x.io"
    assert track({"email": "prop@x.io"}).email == "prop@x.io"


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"name": "Ada Lovelace", "firstName": "X"}, "Ada Lovelace"),
        ({"firstName": "Ada", "lastName": "Lovelace"}, "Ada Lovelace"),
        ({"first_name": "Ada", "last_name": "Lovelace"}, "Ada Lovelace"),
        ({"firstName": "Ada"}, "Ada"),
        ({"last_name": "Lovelace"}, "Lovelace"),
        ({}, None),
    ],
)
def test_full_name(traits: dict[str, Any], expected: str | None) -> None:
    assert call_for({"type": "identify", "userId": "u", "traits": traits}).full_name == expected


def test_message_time_precedence_and_zones() -> None:
    call = call_for(
        {
            "type": "page",
            "userId": "u",
            "sentAt": "2026-01-02T00:00:00Z",
            "originalTimestamp": "2026-01-01T23:30:00-02:00",
        }
    )
    assert call.time == datetime(2026, 1, 2, 1, 30, tzinfo=timezone.utc)
    nanos = call_for({"type": "page", "userId": "u", "timestamp": "2026-01-01T10:00:00.123456789Z"})
    assert nanos.time == datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert call_for({"type": "page", "userId": "u"}).time is None


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        ([], r"^message: must be a JSON object, not list$"),
        ({"userId": "u"}, r"^message: type is required"),
        ({"type": "purchase", "userId": "u"}, r"^message: type must be one of track, page"),
        ({"type": "track", "userId": "u"}, r"^track: event is required"),
        ({"type": "track", "event": "  ", "userId": "u"}, r"^track: event must not be empty"),
        (
            {"type": "track", "event": "X", "userId": "u", "timestamp": "yesterday"},
            r"^X: timestamp must be an ISO-8601",
        ),
        ({"type": "track", "event": "X", "userId": "u", "context": {"page": "home"}}, r"^X: context\.page must be an"),
        ({"type": "track", "event": "X", "userId": "u", "properties": [1]}, r"^X: properties must be an object"),
        ({"type": "identify", "userId": {"id": 1}}, r"^identify: userId must be a string"),
    ],
)
def test_parse_errors_name_the_event_and_path(message: Any, pattern: str) -> None:
    with pytest.raises(InvalidMessage, match=pattern):
        parse_message(message)


def test_nulls_where_segment_libraries_send_them() -> None:
    m = parse_message(
        {
            "type": "track",
            "event": "X",
            "userId": None,
            "anonymousId": "a1",
            "context": None,
            "properties": None,
            "integrations": None,
            "timestamp": None,
        }
    )
    assert m.userId is None
    assert m.anonymousId == "a1"
    assert m.context.traits == {}


def test_numeric_ids_become_text_and_blank_ids_are_absent() -> None:
    m = parse_message({"type": "identify", "userId": 12345, "anonymousId": "  "})
    assert m.userId == "12345"
    assert m.anonymousId is None
