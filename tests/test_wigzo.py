"""Wigzo: the user id rule, settings and secrets (the mappings themselves are in fixtures/wigzo)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from typing import Any

import pytest

from destinations import ConfigurationError, InvalidMessage, get_destination
from destinations.wigzo import USER_ID_NAMESPACE, decimal_text, wigzo_user_id

ORG_TOKEN = "org-0123456789abcdef-secret"
TOKEN = "tok-fedcba9876543210-secret"

# Computed apart from the handler: uuid.UUID(bytes=uuid.uuid5(NAMESPACE, id).bytes, version=4).
PINNED = {
    "user-1001": "08dc5fca-9def-4503-98eb-e103074ccfc7",
    "anon-42": "370f0c38-ca88-4ae2-aeb3-002abe2bc17b",
    "CUST-9": "d120eed2-511f-4f8f-a4b6-6edbcebad9a0",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8": "8e0f54da-d218-4ce0-80c6-b14075e4967d",
}


def reference(segment_id: str) -> str:
    return str(uuid.UUID(bytes=uuid.uuid5(USER_ID_NAMESPACE, segment_id).bytes, version=4))


def generated_ids(count: int = 4000) -> list[str]:
    """Ids of many shapes: numbers, emails, hashes, UUIDs of other versions and forms, unicode, junk."""
    rng = random.Random(20260120)
    alphabet = "abcXYZ019-_.@+ éß日本🙂\t"
    ids: list[str] = []
    for i in range(count):
        shape = i % 10
        if shape == 0:
            ids.append(str(rng.randrange(10**15)))
        elif shape == 1:
            ids.append(f"customer{i}@example.com")
        elif shape == 2:
            ids.append(uuid.UUID(int=rng.getrandbits(128)).hex)  # 32 hex digits, no hyphens
        elif shape == 3:
            ids.append(str(uuid.uuid5(uuid.NAMESPACE_URL, f"u{i}")))  # a UUID, version 5
        elif shape == 4:
            ids.append(str(uuid.UUID(int=rng.getrandbits(128), version=1)).upper())
        elif shape == 5:
            ids.append("{" + str(uuid.UUID(int=rng.getrandbits(128), version=4)) + "}")  # braces: not canonical
        elif shape == 6:
            ids.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))))
        elif shape == 7:
            ids.append(f"anon-{i}-" + "x" * rng.randrange(0, 300))
        elif shape == 8:
            ids.append(f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}")
        else:
            ids.append(f"{i}")
    return ids


def test_every_mapped_id_is_a_valid_uuid4() -> None:
    ids = generated_ids()
    mapped = {}
    for segment_id in ids:
        out = wigzo_user_id(segment_id)
        parsed = uuid.UUID(out)
        assert parsed.version == 4, segment_id
        assert parsed.variant == uuid.RFC_4122, segment_id
        assert str(parsed) == out, "canonical lower-case 8-4-4-4-12 form"
        assert wigzo_user_id(segment_id) == out, "stable"
        assert out == reference(segment_id), "the documented uuid5-based rule"
        mapped[segment_id] = out
    assert len(set(mapped.values())) == len(set(ids)), "distinct ids stay distinct"


@pytest.mark.parametrize(("segment_id", "expected"), sorted(PINNED.items()))
def test_pinned_values(segment_id: str, expected: str) -> None:
    assert wigzo_user_id(segment_id) == expected


def test_namespace_is_the_documented_one() -> None:
    assert uuid.uuid5(uuid.NAMESPACE_DNS, "tracker.wigzopush.com") == USER_ID_NAMESPACE


def test_uuid4_input_is_kept_lower_cased() -> None:
    rng = random.Random(7)
    for _ in range(500):
        value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        assert wigzo_user_id(value) == value
        assert wigzo_user_id(value.upper()) == value


@pytest.mark.parametrize(
    "segment_id",
    [
        "F47AC10B58CC4372A5670E02B2C3D479",  # a UUIDv4 without hyphens
        "{f47ac10b-58cc-4372-a567-0e02b2c3d479}",
        "urn:uuid:f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "f47ac10b-58cc-4372-c567-0e02b2c3d479",  # version nibble 4 but not the RFC 4122 variant
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # version 1
    ],
)
def test_other_forms_are_mapped_not_kept(segment_id: str) -> None:
    assert wigzo_user_id(segment_id) == reference(segment_id)
    assert wigzo_user_id(segment_id) != segment_id.lower()


def test_ids_with_lone_surrogates_are_refused_naming_the_id() -> None:
    # A lone surrogate is a valid JSON escape but no text: customer_id could not be sent (MAPPINGS "Real traffic").
    for key in ("userId", "anonymousId"):
        with pytest.raises(InvalidMessage, match=rf"^Signed Up: {key} holds a lone surrogate"):
            wigzo().handle({"type": "track", "event": "Signed Up", key: "user-\ud800"})


def test_same_id_in_another_process_with_another_hash_seed() -> None:
    ids = [*PINNED, "user-日本", "42"]
    code = (
        "import json, sys; from destinations.wigzo import wigzo_user_id as f; "
        "print(json.dumps([f(i) for i in json.load(sys.stdin)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert json.loads(result.stdout) == [wigzo_user_id(i) for i in ids]


def wigzo(**settings: Any) -> Any:
    return get_destination("wigzo", {"orgToken": ORG_TOKEN, "token": TOKEN, **settings})


def test_one_user_is_one_wigzo_id_on_identify_track_and_page() -> None:
    dest = wigzo()
    base = {"userId": "user-1001", "anonymousId": "anon-1", "context": {"page": {"url": "https://shop.example/"}}}
    messages = [
        {**base, "type": "identify", "traits": {"email": "a@example.com"}},
        {**base, "type": "page", "name": "Home"},
        {**base, "type": "track", "event": "Product Viewed", "properties": {"product_id": "1"}},
        {**base, "type": "track", "event": "Order Completed", "properties": {"order_id": "o", "products": [{"id": 1}]}},
        {**base, "type": "track", "event": "Wishlist Opened"},
    ]
    ids = {request.json["userId"] for m in messages for request in dest.handle(m)}
    assert ids == {PINNED["user-1001"]}


def test_secrets_stay_out_of_reprs() -> None:
    dest = wigzo()
    assert ORG_TOKEN not in repr(dest)
    assert TOKEN not in repr(dest)
    (request,) = dest.handle({"type": "track", "event": "Coupon Applied", "userId": "u"})
    assert ORG_TOKEN not in repr(request)
    assert TOKEN not in repr(request)
    assert request.to_dict()["params"] == {"token": TOKEN, "org_token": ORG_TOKEN}


def test_missing_org_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_destination("wigzo", {"token": TOKEN})
    assert "wigzo settings: orgToken is required" in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"orgToken": "  "}, "orgToken must not be empty"),
        ({"orgToken": ORG_TOKEN, "source": ORG_TOKEN}, "source must be one of 'web' or 'app'"),
        ({"orgToken": ORG_TOKEN, "org_token": TOKEN}, "org_token is not a setting"),
        ({"orgToken": ORG_TOKEN, "token": ["x", TOKEN]}, "token must be a string"),
        ({"orgToken": ORG_TOKEN, "baseUrl": f"https://tracker.example/?t={TOKEN}"}, "baseUrl must not carry a query"),
    ],
)
def test_settings_errors_name_the_key_and_never_a_secret(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_destination("wigzo", settings)
    assert problem in str(info.value)
    for secret in (ORG_TOKEN, TOKEN):
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


def test_settings_description() -> None:
    described = {s["name"]: s for s in type(wigzo()).describe_settings()}
    assert described["orgToken"] == {"name": "orgToken", "required": True, "secret": True}
    assert described["token"] == {"name": "token", "required": False, "secret": True}
    assert described["baseUrl"]["required"] is False
    assert wigzo().settings.baseUrl == "https://tracker.wigzopush.com"


@pytest.mark.parametrize(
    ("value", "text"),
    [(72000, "72000"), (72000.0, "72000"), (18.99, "18.99"), (0, "0"), (1499.5, "1499.5")],
)
def test_decimal_text(value: float, text: str) -> None:
    assert decimal_text(value) == text
