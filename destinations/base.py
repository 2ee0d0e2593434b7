"""The destination framework: `HttpRequest`, settings validation, credentials, dispatch by type and
event, and the one place a mapped body becomes an `HttpRequest`."""

from __future__ import annotations

import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

import idna
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from . import fields as _fields
from .errors import ConfigurationError, DestinationError, Filtered, InvalidMessage, MappingWarning
from .fields import Call, Table, plain_roots
from .redaction import mask_headers, mask_params, masked_traceback
from .shaping import Shaping, ShapingSettings
from .spec import (
    Message,
    Track,
    canonical_event,
    check_envelope,
    format_path,
    integration_setting,
    new_tuple,
    plain_parts,
    raw_label,
    validate_message,
)

log = logging.getLogger(__name__)

#: The enrichment that hands a destination the whole cart on every cart event (`Destination.enrichments`).
CART = "cart"
#: The option (`integrations.<Name>.wholeCart`) saying `properties.products` is the whole cart: set with the cart
#: the package hands on, and open to clients that send whole carts themselves.
WHOLE_CART = "wholeCart"

#: How many of an instance's request paths keep their joined URL (`Destination.request`).
_PATHS_KEPT = 64

# Immutable, so no request can change another's through a shared default.
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class HttpRequest(NamedTuple):
    """One HTTP call to a vendor. `url` has no query string; `params` holds it.

    A batchable request has a JSON array body that may be concatenated with other batchable
    requests to the same method, url, params and headers. Immutable, and equal when its fields are
    (a named tuple: cheap to build, which matters at tens of thousands of events a second).
    """

    method: str
    url: str
    params: Mapping[str, Any] = _EMPTY
    headers: Mapping[str, str] = _EMPTY
    json: Any = None
    batchable: bool = False
    #: The lower-cased param and header names its destination declares secret (masked in the repr too).
    secret_names: frozenset[str] = frozenset()

    def to_dict(self, *, masked: bool = False) -> dict[str, Any]:
        """What is sent, secrets included (the fixtures and `transform` compare this); `masked`: the declared
        secrets as `***`, for files people read and share (the demo's request log)."""
        return {
            "method": self.method,
            "url": self.url,
            "params": mask_params(self.params, self.secret_names) if masked else dict(self.params),
            "headers": mask_headers(self.headers, self.secret_names) if masked else dict(self.headers),
            "json": self.json,
        }

    def __repr__(self) -> str:
        return (
            f"HttpRequest(method={self.method!r}, url={self.url!r}, "
            f"params={mask_params(self.params, self.secret_names)!r}, "
            f"headers={mask_headers(self.headers, self.secret_names)!r}, json={self.json!r}, "
            f"batchable={self.batchable!r})"
        )


class Handled(NamedTuple):
    """What `Destination.handle_with_warnings` returns: the requests, and the values left out of them."""

    requests: list[HttpRequest]
    warnings: list[MappingWarning]


class Mapped(NamedTuple):
    """What a vendor mapper returns: the API path (appended to the instance's base URL), the JSON
    body, headers of this message's own (Segmentify's `Origin`) and the HTTP method."""

    path: str
    json: Any
    headers: Mapping[str, str] = _EMPTY
    method: str = "POST"


# A mapper returns one Mapped, or several when one message means several vendor calls.
Mapper = Callable[[Call], Any]
# Straight-line code for plain messages (`FastMapper`): (destination, roots of the raw message, the raw message) ->
# the Mapped, or None for the general path.
Fast = Callable[["Destination", list[Any], dict[str, Any]], "Mapped | None"]


class FastMapper:
    """A mapper (a value of `Destination.calls` or `events`) with straight-line code beside it, made from the same
    declarations (fields.Body), for raw messages of plain values: `Destination.handle` tries `fast` first and maps
    anything it gives up (None) with the mapper itself."""

    __slots__ = ("fast", "mapper")

    def __init__(self, mapper: Mapper, fast: Fast) -> None:
        self.mapper = mapper
        self.fast = fast

    def __call__(self, call: Call) -> Any:
        return self.mapper(call)


class Credential(NamedTuple):
    """Which setting travels as which query parameter or header (DESIGN.md section 9).

    `form` turns the secret into the header value (HTTP Basic for eSputnik). The outbox stores
    requests without these and the sender adds them back, so no secret is written to disk.
    """

    setting: str
    param: str | None = None
    header: str | None = None
    form: Callable[[str], str] | None = None


# --- settings -----------------------------------------------------------------------------------


class SettingsModel(ShapingSettings):
    """Base of every destination's settings: camelCase keys, unknown keys rejected, frozen; with the shaping
    keys every destination takes (shaping.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# What a host name may hold in a request line or header, once IDNA-encoded (RFC 3986 reg-name, lower case).
_HOST = re.compile(r"[a-z0-9._~!$&'()*+,;=%-]+")
# An IPv6 address's zone id (`fe80::1%eth0`, written `%25eth0` in a URL): unreserved characters only, as urllib3.
_ZONE = re.compile(r"(25)?[A-Za-z0-9._~-]+")


def request_host(host: str) -> str | None:
    """A URL's host (as `urlsplit(...).hostname` gives it) in the form a request carries it: IDNA-encoded
    (`магазин.example` -> `xn--80aairftm.example`), an IPv6 address (with its zone id, if any) bracketed; None
    when no request can carry it (an empty host, spaces, control characters, a name IDNA refuses, an address
    that is no IPv6 address)."""
    if not host:
        return None
    if ":" in host:  # an IPv6 address; nothing else in a host has a colon
        address, _, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return None
        return f"[{host}]" if not zone or _ZONE.fullmatch(zone) else None
    if not host.isascii():
        try:  # what requests and httpx send to: IDNA 2008
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            return None
    return host if _HOST.fullmatch(host) else None


def browser_host(host: str) -> str | None:
    """A non-ASCII host as a browser's `Origin` carries it, by the WHATWG URL standard (UTS 46 nontransitional
    mapping, each non-ASCII label checked for NFC, a leading mark, bidi and joiners, then punycoded): it takes
    symbols IDNA 2008 leaves out (`i❤.ws` -> `xn--i-7iq.ws`). None when a browser refuses it."""
    try:
        labels = idna.uts46_remap(host, std3_rules=False, transitional=False).split(".")
        for i, label in enumerate(labels):
            if label.isascii():
                continue
            idna.check_nfc(label)
            idna.check_bidi(label)
            if unicodedata.category(label[0]).startswith("M"):
                return None
            if any(c in "\u200c\u200d" and not idna.valid_contextj(label, at) for at, c in enumerate(label)):
                return None
            labels[i] = "xn--" + label.encode("punycode").decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    encoded = ".".join(labels)
    return encoded if _HOST.fullmatch(encoded) else None


@lru_cache(maxsize=1024)  # a shop has few page URLs per origin; parsing each once is enough
def origin_of(url: str | None) -> str | None:
    """scheme://host[:port] of a URL, the host as a request carries it (`request_host`), or for a name of symbols
    IDNA 2008 refuses, as a browser does (`browser_host`), so that it can travel in a header
    (`https://магазин.example` -> `https://xn--80aairftm.example`); None when it has none."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    # As a browser sends it: a name of symbols IDNA 2008 refuses is the browser's encoding of it.
    host = request_host(host) or (browser_host(host) if not host.isascii() else None)
    if host is None:  # control characters, spaces: nothing a header can carry
        return None
    return f"{parts.scheme}://{host}:{port}" if port is not None else f"{parts.scheme}://{host}"


# C0 and C1 control characters and DEL: never in a URL a request can be sent to.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def http_url(value: str) -> str:
    """An http(s) URL with a host a request can carry and a port from 1 to 65535, without a trailing slash
    (paths are appended to it). ValueError naming the rule otherwise."""
    if _CONTROL.search(value):  # before urlsplit, which drops tabs and line breaks without a word
        raise ValueError("must not contain control characters")
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port  # the port is read, and checked, only when asked for
    except ValueError:  # "[::1" (an IPv6 address not closed), a port that is no number from 0 to 65535
        raise ValueError(
            "must be an http(s) URL with a valid host and port, such as https://host.example.com"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://host.example.com")
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")  # an IP literal: an IPv6 address, or nothing
    if any(c.isspace() for c in parts.netloc) or request_host(host or "") is None or (bracketed and ":" not in host):
        raise ValueError("must have a valid host name, such as https://host.example.com")
    if port == 0:
        raise ValueError("must have a port from 1 to 65535")
    if "?" in value or "#" in value:  # even empty: the paths appended to it would become a query or fragment
        raise ValueError("must not carry a query string or fragment")
    if "@" in parts.netloc:  # a password here would travel, and be kept, as plain text: it is no secret setting
        raise ValueError("must not carry a user name or password (credentials go in their own settings)")
    return value.rstrip("/")


def under_base(url: str, base_url: str) -> bool:
    """Whether `url` lies under `base_url` (the base itself, or a path or query below it)."""
    return url == base_url or url.startswith((base_url + "/", base_url + "?"))


def non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


_SETTING_RULES = {
    "missing": "is required",
    "extra_forbidden": "is not a setting of {owner}",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "literal_error": "must be one of {expected}",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "greater_than_equal": "must be {ge} or more",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be {le} or less",
    "less_than": "must be less than {lt}",
    "list_type": "must be a list",
}


def describe_settings_errors(exc: ValidationError, owner: str = "this destination") -> list[str]:
    """One line per bad key (`key rule`), a key that is none of `owner`'s named so; never the value (a secret's
    value must not reach an error text)."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        known = _SETTING_RULES.get(err["type"])
        ctx = {"owner": owner, **(err.get("ctx") or {})}
        rule = known.format(**ctx) if known else str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{format_path(err['loc']) or 'settings'} {rule}")
    return lines


def _secret_strings(value: Any) -> list[str]:
    """The values of every `SecretStr` in a settings value, walking models, mappings, lists, tuples and sets."""
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return [secret for item in value for secret in _secret_strings(item)]
    return []


# --- destinations -------------------------------------------------------------------------------


class Destination:
    """Base of every destination: a pure function of (settings, message) to HTTP requests.

    A vendor module declares `name`, `display_name` (its key in `integrations`), `Settings`,
    `credentials_declared`, `url_setting` (the setting holding the base URL), `headers`, `batchable`,
    the tables `calls` (message type -> mapper) and `events` (canonical track event -> mapper) with
    `other_event` for any other track, and `fields` (its declared tables, for `destinations list`). A mapper
    of `events`, or of `calls` for page and screen, may be a `FastMapper`, whose straight-line code `handle`
    tries first on a raw message.
    """

    name: ClassVar[str]
    display_name: ClassVar[str]
    Settings: ClassVar[type[SettingsModel]]
    calls: ClassVar[Mapping[str, Mapper]] = {}
    events: ClassVar[Mapping[str, Mapper]] = {}
    other_event: ClassVar[Mapper | None] = None
    fields: ClassVar[tuple[Table, ...]] = ()
    credentials_declared: ClassVar[tuple[Credential, ...]] = ()
    url_setting: ClassVar[str] = "baseUrl"
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({"Content-Type": "application/json"})
    batchable: ClassVar[bool] = False

    #: The vendor's own event keys, which no custom event may take (customEventNames, MAPPINGS "Real traffic").
    vendor_events: ClassVar[frozenset[str]] = frozenset()
    #: State the mapping stage applies before `handle` for this destination: CART hands cart events the
    #: whole cart (carts.py). `handle` alone (a library call, the RudderStack routes) has no state.
    enrichments: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Mapping[str, Any] | SettingsModel | None = None) -> None:
        self.settings = self.parse_settings(settings)
        try:
            self.shaping = Shaping(self.settings, self.fields, self.vendor_events)
        except ValueError as exc:
            raise ConfigurationError(f"{self.name} settings: {exc}", [str(exc)]) from None
        params, headers = {}, {}
        for c in self.credentials_declared:
            secret = getattr(self.settings, c.setting)
            if secret is None:
                continue
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else str(secret)
            if c.param:
                params[c.param] = c.form(value) if c.form else value
            if c.header:
                headers[c.header] = c.form(value) if c.form else value
        self._secret_params, self._secret_headers = params, headers
        self._secret_names = frozenset(k.lower() for k in (*params, *headers))
        self._base_url = str(getattr(self.settings, self.url_setting, "") or "")
        #: Every request's headers before its own: the credentials', then the destination's.
        self._request_headers = {**headers, **self.headers}
        self._urls: dict[str, str] = {}  # path -> base URL + path
        self._own_build = type(self).build is Destination.build
        # The straight-line code of its mappers (`FastMapper`) serves an instance that renames, filters and moves
        # nothing (its shaping settings) and gates, handles and builds as this class does: a plugin that overrides
        # any of those keeps the general path, where its own code runs.
        cls = type(self)
        self._plain = (
            cls.build is Destination.build and cls._gate is Destination._gate and cls._handle is Destination._handle
            and not self.shaping.active and not self.shaping.overrides
            and any(isinstance(m, FastMapper) for m in (*self.events.values(), *self.calls.values()))
        )  # fmt: skip

    @classmethod
    def parse_settings(cls, settings: Mapping[str, Any] | SettingsModel | None) -> Any:
        if isinstance(settings, cls.Settings):
            return settings
        if settings is not None and not isinstance(settings, Mapping):
            raise ConfigurationError(f"{cls.name} settings must be an object of key/value pairs")
        try:
            return cls.Settings.model_validate(dict(settings or {}))
        except ValidationError as exc:
            problems = describe_settings_errors(exc)
            raise ConfigurationError(f"{cls.name} settings: " + "; ".join(problems), problems) from None

    @classmethod
    def describe_settings(cls) -> list[dict[str, Any]]:
        """Name, required and secret for each setting (for `destinations list`)."""
        out = []
        for key, info in cls.Settings.model_fields.items():
            secret = info.annotation is SecretStr or "SecretStr" in str(info.annotation)
            out.append({"name": key, "required": info.is_required(), "secret": secret})
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} settings={self.settings!r}>"

    # -- the public entry point

    def handle(self, message: Mapping[str, Any] | Message) -> list[HttpRequest]:
        """Map one Segment message to the vendor requests it means.

        Raises InvalidMessage or Filtered, and nothing else, for any input. Optional values that
        could not be read are left out of the requests; `handle_with_warnings` also says which.
        """
        return self.handle_with_warnings(message).requests

    def handle_with_warnings(self, message: Mapping[str, Any] | Message) -> Handled:
        """`handle`, with one MappingWarning for each optional value left out (MAPPINGS "Real traffic").

        Raises what `handle` raises.
        """
        try:
            # A raw message first to its event's straight-line code, if it has one (`FastMapper`); the mapping
            # stage hands on the parsed model, read once for every instance, which the general path maps.
            if self._plain and type(message) is dict and _fields.FAST_PATHS:
                mapped = self._fast_map(message)
                if mapped is not None:
                    return new_tuple(Handled, ([self.request(mapped)], []))
            return self._handle(message)
        except DestinationError:
            raise
        except Exception as exc:  # a mapping bug must not take a caller's loop down with it
            # Its traceback as text, this instance's credentials masked: a plugin's exception may quote them, and a
            # library caller's log masks nothing (the server's masks every configured secret besides).
            log.error("%s could not map a message\n%s", self.name, masked_traceback(exc, self.secrets()))
            label = raw_label(message) if isinstance(message, dict) else "message"
            raise InvalidMessage(
                label, "", f"could not be mapped for {self.display_name} ({type(exc).__name__})", internal=True
            ) from None

    def admits(self, message: Message) -> bool:
        """Whether this instance takes a parsed message at all (its `integrations`, its type, an id, the shaping
        settings): what the mapping stage asks before it changes any state for it (carts.py)."""
        try:
            self._gate(message)
        except DestinationError:
            return False
        return True

    def _fast_map(self, message: dict[str, Any]) -> Mapped | None:
        """A raw message mapped by its event's straight-line code (`FastMapper`) when the message is plain
        (`spec.plain_parts`), this instance takes it and the code takes every value it reads; else None."""
        parts = plain_parts(message)
        if parts is None:
            return None
        kind, event, properties, context, integrations = parts
        options: dict[str, Any] = {}
        if integrations:
            enabled, options, _ = integration_setting(integrations, self.display_name)
            if not enabled:  # the general path says why
                return None
        # The tables as they are now: a plugin may change an instance's after it is made.
        mapper = self.events.get(canonical_event(event)) if event is not None else self.calls.get(kind)
        if type(mapper) is not FastMapper:
            return None
        return mapper.fast(self, plain_roots(properties, context, options, message), message)

    def _gate(self, message: Mapping[str, Any] | Message) -> tuple[Message, dict[str, Any]]:
        """The parsed message and this instance's options, or Filtered/InvalidMessage when it does not take it."""
        if isinstance(message, Message):
            parsed: Message | None = message
            kind, integrations = message.type, message.integrations
        else:
            parsed, kind, integrations = None, check_envelope(message), message.get("integrations")
        options: dict[str, Any] = {}
        if integrations:  # most messages name no destination: nothing to look through
            enabled, options, key = integration_setting(integrations, self.display_name)
            if not enabled:
                raise Filtered(f"integrations.{key} turns {self.display_name} off for this message")
        if kind != "track" and kind not in self.calls:
            raise Filtered(f"{self.display_name} does not take {kind} calls")
        if parsed is None:  # the envelope is checked: only the model's validation is left
            parsed = validate_message(message, kind)
        if parsed.userId is None and parsed.anonymousId is None:
            raise InvalidMessage(parsed.event_label, "userId", "or anonymousId is required by the Segment spec")
        if self.shaping.active:
            self.shaping.check(parsed, parsed.event if isinstance(parsed, Track) else None, self.display_name)
        return parsed, options

    def _handle(self, message: Mapping[str, Any] | Message) -> Handled:
        parsed, options = self._gate(message)
        shaping = self.shaping
        call = Call(parsed, options, self.settings, self.display_name, shaping.overrides)
        if shaping.active and isinstance(parsed, Track):
            call.event = shaping.spec_event(parsed.event) or call.event
            call.custom_name = shaping.custom_name(parsed.event)
        if parsed.type == "track":
            # Through the class: a plain function stored on it must not become a bound method.
            mapper = self.events.get(call.event) or type(self).other_event
            if mapper is None:
                raise Filtered(f"{self.display_name} does not take the event {call.event!r}")
        else:
            mapper = self.calls[parsed.type]
        if type(mapper) is FastMapper:  # its own function, without the wrapper's frame
            mapper = mapper.mapper
        mapped = mapper(call)
        # The common case, one Mapped, without `build`'s list and checks (unless a plugin overrides `build`).
        if type(mapped) is Mapped and self._own_build:
            return new_tuple(Handled, ([self.request(mapped)], call.warnings))
        return new_tuple(Handled, (self.build(call, mapped), call.warnings))

    def build(self, call: Call, mapped: Any) -> list[HttpRequest]:
        """The requests a mapper's result means: each Mapped through `request`, HttpRequests as they are.

        Built-in destinations never override this; a plugin may, when its calls need another form.
        """
        items = [mapped] if isinstance(mapped, Mapped | HttpRequest) else list(mapped)
        return [self.request(m) if isinstance(m, Mapped) else m for m in items]

    @property
    def base_url(self) -> str:
        """Where this instance's requests go (its `url_setting`): a request to anywhere else is not its own."""
        return self._base_url

    def owns(self, url: str) -> bool:
        """Whether `url` lies under this instance's base URL: only there are its credentials sent (a plugin's
        request elsewhere, or one an earlier version stored for a base URL since changed, goes without)."""
        return not self._base_url or under_base(url, self._base_url)

    def request(self, mapped: Mapped) -> HttpRequest:
        """The one typed form of a vendor request: the base URL and path, credentials and headers added."""
        path, json, own, method = mapped
        headers = self._request_headers.copy()  # each request its own dicts, as a caller may change them
        if own:
            headers.update(own)
        url = self._urls.get(path)
        if url is None:
            url = self._base_url + path
            if len(self._urls) < _PATHS_KEPT:  # a destination has a few paths (a plugin's may hold ids: not all)
                self._urls[path] = url
        return new_tuple(HttpRequest, (
            method, url, self._secret_params.copy(), headers, json, self.batchable, self._secret_names
        ))  # fmt: skip

    # -- delivery hooks (used by destinations.delivery, never by handle)

    def credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        """The (query params, headers) that carry this instance's secrets, from `credentials_declared`.

        The outbox stores requests without them and the sender adds them back, so no secret is
        ever written to disk.
        """
        return dict(self._secret_params), dict(self._secret_headers)

    def secrets(self) -> list[str]:
        """Every secret value of this instance, as set and as sent: each `SecretStr` in its settings (declared
        credential or not, in a list, a mapping or a nested model too) and each credential in its sent form
        (eSputnik's Basic header). What no log line, stored answer or error may show; `redaction.secret_forms`
        gives the other forms each may take."""
        params, headers = self.credentials()
        return [*_secret_strings(self.settings), *params.values(), *headers.values()]

    def credential_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The (query parameter, header) names, lower-cased, that carry this instance's secrets: what the outbox
        never stores and the sender adds back (from `credentials`, so from the declaration)."""
        params, headers = self.credentials()
        return frozenset(k.lower() for k in params), frozenset(k.lower() for k in headers)

    def response_problem(self, status: int, body: bytes) -> tuple[str, str] | None:
        """A vendor-specific failure hidden in an HTTP answer: ("permanent" or "config", code), or None."""
        return None

    @classmethod
    def describe_fields(cls) -> list[dict[str, Any]]:
        """Every declared field of every event, with its sources (for `destinations list NAME`)."""
        return [row for table in cls.fields for row in table.describe()]
