"""The shared spec helpers of MAPPINGS.md 'Shared' and 'Real traffic', and the declared-field reader."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from destinations import InvalidMessage
from destinations.fields import (
    CART_TOTAL,
    EMAIL,
    ORDER_TOTAL,
    PRODUCT_ID,
    VARIANT_ID,
    Call,
    F,
    full_name,
    line_item_sum,
    spellings,
)
from destinations.spec import (
    Identify,
    Track,
    as_number,
    canonical_event,
    compact_json,
    integration_setting,
    json_value,
    lower_camel,
    money_sum,
    parse_date,
    parse_message,
    sendable,
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
        ("1e3", 1000),
        ("1.0000", 1),  # integral text is an int (MAPPINGS "Real traffic")
        ("2.0", 2),
        (2.0, 2.0),  # a JSON number stays as sent
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
        (None, (True, {}, "")),
        ({}, (True, {}, "")),
        ({"All": False}, (False, {}, "All")),
        ({"all": False}, (False, {}, "all")),
        ({"ALL": False, "Vendor": True}, (True, {}, "Vendor")),
        ({"All": False, "Vendor": {"imageUrl": "x"}}, (True, {"imageUrl": "x"}, "Vendor")),
        ({"Vendor": False}, (False, {}, "Vendor")),
        ({"vendor": False}, (True, {}, "")),  # keys other than All are matched exactly
        ({"Vendor": "yes"}, (True, {}, "")),  # other values count as absent
        ({"All": "no"}, (True, {}, "")),
        ({"All": False, "Vendor": None}, (False, {}, "All")),
        ("not an object", (True, {}, "")),
    ],
)
def test_integration_setting(integrations: Any, expected: tuple[bool, dict[str, Any], str]) -> None:
    assert integration_setting(integrations, "Vendor") == expected


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Completed Order", "Order Completed"),
        ("completed order", "Order Completed"),
        ("Viewed Product Category", "Product List Viewed"),
        ("order completed", "Order Completed"),
        ("  ORDER   COMPLETED ", "Order Completed"),
        ("checkout started", "Checkout Started"),
        ("product added to wishlist", "Product Added to Wishlist"),
        ("Order Completed", "Order Completed"),
        ("Order_Completed", "Order_Completed"),  # only case and spaces are ignored
        ("Sipariş Tamamlandı", "Sipariş Tamamlandı"),
    ],
)
def test_spec_names_match_as_people_type_them(name: str, canonical: str) -> None:
    assert canonical_event(name) == canonical


def test_message_type_matches_ignoring_case() -> None:
    assert parse_message({"type": "Track", "event": "X", "userId": "u"}).type == "track"
    assert parse_message({"type": " IDENTIFY ", "userId": "u"}).type == "identify"


@pytest.mark.parametrize(
    ("name", "snake", "camel"),
    [
        ("Coupon Applied", "coupon_applied", "couponApplied"),
        ("Order Completed", "order_completed", "orderCompleted"),
        ("checkoutStepViewed", "checkout_step_viewed", "checkoutStepViewed"),
        ("Viewed-FAQ page 2", "viewed_faq_page_2", "viewedFaqPage2"),
        ("already_snake", "already_snake", "alreadySnake"),
        ("AddToCart", "add_to_cart", "addToCart"),
        ("Sipariş Tamamlandı", "sipariş_tamamlandı", "siparisTamamlandi"),
        ("Заказ Оформлен", "заказ_оформлен", "zakazOformlen"),
        ("İade Talebi", "iade_talebi", "iadeTalebi"),
        ("sepetGüncellendi", "sepet_güncellendi", "sepetGuncellendi"),
        ("!!!", "", ""),
    ],
)
def test_event_name_cases(name: str, snake: str, camel: str) -> None:
    assert snake_case(name) == snake
    assert lower_camel(name) == camel


def test_money_sum_has_no_float_noise() -> None:
    assert money_sum([(349.99, 2), (249.99, 1)]) == 949.97
    assert money_sum([(10, 2), (5, 1)]) == 25
    assert isinstance(money_sum([(10, 2)]), int)


def test_flat_encodes_nested_values_and_drops_nulls() -> None:
    call = track({})
    values = {"a": 1, "b": None, "c": {"x": [1, 2]}, "d": ["p", "q"], "e": "text", "f": False, "g": float("nan")}
    assert call.flat(values, "properties", "T (params)") == {
        "a": 1,
        "c": '{"x":[1,2]}',
        "d": '["p","q"]',
        "e": "text",
        "f": False,
    }
    assert call.warnings == []


def test_values_that_cannot_be_sent_are_left_out_with_a_warning_naming_the_place() -> None:
    deep: Any = "x"
    for _ in range(40):
        deep = {"d": deep}
    call = track({})
    values = {"ok": 1, "note": "bad \udc80 text", "list": [1, {"k": "\ud800"}], "deep": deep, "\ud801": 2}
    assert call.passthrough(values, "properties", "T (params)") == {"ok": 1}
    assert [w.path for w in call.warnings] == [
        "properties.note", "properties.list[1].k", "properties.deep" + ".d" * 31, "properties"
    ]  # fmt: skip
    assert all((w.vendor, w.target, w.field) == ("Vendor", "T (params)", "T.params") for w in call.warnings)
    assert "more than 32 levels" in call.warnings[2].rule


def test_sendable_keeps_what_json_can_hold() -> None:
    assert sendable({"a": [1, 2.5, None, True, "é"], "b": float("inf")}) == {"a": [1, 2.5, None, True, "é"], "b": None}


def test_spellings_put_the_other_spelling_after_each_source() -> None:
    assert spellings("properties.order_id", "context.page.url") == (
        "properties.order_id", "properties.orderId", "context.page.url"
    )  # fmt: skip
    assert spellings("traits.address.postal_code") == (
        "traits.address.postal_code", "traits.address.postalCode",
        "context.traits.address.postal_code", "context.traits.address.postalCode",
    )  # fmt: skip
    assert spellings("product.imageXS") == ("product.imageXS", "product.image_xs")
    assert spellings("options.image_url") == ("options.image_url", "options.imageUrl")
    assert spellings(*PRODUCT_ID)[:3] == ("product.product_id", "product.productId", "product.id")


PRICE = F("price", "product.price", kind="number")
QUANTITY = F("quantity", "product.quantity", kind="number", default=1)
IMAGE = F("image", "product.image_url", "options.image_url")
IN_STOCK = F("inStock", "product.in_stock", kind="bool")
PRODUCT = F("productId", *PRODUCT_ID, required=True)


def test_product_fields_and_fallbacks() -> None:
    call = track({"productId": "P1", "price": " 10.5 ", "imageUrl": "https://i/1.png", "inStock": "true"})
    item = call.product()
    assert item.path == "properties"
    got = [call.read(f, item) for f in (PRODUCT, PRICE, QUANTITY, IMAGE, IN_STOCK, F("v", *VARIANT_ID))]
    assert got == ["P1", 10.5, 1, "https://i/1.png", True, "P1"]
    assert call.read(PRODUCT, track({"sku": "SKU-9"}).product()) == "SKU-9"
    assert call.read(PRODUCT, track({"product_id": 42}).product()) == "42"
    assert call.read(IMAGE, track({}, integrations={}).product()) is None
    with_option = call_for({"type": "track", "event": "X", "userId": "u"}, {"imageUrl": "https://o/1.png"})
    assert with_option.read(IMAGE) == "https://o/1.png"


def test_one_product_wherever_it_sits() -> None:
    one = track({"currency": "EUR", "products": [{"product_id": "p1", "price": 5}]})
    assert one.product().path == "properties.products[0]"
    assert one.read(PRICE) == 5
    as_object = track({"products": {"productId": "p2"}})
    assert as_object.product().path == "properties.products"
    assert as_object.read(PRODUCT) == "p2"
    own_id = track({"product_id": "top", "products": [{"product_id": "p1"}]})
    assert own_id.read(PRODUCT) == "top"
    several = track({"products": [{"product_id": "a"}, {"product_id": "b"}]})
    with pytest.raises(InvalidMessage, match=r"properties\.product_id is required .* to tell which product is meant"):
        several.product()


def test_an_optional_value_that_cannot_be_read_is_a_warning_a_required_one_an_error() -> None:
    call = track({"products": [{"product_id": "a", "price": 1}, {"product_id": "b", "price": "cheap"}]})
    assert call.read(PRICE, call.products[0]) == 1
    assert call.read(PRICE, call.products[1], "CHECKOUT (price)") is None
    (warning,) = call.warnings
    assert str(warning) == (
        "Order Completed: properties.products[1].price must be a number (got 'cheap'); "
        "left out of Vendor CHECKOUT (price)"
    )
    required = F("price", "product.price", kind="number", required=True)
    with pytest.raises(
        InvalidMessage, match=r"^Order Completed: properties\.products\[1\]\.price must be a number .* requires it"
    ):
        call.read(required, call.products[1], "CHECKOUT (price)")


def test_errors_name_the_path_actually_read() -> None:
    required = F("orderId", "properties.order_id", required=True)
    with pytest.raises(InvalidMessage, match=r"^Order Completed: properties\.orderId must be text"):
        track({"orderId": ["x"]}).read(required)
    with pytest.raises(InvalidMessage, match=r"^Order Completed: properties\.order_id is required by Vendor T"):
        track({}).read(required, target="T")


def test_products_must_be_a_list_of_objects() -> None:
    with pytest.raises(InvalidMessage, match=r"properties\.products must be a list of objects"):
        _ = track({"products": "a"}).products
    with pytest.raises(InvalidMessage, match=r"properties\.products\[0\] must be an object"):
        _ = track({"products": ["a"]}).products


@pytest.mark.parametrize(
    ("properties", "order", "cart"),
    [
        ({"total": "99.5", "revenue": 80}, 99.5, 99.5),
        ({"revenue": 80, "value": 70}, 80, 70),
        ({"value": 70}, 70, 70),
        ({"products": [{"price": 349.99, "quantity": 2}, {"price": 249.99}, {"product_id": "free"}]}, 949.97, 949.97),
        ({"products": [{"product_id": "no price"}]}, None, None),
        ({}, None, None),
    ],
)
def test_totals_by_event(properties: dict[str, Any], order: Any, cart: Any) -> None:
    assert track(properties).read(F("t", *ORDER_TOTAL, kind="number", default=line_item_sum)) == order
    assert track(properties).read(F("t", *CART_TOTAL, kind="number", default=line_item_sum)) == cart


def test_traits_on_every_call_traits_winning() -> None:
    ident = call_for({"type": "identify", "userId": "u", "traits": {"email": "a@x.io"}})
    assert isinstance(ident.message, Identify)
    assert ident.read(F("email", *EMAIL)) == "a@x.io"
    rudder = call_for({"type": "identify", "userId": "u", "context": {"traits": {"email": "c@x.io", "phone": "1"}}})
    assert rudder.read(F("email", *EMAIL)) == "c@x.io"
    both = call_for(
        {
            "type": "identify",
            "userId": "u",
            "traits": {"email": "t@x.io"},
            "context": {"traits": {"email": "c@x.io", "phone": "1"}},
        }
    )
    assert both.traits == {"email": "t@x.io", "phone": "1"}
    assert both.trait_path("email") == "traits.email"
    assert both.trait_path("phone") == "context.traits.phone"
    tr = track({"email": "prop@x.io"}, context={"traits": {"email": "ctx@x.io"}})
    assert isinstance(tr.message, Track)
    assert tr.read(F("email", *EMAIL)) == "ctx@x.io"
    assert track({"email": "prop@x.io"}).read(F("email", *EMAIL)) == "prop@x.io"


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"firstName": "Ada", "lastName": "Lovelace"}, "Ada Lovelace"),
        ({"first_name": "Ada", "last_name": "Lovelace"}, "Ada Lovelace"),
        ({"firstName": "Ada"}, "Ada"),
        ({"last_name": "Lovelace"}, "Lovelace"),
        ({}, None),
    ],
)
def test_full_name(traits: dict[str, Any], expected: str | None) -> None:
    assert full_name(call_for({"type": "identify", "userId": "u", "traits": traits})) == expected


def test_message_time_precedence_and_zones() -> None:
    call = call_for(
        {
            "type": "page",
            "userId": "u",
            "sentAt": "2026-01-02T00:00:00Z",
            "originalTimestamp": "2026-01-01T23:30:00-02:00",
        }
    )
    assert call.time("T") == datetime(2026, 1, 2, 1, 30, tzinfo=timezone.utc)
    nanos = call_for({"type": "page", "userId": "u", "timestamp": "2026-01-01T10:00:00.123456789Z"})
    assert nanos.time("T") == datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert call_for({"type": "page", "userId": "u"}).time("T") is None


def test_only_the_first_present_time_is_checked() -> None:
    call = call_for({"type": "page", "userId": "u", "timestamp": "2026-01-01T10:00:00Z", "originalTimestamp": "x"})
    assert call.time("T", required=True) == datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
    bad = call_for({"type": "page", "userId": "u", "timestamp": "yesterday", "sentAt": "2026-01-01T10:00:00Z"})
    assert bad.time("T") is None
    assert [w.path for w in bad.warnings] == ["timestamp"]
    with pytest.raises(InvalidMessage, match=r"^page: timestamp must be an ISO-8601 date-time, and Vendor T needs it"):
        bad.time("T", required=True)


@pytest.mark.parametrize("moment", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_times_without_a_utc_form_are_unreadable(moment: str) -> None:
    call = call_for({"type": "page", "userId": "u", "timestamp": moment})
    with pytest.raises(InvalidMessage, match=r"^page: timestamp is outside the years 1 to 9999"):
        call.time("T", required=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-05-17", date(1990, 5, 17)),
        ("1990-05-17T23:30:00-05:00", date(1990, 5, 17)),  # the date as written
        (1700000000, date(2023, 11, 14)),  # epoch seconds
        (1700000000000, date(2023, 11, 14)),  # milliseconds above 10^11
        ("1700000000", date(2023, 11, 14)),
        (0, date(1970, 1, 1)),
    ],
)
def test_dates_from_text_or_epoch(value: Any, expected: date) -> None:
    assert parse_date(value) == expected


@pytest.mark.parametrize("value", ["17/05/1990", "soon", True, 10**20, [1]])
def test_dates_that_cannot_be_read(value: Any) -> None:
    with pytest.raises(ValueError, match=r"must be|epoch"):
        parse_date(value)


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        ([], r"^message: must be a JSON object, not list$"),
        ({"userId": "u"}, r"^message: type is required"),
        ({"type": "purchase", "userId": "u"}, r"^message: type must be one of track, page"),
        ({"type": "track", "userId": "u"}, r"^track: event is required"),
        ({"type": "track", "event": "  ", "userId": "u"}, r"^track: event must not be empty"),
        ({"type": "track", "event": "X", "userId": "u-\ud800"}, r"^X: userId holds a lone surrogate"),
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
    assert m.context == {}


def test_numeric_ids_become_text_and_blank_ids_are_absent() -> None:
    m = parse_message({"type": "identify", "userId": 12345, "anonymousId": "  "})
    assert m.userId == "12345"
    assert m.anonymousId is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),  # past 64 bits
        ('{"n": -9223372036854775809}', {"n": -9223372036854775809}),  # below -2**63
        ('{"n": 9223372036854775807}', {"n": 9223372036854775807}),  # 19 digits: read by the stdlib all the same
        ('{"s": "1234567890123456789012"}', {"s": "1234567890123456789012"}),  # digits in text stay text
        ('{"s": "\\ud800"}', {"s": "\ud800"}),  # a lone surrogate, which orjson refuses
        ("[1.5, 2]", [1.5, 2]),
    ],
)
def test_json_values_are_read_exactly(text: str, value: Any) -> None:
    assert json_value(text) == value
    assert json_value(text.encode()) == value
    got = json_value(text)
    assert type(got) is type(value)
    if isinstance(value, dict) and "n" in value:
        assert type(got["n"]) is int


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', '{"n": -Infinity, "m": 12345678901234567890}', "{", ""])
def test_json_value_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not JSON|Expecting value|Expecting property name"):
        json_value(text)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON)
@settings(max_examples=300, deadline=None)
def test_compact_json_writes_what_the_stdlib_writes(value: Any) -> None:
    """`compact_json` keeps one C encoder made from the stdlib's private maker: its text must stay the stdlib's."""
    assert compact_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
