"""The straight-line code made from the declared fields (fields.py `_straight_line`, `_straight_read`, and the
declared bodies' code on raw messages, `Body.fast`) against the general reader: on every fixture and on generated
messages, both give the same requests (their bodies' JSON text too, key order and all), warnings and errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_robustness import BASES, SAMPLE_SETTINGS, _mutate, _paths, messages

from destinations import Filtered, InvalidMessage, base, fields, get_destination
from destinations.base import Mapped
from destinations.conformance import find_cases
from destinations.registry import BUILT_IN
from destinations.spec import parse_message, plain_parts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@contextmanager
def general_path() -> Iterator[None]:
    fields.FAST_PATHS = False
    try:
        yield
    finally:
        fields.FAST_PATHS = True


def outcome(destination: Any, message: Any) -> tuple[str, Any, list[str], list[str]]:
    """What handle does with a message, in comparable form."""
    try:
        requests, warnings = destination.handle_with_warnings(message)
    except InvalidMessage as exc:
        return "error", (str(exc), exc.path, exc.internal), [], []
    except Filtered as exc:
        return "filtered", exc.reason, [], []
    # The bodies as the outbox stores them: the same dict with its keys in another order is another text.
    texts = [json.dumps(r.json, ensure_ascii=False) for r in requests]
    return "requests", [r.to_dict() for r in requests], [str(w) for w in warnings], texts


def both(destination: Any, message: Any) -> tuple[Any, Any]:
    fast = outcome(destination, message)
    with general_path():
        general = outcome(destination, message)
    return fast, general


CASES = find_cases([FIXTURES])


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_every_fixture_maps_the_same_on_both_paths(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    destination = get_destination(case.get("destination") or path.parent.name, case.get("settings"))
    fast, general = both(destination, case["message"])
    assert fast == general


def test_the_switch_reaches_the_general_path() -> None:
    """The comparison means something only if the switch really turns the straight-line code off."""
    calls = []
    real = fields.Call._read

    def counting(self: Any, *args: Any) -> Any:
        calls.append(1)
        return real(self, *args)

    destination = get_destination("segmentify", SAMPLE_SETTINGS["segmentify"])
    message = BASES[0]
    fields.Call._read = counting  # type: ignore[method-assign]
    try:
        destination.handle_with_warnings(message)
        fast_calls = len(calls)
        with general_path():
            destination.handle_with_warnings(message)
    finally:
        fields.Call._read = real  # type: ignore[method-assign]
    assert len(calls) - fast_calls > 3 * max(fast_calls, 1)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=st.one_of(messages, st.sampled_from(BASES)), name=st.sampled_from(sorted(BUILT_IN)))
def test_generated_messages_map_the_same_on_both_paths(message: Any, name: str) -> None:
    destination = get_destination(name, SAMPLE_SETTINGS[name])
    fast, general = both(destination, message)
    assert fast == general


# Segmentify's declared bodies (page, product, basket, checkout, user operations) on raw messages: the shop session
# with a session id of the client's, and as it came (the session then derived from the message time).
DECLARED = {"page", "Product Viewed", "Product Added", "Checkout Started", "Order Completed"}
PLAIN = [m for m in BASES if (m.get("event") or m["type"]) in DECLARED]
PLAIN += [{**m, "context": {**m["context"], "sessionId": "sess-1"}} for m in PLAIN]
BODY_SETTINGS = [
    ("segmentify", SAMPLE_SETTINGS["segmentify"]),
    ("dengage", {**SAMPLE_SETTINGS["dengage"], "device": "MOBILE", "testMode": True, "origin": "https://shop.example"}),
]
# Values at the edges of what the body code takes as it is: blank and spaced text, non-ASCII text and a lone
# surrogate, numbers as ids and prices, booleans, nulls, objects and lists where text is read, odd times.
EDGE_VALUES = [None, "", " ", " x ", "x", "İstanbul", "\ud800", 0, 7, -1, 2.5, float("nan"), 10**30, True, False, [],
               {}, ["x"], {"a": 1}, "2026-11-20T10:00:00Z", "not a date", "https://shop.example/p", "http://[::1",
               "mobile", "Mobile", "ios", "iOS", "Android", "TABLET", " pc "]  # fmt: skip
# The device's signs present, so that mutations reach them too.
PLAIN += [
    {**m, "context": {**m["context"], "os": {"name": "Android"}, "device": {"type": "Tablet"}}} for m in PLAIN[:3]
]


def body_code_takes(destination: Any, message: Any) -> bool:
    """Whether the declared body's straight-line code maps the message itself (else the general path does)."""
    return destination._fast_map(message) is not None


def test_the_body_code_maps_plain_messages_and_leaves_the_rest() -> None:
    """The comparisons mean something only if the body code maps plain messages itself: every declared event of
    the session, with the client's session id and with one derived from the time, and nothing else."""
    for name, values in BODY_SETTINGS:
        destination = get_destination(name, values)
        assert all(body_code_takes(destination, m) for m in PLAIN), name
        others = [m for m in BASES if (m.get("event") or m["type"]) not in DECLARED]
        # identify and custom events are the general path's; so is Cart Viewed without a total (summed there).
        assert [m.get("event") or m["type"] for m in others] == [
            "identify",
            "Product List Viewed",
            "Cart Viewed",
            "Coupon Applied",
        ]
        assert not any(body_code_takes(destination, m) for m in others), name
        order = next(m for m in PLAIN if m.get("event") == "Order Completed")
        left = [
            {**order, "userId": " user-1"},  # an id the model trims
            {**order, "userId": 42},  # an id the model turns into text
            {**order, "type": "Track"},  # a type the model reads in any case
            {**order, "event": "Sipariş Tamamlandı"},  # non-ASCII text
            {**order, "properties": {**order["properties"], "products": order["properties"]["products"][0]}},
            {**order, "properties": {**order["properties"], "total": "949.97"}},  # a number as text
            {**order, "timestamp": "not a date"},  # the derived session's time cannot be read
            {**order, "integrations": {destination.display_name: False}},  # turned off: the general path says so
            {**order, "integrations": {destination.display_name: {"device": "fridge"}}},
        ]
        for message in left:
            assert not body_code_takes(destination, message), message
            fast, general = both(destination, message)
            assert fast == general


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=st.sampled_from(PLAIN), which=st.sampled_from(BODY_SETTINGS))
def test_plain_messages_at_their_edges_map_the_same_on_both_paths(
    data: st.DataObject, base: dict[str, Any], which: tuple[str, dict[str, Any]]
) -> None:
    """Plain messages with up to three values changed to an edge value or taken out: the body code and the general
    path give the same (the body code giving up where it must), and so does the parsed message (as the mapping
    stage hands it on, read once for every instance)."""
    message = base
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        path = data.draw(st.sampled_from(_paths(message)))
        message = _mutate(message, path, data.draw(st.sampled_from(EDGE_VALUES)), data.draw(st.booleans()))
    destination = get_destination(*which)
    fast, general = both(destination, message)
    assert fast == general
    try:
        parsed = parse_message(message)
    except InvalidMessage:
        return
    assert outcome(destination, parsed) == fast


def test_the_switch_reaches_the_general_path_for_declared_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """`FAST_PATHS` off turns the body code off too, so the comparisons above compare two paths."""
    calls = []
    real = base.Destination._fast_map

    def counting(self: Any, message: Any) -> Any:
        calls.append(1)
        return real(self, message)

    destination = get_destination("segmentify", SAMPLE_SETTINGS["segmentify"])
    monkeypatch.setattr(base.Destination, "_fast_map", counting)
    destination.handle_with_warnings(PLAIN[0])
    assert calls == [1]
    with general_path():
        destination.handle_with_warnings(PLAIN[0])
    assert calls == [1]


@pytest.mark.parametrize(
    ("os_name", "kind", "agent", "device"),
    [("iOS", None, None, "IOS"), ("iPadOS", None, None, "IOS"), (None, "Mobile", None, "MOBILE"),
     (None, "TABLET", None, "TABLET"), ("Android", "Tablet", None, "ANDROID"),
     (None, None, "Mozilla (Linux; Android 14)", "ANDROID"), (None, None, "Mozilla (Windows NT 10.0)", "PC")],
)  # fmt: skip
def test_the_device_is_told_alike_on_both_paths(os_name: Any, kind: Any, agent: Any, device: str) -> None:
    """The device from the OS name, device type (any case) and user agent, on a raw message the body code maps."""
    order = next(m for m in PLAIN if m.get("event") == "Order Completed")
    context = {**{k: v for k, v in order["context"].items() if k != "userAgent"}, "os": {"name": os_name},
               "device": {"type": kind}}  # fmt: skip
    if agent is not None:
        context["userAgent"] = agent
    message = {**order, "context": context}
    destination = get_destination("segmentify", SAMPLE_SETTINGS["segmentify"])
    assert body_code_takes(destination, message)
    fast, general = both(destination, message)
    assert fast == general
    assert fast[1][0]["json"][0]["device"] == device


def test_the_body_code_leaves_a_message_the_model_reads_otherwise() -> None:
    """Keys that are not text (a library caller's dict), a type that only equals "page": the model refuses them,
    so the body code leaves them to it, and both paths say the same."""

    class Kind(str):
        __slots__ = ()

    page = next(m for m in PLAIN if m["type"] == "page")
    destination = get_destination("segmentify", SAMPLE_SETTINGS["segmentify"])
    assert body_code_takes(destination, page)
    for message in ({**page, 1: "x"}, {**page, None: "x"}, {**page, "type": Kind("page")}):
        assert not body_code_takes(destination, message)
        fast, general = both(destination, message)
        assert fast == general
        assert fast[0] == "error"


def test_a_plugin_that_gates_handles_or_builds_its_own_way_keeps_the_general_path() -> None:
    """The body code stands in for `_gate`, `_handle` and `build` as Destination has them: a subclass that overrides
    any of them gets its own code run on raw messages too, and one that changes an instance's tables after it is
    made is read as it is then."""
    from destinations.base import Handled
    from destinations.errors import Filtered as Refused
    from destinations.segmentify import SegmentifyDestination

    order = next(m for m in PLAIN if m.get("event") == "Order Completed")
    settings = SAMPLE_SETTINGS["segmentify"]

    class NoTestUsers(SegmentifyDestination):
        def _gate(self, message: Any) -> Any:
            parsed, options = super()._gate(message)
            if parsed.userId == "user-1":
                raise Refused("a test user")
            return parsed, options

    class Renamed(SegmentifyDestination):
        def _handle(self, message: Any) -> Handled:
            handled = super()._handle(message)
            handled.requests[0].json[0]["userId"] = "renamed"
            return handled

    class Built(SegmentifyDestination):
        def build(self, call: Any, mapped: Any) -> list[Any]:
            return [*super().build(call, mapped), *super().build(call, mapped)]

    with pytest.raises(Refused, match="a test user"):
        NoTestUsers(settings).handle(order)
    assert Renamed(settings).handle(order)[0].json[0]["userId"] == "renamed"
    assert len(Built(settings).handle(order)) == 2

    changed = SegmentifyDestination(settings)
    changed.events = {**changed.events, "Order Completed": lambda call: Mapped("/mine", {"ok": True})}
    assert changed.handle(order)[0].json == {"ok": True}


def test_a_body_that_reads_a_product_must_say_so() -> None:
    from destinations.segmentify import BASKET_OPERATIONS

    with pytest.raises(ValueError, match="reads a product's fields: declare it with product=True"):
        fields.Body("BASKET_OPERATIONS", {"name": "BASKET_OPERATIONS"}, BASKET_OPERATIONS)


def test_a_body_is_a_declaration_compared_by_identity() -> None:
    """Two bodies declared alike are two declarations (each its own code), and either may key a table."""
    from destinations.segmentify import PAGE_VIEW

    first, second = (fields.Body("PAGE_VIEW", {"name": "PAGE_VIEW"}, PAGE_VIEW) for _ in range(2))
    assert first == first  # noqa: PLR0124 - identity is what is asserted
    assert first != second
    assert len({first: 1, second: 2}) == 2


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=st.sampled_from(PLAIN))
def test_what_plain_parts_takes_the_model_keeps_as_it_is(data: st.DataObject, base: dict[str, Any]) -> None:
    """`plain_parts` takes a raw message only when its model would keep its type, ids, event and objects as sent:
    plain messages with up to three values changed to an edge value (some of which it must leave)."""
    message = base
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        path = data.draw(st.sampled_from(_paths(message)))
        message = _mutate(message, path, data.draw(st.sampled_from(EDGE_VALUES)), data.draw(st.booleans()))
    parts = plain_parts(message)
    if parts is None:
        return
    parsed = parse_message(message)
    kind, event, properties, context, integrations = parts
    assert (parsed.type, parsed.userId, parsed.anonymousId) == (kind, message.get("userId"), message.get("anonymousId"))
    if kind == "track":
        assert parsed.event == event
    assert (getattr(parsed, "properties", {}), parsed.context, parsed.integrations) == (
        properties,
        context,
        integrations,
    )


def test_plain_parts_takes_the_plain_session_and_leaves_what_the_model_changes() -> None:
    """The property test above reaches its assertions: every plain message is taken, and what the model would
    trim, turn into text or refuse is left."""
    assert all(plain_parts(m) is not None for m in PLAIN)
    page = next(m for m in PLAIN if m["type"] == "page")
    for changed in ({"userId": " user-1"}, {"userId": 7}, {"anonymousId": "ánon"}, {"type": "Page"},
                    {"properties": "x"}, {"context": []}):  # fmt: skip
        assert plain_parts({**page, **changed}) is None, changed


# Values at the edges of the plain forms the straight-line code takes itself (booleans, flags, ISO days,
# constant defaults); anything past them must reach the general reader and come out the same.
EDGES = [True, False, 0, 1, "true", " 2024-02-29", "2024-02-29 ", "2024-02-30", "2021-W01-1", "2024-02-29",
         "20240229", "", None, [], 1700000000, "2024-02-29T10:00:00Z"]  # fmt: skip


@pytest.mark.parametrize("value", EDGES, ids=repr)
@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_plain_kinds_at_their_edges_map_the_same_on_both_paths(name: str, value: Any) -> None:
    destination = get_destination(name, SAMPLE_SETTINGS[name])
    context = {"traits": {"email": "a@example.com"}}
    traits = {"birthday": value, "created_at": value, "updated_at": value, "is_active": value}
    identify = {"type": "identify", "userId": "u1", "context": context, "traits": traits}
    product = {"type": "track", "event": "Product Viewed", "userId": "u1", "context": context,
               "properties": {"product_id": "p1", "name": "Shoe", "price": 10, "url": "https://shop.example/p1",
                              "image_url": "https://shop.example/p1.png", "category": "Shoes", "in_stock": value,
                              "quantity": value}}  # fmt: skip
    for message in (identify, product):
        fast, general = both(destination, message)
        assert fast == general


def test_a_mapper_that_changes_its_products_leaves_the_next_destinations_alone() -> None:
    # A message mapped for several instances reads its products once (fields.sharing); each Call still gets a list
    # of its own, so a plugin that trims its list does not trim what the next destination sends.
    from destinations.base import Destination, Mapped, SettingsModel
    from destinations.delivery.intake import IntakeReport, _map

    def first_line_only(call: fields.Call) -> Mapped:
        products = call.products
        del products[1:]
        return Mapped("/orders", {"lines": [item.raw["product_id"] for item in products]})

    class PluginSettings(SettingsModel):
        baseUrl: str = "https://plugin.example"

    class Plugin(Destination):
        Settings = PluginSettings
        name = "plugin"
        display_name = "Plugin"
        other_event = first_line_only

    message = {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "m1",
               "properties": {"order_id": "o1", "currency": "USD", "total": 30,
                              "products": [{"product_id": "a", "price": 10, "quantity": 1},
                                           {"product_id": "b", "price": 20, "quantity": 1}]}}  # fmt: skip
    instances = {"plugin": Plugin(), "wigzo": get_destination("wigzo", {"orgToken": "o", "token": "t"})}
    mapped = {name: requests[0].json for name, _, _, requests in _map(message, instances, IntakeReport()).items}
    assert mapped["plugin"] == {"lines": ["a"]}
    lines = mapped["wigzo"]["eventval"]["line_items"]
    assert [line["product_id"] for line in lines] == ["a", "b"]


# Instances that map one message in turn, as the intake does (fields.sharing): alike but for their settings, their
# options key, their event mappings and their field mappings, so that nothing one call derives from the message for
# all of them (its event, traits, products, time) may differ from what each derives alone.
SHARING = {
    "segmentify": ("segmentify", SAMPLE_SETTINGS["segmentify"]),
    "dengage": (
        "dengage",
        {**SAMPLE_SETTINGS["dengage"], "device": "MOBILE", "testMode": True, "origin": "https://shop.example"},
    ),
    "segmentify-events": (
        "segmentify",
        {**SAMPLE_SETTINGS["segmentify"], "eventMappings": {"Order Completed": "Cart Viewed"}},
    ),
    "segmentify-fields": (
        "segmentify",
        {
            **SAMPLE_SETTINGS["segmentify"],
            "fieldMappings": {"PRODUCT_VIEW.image": "properties.picture", "locale": "properties.lang"},
        },
    ),
    "wigzo": ("wigzo", SAMPLE_SETTINGS["wigzo"]),
    "esputnik": ("esputnik", SAMPLE_SETTINGS["esputnik"]),
}


# One instance's own options (Segmentify's image), a locale a field mapping reads elsewhere, an empty cart.
_VIEWED = {"type": "track", "event": "Product Viewed", "userId": "u1", "context": {"locale": "tr-TR"},
           "properties": {"product_id": "p1", "name": "Shoe", "price": 10, "url": "https://shop.example/p1",
                          "category": "Shoes", "lang": "de-DE"},
           "integrations": {"Segmentify": {"image_url": "https://shop.example/p1.png"}}}  # fmt: skip
SHARED_MESSAGES = [
    _VIEWED,
    {**_VIEWED, "integrations": {"Dengage": {"image_url": "https://shop.example/d.png"}}},
    {"type": "track", "event": "Order Completed", "userId": "u1", "properties": {"order_id": "o1", "products": []}},
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=st.one_of(messages, st.sampled_from(BASES + SHARED_MESSAGES)))
def test_a_message_shared_by_several_instances_maps_as_it_does_alone(message: Any) -> None:
    instances = {label: get_destination(name, values) for label, (name, values) in SHARING.items()}
    alone = {label: outcome(destination, message) for label, destination in instances.items()}
    try:
        parsed: Any = parse_message(message)
    except InvalidMessage:
        parsed = message
    fields.sharing(parsed)
    try:
        shared = {label: outcome(destination, parsed) for label, destination in instances.items()}
    finally:
        fields.sharing(None)
    assert shared == alone


class _Refuses:
    """A library caller's value whose `==` refuses, as an array's truth does: nothing may compare it."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("ambiguous")

    __hash__ = object.__hash__


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_a_trait_whose_equality_refuses_maps_as_any_other_object(name: str) -> None:
    """Own traits over context traits are merged by asking which are null by identity, never by `==`."""
    message = {"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-11-30T10:00:00Z",
               "traits": {"email": "a@example.com", "odd": _Refuses()},
               "context": {"traits": {"email": "b@example.com", "firstName": "Ada"}}}  # fmt: skip
    destination = get_destination(name, SAMPLE_SETTINGS[name])
    fast, general = both(destination, message)
    assert fast[0] == "requests", fast
    assert repr(fast) == repr(general)
