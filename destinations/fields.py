"""Declared vendor fields and the one reader that reads them from a message.

A vendor module declares each event's fields once, as a `Table` of `Field`s: the vendor's field name,
its Segment sources in order, its kind and whether it is required (DESIGN.md section 9). `Call.read`
is the only place a declared value is read: it tries the sources in order, converts the value by its
kind, and names the path it was read from in every error and warning. Computed values (session ids,
vendor user ids, sums) stay functions in the vendor modules, built on the same `Call`. A vendor event whose body
is its fields alone is declared whole as a `Body` (constants, a table, lists of a table over the products), which
`Call.body` builds and which is also made into code for raw messages of plain values (`Body.fast`).

Source paths are Segment paths with one of these roots:

- `properties.x`, `context.x`, `userId`, `name`, ... : the message as sent;
- `traits.x`: `traits` (identify, group), then `context.traits` (every call): a source `traits.x` reads
  `traits.x`, `traits.X`, `context.traits.x`, `context.traits.X` in that order (MAPPINGS "Real traffic");
- `product.x`: the product being read: `properties`, one item of `properties.products[]`, or the one
  item of `properties.products` when `properties` has no product id;
- `options.x`: the destination's `integrations` options, named `integrations.<Name>.x` in errors.

The last key of a `properties`, `traits`, `product` or `options` source is read in both spellings,
snake_case first (`order_id`, then `orderId`), so no declaration types a path twice.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from enum import Enum
from functools import lru_cache
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

from .errors import InvalidMessage, MappingWarning
from .spec import (
    LONE_SURROGATE,
    NUMBER_LIMIT,
    Alias,
    Group,
    Identify,
    Message,
    Number,
    Page,
    Screen,
    Track,
    as_number,
    canonical_event,
    compact_json,
    has_surrogate,
    language,
    money_sum,
    new_tuple,
    parse_date,
    parse_iso_datetime,
    sendable,
    utc,
    words,
)

# --- kinds: how a value is read ---------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_text(value: Any) -> str:
    """Text from text or a finite number; ValueError for anything else or a lone surrogate."""
    kind = type(value)
    if kind is str:
        if has_surrogate(value):
            raise ValueError(LONE_SURROGATE)
        return value
    if kind is int or (kind is float and math.isfinite(value)):
        return str(value)
    raise ValueError("must be text")


def read_number(value: Any) -> Number:
    number = as_number(value)
    if number is None:
        raise ValueError(f"must be a number (got {_shown(value)})")
    return number


def read_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ValueError("must be true or false")


def read_flag(value: Any) -> int:
    """0 or 1, as eSputnik writes booleans."""
    return int(read_bool(value))


@lru_cache(maxsize=4096)  # a shop has few page URLs; each is parsed once
def _valid_url(text: str) -> bool:
    try:
        urlsplit(text).port  # noqa: B018 - reading it checks the port
    except ValueError:
        return False
    return True


def read_url(value: Any) -> str:
    """Text that parses as a URL (`http://[::1` does not)."""
    text = read_text(value)
    if not _valid_url(text):
        raise ValueError("is not a valid URL")
    return text


def read_texts(value: Any) -> list[str]:
    """A list of texts; one text counts as a list of one."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        if item is None:
            continue
        try:
            out.append(read_text(item))
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}" if value is items else str(exc)) from None
    return out


READERS: dict[str, Callable[[Any], Any]] = {
    "text": read_text,
    "number": read_number,
    "bool": read_bool,
    "flag": read_flag,
    "date": parse_date,
    "url": read_url,
    "texts": read_texts,
    "raw": sendable,
}

# --- declarations ------------------------------------------------------------------------------

_SPELLED_ROOTS = ("properties", "traits", "product", "options")


def other_spelling(key: str) -> str:
    """order_id <-> orderId, imageXS -> image_xs; the key itself when it has no other spelling."""
    if "_" in key:
        head, *rest = key.split("_")
        return head + "".join(part[:1].upper() + part[1:] for part in rest)
    return "_".join(w.lower() for w in words(key)) if key.lower() != key else key


def spellings(*sources: str) -> tuple[str, ...]:
    """Each source followed by its other spelling, without repeats; a `traits.x` source is also read
    from `context.traits`, after `traits` in both spellings."""
    out: list[str] = []
    for source in sources:
        root, _, rest = source.partition(".")
        variants = [source]
        if root in _SPELLED_ROOTS and rest:
            head, _, last = rest.rpartition(".")
            other = other_spelling(last)
            if other != last:
                variants.append(f"{root}.{head + '.' if head else ''}{other}")
        if root == "traits":
            variants += [f"context.{v}" for v in variants]
        out.extend(v for v in variants if v not in out)
    return tuple(out)


# Roots, as indexes into `Call._roots`: all dicts but the last, the parsed message model.
ROOTS = ("properties", "traits", "context.traits", "options", "product", "context", "message")
_PRODUCT_ROOT = ROOTS.index("product")
_MESSAGE_ROOT = ROOTS.index("message")


class Source(NamedTuple):
    root: str
    keys: tuple[str, ...]
    path: str  # as written in the declaration
    index: int  # of the root in ROOTS
    key: str  # the first key
    rest: tuple[str, ...]  # the keys after it


def _compile(path: str) -> Source:
    parts = tuple(path.split("."))
    if parts[:2] == ("context", "traits") and len(parts) > 2:
        root, keys = "context.traits", parts[2:]
    elif parts[0] in ROOTS and len(parts) > 1:
        root, keys = parts[0], parts[1:]
    else:
        root, keys = "message", parts
    return Source(root, keys, path, ROOTS.index(root), keys[0], keys[1:])


@dataclass(frozen=True)
class Field:
    """One vendor field: its name, its Segment sources in order, its kind and whether it is required.

    `kind` is one of READERS. `default` (a value, or a function of the call and the product) is used
    when no source is present; `to` turns the read value into the vendor's form (a date into
    "DD.MM.YYYY", a price into decimal text).
    """

    name: str
    declared: tuple[str, ...]
    kind: str = "text"
    required: bool = False
    default: Any = None
    to: Callable[[Any], Any] | None = None
    #: False: read the declared sources exactly as written (a user's field mapping), no other spelling.
    spelled: bool = True
    #: Every path read, in order: each declared source followed by its other spelling.
    sources: tuple[str, ...] = field(default=(), compare=False)
    compiled: tuple[Source, ...] = field(default=(), compare=False, repr=False)
    reader: Callable[[Any], Any] = field(default=read_text, compare=False, repr=False)
    uses_product: bool = field(default=False, compare=False, repr=False)
    #: `Call.read` of this field as straight-line code (`_straight_read`), made on first use.
    fast_read: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in READERS:
            raise ValueError(f"unknown field kind {self.kind!r}")
        compiled = tuple(_compile(s) for s in (spellings(*self.declared) if self.spelled else self.declared))
        object.__setattr__(self, "sources", tuple(s.path for s in compiled))
        object.__setattr__(self, "compiled", compiled)
        object.__setattr__(self, "reader", READERS[self.kind])
        object.__setattr__(self, "uses_product", any(s.index == _PRODUCT_ROOT for s in compiled))


def F(  # noqa: N802 - reads as a table row
    name: str, *sources: str, kind: str = "text", required: bool = False, default: Any = None,
    to: Callable[[Any], Any] | None = None,
) -> Field:  # fmt: skip
    """A field read from `sources` in order, each in both spellings (see the module docstring)."""
    return Field(name, sources, kind, required, default, to)


#: Off, every `Call.map` takes the general path (the differential test compares the two).
FAST_PATHS = True


Take = Callable[[str, bool], list[str]]


def _plain_day(text: str) -> date | None:
    """`parse_date` of YYYY-MM-DD text without spaces around it (its own first step); None otherwise."""
    if len(text) != 10 or text[0].isspace() or text[-1].isspace():
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


# Per reader: the test that a value `x` is plain (what `Call._read` would take without a warning) and the value
# then read from it, for the straight-line code; another reader's values all go to `Call._read`.
_PLAIN: dict[Callable[[Any], Any], tuple[str, str]] = {
    read_text: ("type(x) is str and x and x.isascii()", "x"),
    read_url: ("type(x) is str and x and x.isascii() and valid_url(x)", "x"),
    read_number: ("(type(x) is int and NEG_LIMIT < x < LIMIT) or (type(x) is float and isfinite(x))", "x"),
    read_bool: ("type(x) is bool", "x"),
    read_flag: ("type(x) is bool", "int(x)"),
    parse_date: ("type(x) is str and (d := plain_day(x)) is not None", "d"),
}


def _field_lines(
    f: Field, i: int, target: str, probe: Any, ns: dict[str, Any], *, take: Take, bail: bool = False
) -> list[str]:  # fmt: skip
    """Straight-line code for one field: its sources looked up in order with exact type checks; a plain
    value of its kind (`_PLAIN`: ASCII text, a valid URL, a finite number, a boolean, an ISO day) taken as
    `Call.read` takes it, and a constant default when no source is present; anything else handed to
    `Call._read`. `take(value, may_be_none)` gives the lines that use a value.

    `bail`: for code without a Call, on the raw message (`Body.fast`): anything `Call._read` or `Call._absent`
    would be asked is given up instead (`return BAIL`), and the message root is the raw message's dict."""
    ns[f"F{i}"], ns[f"T{i}"], ns[f"TO{i}"], ns[f"D{i}"] = f, target, f.to, f.default
    general = ["v = call._read(F" + str(i) + ", item, T" + str(i) + ")", *take("v", True)]
    if bail:
        general = ["return BAIL"]
    if f.reader not in _PLAIN:
        if probe is not None:
            test = " or ".join(f"R{index}.get({key!r}) is not None" for index, key in probe)
            general = [f"if {test}:", *("    " + line for line in general)]
        return general
    lines: list[str] = []
    for depth, source in enumerate(f.compiled):
        pad = "    " * depth
        if depth:
            lines.append(f"{pad[4:]}if x is None:")
        if source.index == _MESSAGE_ROOT and not bail:  # the parsed message model: its fields are attributes
            lines.append(f"{pad}x = getattr(R{source.index}, {source.key!r}, None)")
        else:
            lines.append(f"{pad}x = R{source.index}.get({source.key!r})")
        for key in source.rest:
            lines.append(f"{pad}if x is not None:")
            lines.append(f"{pad}    x = x.get({key!r}) if type(x) is dict else None")
    fast, value = _PLAIN[f.reader]
    # Absent everywhere: a constant default is the value; else `Call._absent` decides when there is a
    # default (a function of the call) or the field is required; else nothing.
    if f.default is not None and not callable(f.default):
        absent = [f"v = TO{i}(D{i})" if f.to is not None else f"v = D{i}", *take("v", True)]
    elif f.required or f.default is not None:
        absent = ["return BAIL"] if bail else [f"v = call._absent(F{i}, item, T{i})", *take("v", True)]
    else:
        absent = ["pass"]
    lines += ["if x is None:", *("    " + line for line in absent)]
    if f.to is not None:
        plain = [f"v = TO{i}({value})", *take("v", True)]
    elif value == "x":
        plain = take("x", False)
    else:
        plain = [f"v = {value}", *take("v", False)]
    lines += [f"elif {fast}:", *("    " + line for line in plain)]
    lines += ["else:", *("    " + line for line in general)]
    return lines


# The roots (ROOTS order) as locals: the generated code reads them without indexing a list.
_UNPACK_ROOTS = "    " + ", ".join(f"R{i}" for i in range(len(ROOTS))) + " = R"


class _Bail(Enum):
    """The one value straight-line code without a Call gives up with (an Enum, so that `is BAIL` narrows a type)."""

    BAIL = "bail"


#: What straight-line code without a Call (`bail`) gives for a message it leaves to the general path.
BAIL: Final = _Bail.BAIL


def _compiled(name: str, lines: list[str], ns: dict[str, Any]) -> Callable[..., Any]:
    ns.update(
        isfinite=math.isfinite,
        valid_url=_valid_url,
        plain_day=_plain_day,
        LIMIT=NUMBER_LIMIT,
        NEG_LIMIT=-NUMBER_LIMIT,
        BAIL=BAIL,
    )
    exec(compile("\n".join(lines), f"<fields of {name}>", "exec"), ns)  # noqa: S102 - made from our declarations
    return ns["fast"]  # type: ignore[no-any-return]


def _straight_line(table: Table) -> Callable[[Call, list[Any], Item | None], dict[str, Any]]:
    """`Call.map` for `table` as straight-line code, made from its declarations once (`_field_lines`):
    the result is always the general path's, since whatever is not plain goes to `Call._read`."""
    ns: dict[str, Any] = {}
    lines = ["def fast(call, R, item):", _UNPACK_ROOTS, "    out = {}"]
    for i, (f, target, probe) in enumerate(table.targets):

        def take(value: str, may_be_none: bool, name: str = f.name) -> list[str]:
            put = f"out[{name!r}] = {value}"
            return [f"if {value} is not None:", f"    {put}"] if may_be_none else [put]

        lines += ["    " + line for line in _field_lines(f, i, target, probe, ns, take=take)]
    lines.append("    return out")
    return _compiled(table.event, lines, ns)


def _straight_read(f: Field) -> Callable[[Call, list[Any], Item | None, str], Any]:
    """`Call.read` of one field as straight-line code (see `_straight_line`)."""
    ns: dict[str, Any] = {}
    lines = ["def fast(call, R, item, T0):", _UNPACK_ROOTS]
    lines += ["    " + line for line in _field_lines(f, 0, "", None, ns, take=lambda value, _: [f"return {value}"])]
    lines.append("    return None")
    del ns["T0"]  # the caller's target, an argument
    return _compiled(f.name, lines, ns)


def _straight_row(row: Row, *, bail: bool = False) -> Callable[..., Any]:
    """`Call.read` of each field of a row, in order, as one piece of straight-line code (see `_straight_line`).
    `bail`: the row's values from the roots of a raw message alone, or BAIL (`Row.plain`)."""
    ns: dict[str, Any] = {}
    lines = ["def fast(R):" if bail else "def fast(call, R, item):", _UNPACK_ROOTS]
    for i, (f, target) in enumerate(row.reads):
        lines.append(f"    v{i} = None")
        lines += [
            "    " + line
            for line in _field_lines(f, i, target, None, ns, take=lambda value, _, i=i: [f"v{i} = {value}"], bail=bail)
        ]
    lines.append(f"    return ({''.join(f'v{i}, ' for i in range(len(row.reads)))})")
    return _compiled(row.name, lines, ns)


def _straight_body(body: Body) -> Callable[[list[Any]], dict[str, Any] | _Bail]:
    """`Call.body` of `body` on the roots of a raw message (`plain_roots`) as straight-line code without a Call,
    made from its declarations once: the body when every value it reads is plain (`_PLAIN`), else BAIL, and the
    general path maps the message (so the two give the same, or this gives nothing)."""
    ns: dict[str, Any] = {"CONSTANTS": body.constants}
    lines = ["def fast(R):", _UNPACK_ROOTS, "    out = dict(CONSTANTS)"]
    if body.product:  # `Call.product`: `properties` when it names a product; one item of `products` is left to it
        test = " and ".join(f"R0.get({key!r}) is None" for key in _PRODUCT_KEYS)
        lines += [f"    if {test}:", "        return BAIL", f"    R{_PRODUCT_ROOT} = R0"]

    def fields_of(table: Table, out: str, pad: str, first: int) -> list[str]:
        code = []
        for i, (f, target, probe) in enumerate(table.targets, first):

            def take(value: str, may_be_none: bool, name: str = f.name) -> list[str]:
                put = f"{out}[{name!r}] = {value}"
                return [f"if {value} is not None:", f"    {put}"] if may_be_none else [put]

            code += [pad + line for line in _field_lines(f, i, target, probe, ns, take=take, bail=True)]
        return code

    lines += fields_of(body.table, "out", "    ", 0)
    first = len(body.table.targets)
    for n, (key, table) in enumerate(body.each):
        # `Call.products`: a list of objects; one object, or none at all, is left to the general path.
        lines += [
            "    P = R0.get('products')",
            "    if type(P) is not list or not P:",
            "        return BAIL",
            f"    L{n} = []",
            f"    for R{_PRODUCT_ROOT} in P:",
            f"        if type(R{_PRODUCT_ROOT}) is not dict:",
            "            return BAIL",
            "        o = {}",
            *fields_of(table, "o", "        ", first),
            f"        L{n}.append(o)",
            f"    out[{key!r}] = L{n}",
        ]
        first += len(table.targets)
    lines.append("    return out")
    return _compiled(body.name, lines, ns)


def _probe(f: Field) -> tuple[tuple[int, str], ...] | None:
    if f.required or f.default is not None or any(s.rest or s.index == _MESSAGE_ROOT for s in f.compiled):
        return None
    return tuple((s.index, s.key) for s in f.compiled)


class Table:
    """The declared fields of one vendor event (or of one object inside it, with `prefix`).

    Each field's stable name is `<event>.<prefix><name>` (`PRODUCT_VIEW.image`,
    `productViewed.product.productId`): what errors, warnings and `destinations list` call it.
    """

    def __init__(self, event: str, *fields: Field, prefix: str = "") -> None:
        self.event = event
        self.prefix = prefix
        self.fields = fields
        self._by_name = {f.name: f for f in fields}
        #: (field, how errors and warnings name it, probe), made once: `map` runs for every message. The
        #: probe lists the (root, key) pairs of an optional field read from plain keys only, so that an
        #: absent field costs a few dict lookups instead of a read.
        self.targets = tuple((f, f"{event} ({prefix}{f.name})", _probe(f)) for f in fields)
        self.uses_product = any(f.uses_product for f in fields)
        #: `Call.map` for a call without field mappings, as straight-line code made from these declarations.
        self.fast_map = _straight_line(self)

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def keys_of(self, *roots: str) -> frozenset[str]:
        """Every first key these fields read under the given roots (what a passthrough must skip)."""
        return frozenset(s.key for f in self.fields for s in f.compiled if s.root in roots)

    def key(self, f: Field) -> str:
        return f"{self.event}.{self.prefix}{f.name}"

    def describe(self) -> list[dict[str, Any]]:
        """Name, sources, kind and required for each field (for `destinations list NAME`)."""
        return [
            {
                "field": self.key(f),
                "sources": list(f.sources),
                "kind": f.kind,
                "required": f.required,
                "default": getattr(f.default, "__name__", None) or f.default,
            }
            for f in self.fields
        ]


class Row:
    """Fields a computed value reads together, each for its own target (`<vendor event> (<field>)`): `Call.row`
    reads them in order, as `Call.read` reads each, in one piece of straight-line code. No product fields."""

    def __init__(self, name: str, *reads: tuple[Field, str]) -> None:
        if any(f.uses_product for f, _ in reads):
            raise ValueError("a row reads no product fields")
        self.name = name
        self.reads = reads
        self.fast = _straight_row(self)
        #: The values on the roots of a raw message alone (`plain_roots`), or BAIL where the general path must read.
        self.plain: Callable[[list[Any]], tuple[Any, ...] | _Bail] = _straight_row(self, bail=True)


@dataclass(frozen=True, eq=False)  # a declaration: itself alone, compared and hashed by identity
class Body:
    """One vendor event's body as declared: `constants` first (`{"name": "CHECKOUT", "step": "purchase"}`), then
    the fields of `table` that have a value (read for the event's product when `product`: `Call.product`), then
    each `(key, table)` of `each` as a list, the table's fields for each item of `properties.products`
    (`each_required`: an InvalidMessage when there is none, naming `name` and the key).

    `Call.body` builds it for any message; `fast`, made once from the same declarations, builds it from the roots
    of a raw message (`plain_roots`) when every value it reads is plain, and gives BAIL otherwise."""

    name: str
    constants: Mapping[str, Any]
    table: Table
    product: bool = False
    each: tuple[tuple[str, Table], ...] = ()
    each_required: bool = False
    fast: Callable[[list[Any]], dict[str, Any] | _Bail] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.table.uses_product and not self.product:
            raise ValueError(f"{self.name}: {self.table.event} reads a product's fields: declare it with product=True")
        object.__setattr__(self, "fast", _straight_body(self))


def plain_roots(properties: dict[str, Any], context: dict[str, Any], options: dict[str, Any],
                message: dict[str, Any]) -> list[Any]:  # fmt: skip
    """The roots (ROOTS order) of a raw track, page or screen message whose parts `spec.plain_parts` gave, as a
    Call derives them from its parsed form (`_Parts`): no traits of its own, `context.traits` when an object."""
    return [properties, {}, _context_traits(context), options, None, context, message]


def _context_traits(context: Mapping[str, Any]) -> dict[str, Any]:
    """`context.traits` when it is an object, else none (MAPPINGS "Real traffic")."""
    traits = context.get("traits")
    if type(traits) is not dict:
        traits = traits if isinstance(traits, dict) else {}
    return traits  # type: ignore[no-any-return]


# Sources shared by every vendor (MAPPINGS "Shared" and "Real traffic"), declared once.
PRODUCT_ID = ("product.product_id", "product.id", "product.sku")
VARIANT_ID = ("product.variant_id", *PRODUCT_ID)
CURRENCY = ("product.currency", "properties.currency")
EMAIL = ("traits.email", "properties.email")
PHONE = ("traits.phone", "properties.phone")
ORDER_TOTAL = ("properties.total", "properties.revenue", "properties.value")
CART_TOTAL = ("properties.total", "properties.value", "properties.revenue")
CART_IDS = ("properties.cart_id", "properties.checkout_id")
# What connects a cart to its purchase: cart_id ‖ checkout_id ‖ order_id (MAPPINGS "Real traffic").
CART_PURCHASE_IDS = (*CART_IDS, "properties.order_id")


def present(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` without its nulls: no vendor payload carries a null (MAPPINGS "Shared")."""
    return {k: v for k, v in values.items() if v is not None}


def full_name(call: Call, _: Item | None = None) -> str | None:
    """After `traits.name`: the traits' firstName + " " + lastName (or the one given), then the same
    from `properties` (MAPPINGS "Shared": contact fields come from the traits, then the properties)."""
    if _TRAITS_NAME_KEYS.isdisjoint(call.traits) and _PROPERTIES_NAME_KEYS.isdisjoint(call.properties):
        return None  # no part of a name anywhere: nothing to read
    parts = call.row(_TRAITS_NAME_PARTS)
    if not any(parts):
        name = call.read(_PROPERTIES_NAME)
        if name:
            return name
        parts = call.row(_PROPERTIES_NAME_PARTS)
    return " ".join(p for p in parts if p) or None


def line_item_sum(call: Call, _: Item | None = None) -> Number | None:
    """sum(price x quantity) of the products that have a price, in decimal (MAPPINGS "Shared").

    A price or quantity that cannot be read makes the sum unreadable (`Unreadable`, naming its path):
    a total is never built from part of the cart.
    """
    terms = []
    for item in call.products:
        price = call.strict(ITEM_PRICE, item)
        if price is not None:
            terms.append((price, call.strict(ITEM_QUANTITY, item)))
    return money_sum(terms) if terms else None


LOCALE = F("locale", "context.locale")
FIRST_NAME = F("firstName", "traits.first_name", "properties.first_name")
LAST_NAME = F("lastName", "traits.last_name", "properties.last_name")
_TRAITS_FIRST = F("firstName", "traits.first_name")
_TRAITS_LAST = F("lastName", "traits.last_name")
_PROPERTIES_NAME = F("name", "properties.name")
_PROPERTIES_FIRST = F("firstName", "properties.first_name")
_PROPERTIES_LAST = F("lastName", "properties.last_name")
_TRAITS_NAME_PARTS = Row("name", (_TRAITS_FIRST, ""), (_TRAITS_LAST, ""))
_PROPERTIES_NAME_PARTS = Row("name", (_PROPERTIES_FIRST, ""), (_PROPERTIES_LAST, ""))
# The keys `full_name` reads, in the traits (either root) and the properties.
_TRAITS_NAME_KEYS = frozenset(s.key for f in (_TRAITS_FIRST, _TRAITS_LAST) for s in f.compiled)
_PROPERTIES_NAME_KEYS = frozenset(
    s.key for f in (_PROPERTIES_NAME, _PROPERTIES_FIRST, _PROPERTIES_LAST) for s in f.compiled
)
#: Rows that several vendors' tables share.
ITEM_PRICE = F("price", "product.price", kind="number")
ITEM_QUANTITY = F("quantity", "product.quantity", kind="number", default=1)
ITEM_CURRENCY = F("currency", *CURRENCY)

# --- the per-message reader ----------------------------------------------------------------------


class Unreadable(ValueError):
    """A value that cannot be read, with its Segment path (raised by `Call.strict` and computed defaults)."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path} {rule}")
        self.path = path
        self.rule = rule


class Item(NamedTuple):
    """A product: the object it is read from and its Segment path (`properties.products[1]`)."""

    raw: Mapping[str, Any]
    path: str


def _item_paths(at: str, key: str, count: int) -> tuple[str, ...]:
    """The Segment paths of the items of a list: `properties.products[0]`, ..."""
    return _short_item_paths(at, key, count) if count <= 64 else tuple(f"{at}.{key}[{i}]" for i in range(count))


@lru_cache(maxsize=256)  # the same few short lists (properties.products) in every message
def _short_item_paths(at: str, key: str, count: int) -> tuple[str, ...]:
    return tuple(f"{at}.{key}[{i}]" for i in range(count))


_PRODUCT_KEYS = tuple(s.keys[0] for s in (_compile(p) for p in spellings(*PRODUCT_ID)))
_TIME_SOURCES = ("timestamp", "originalTimestamp", "receivedAt", "sentAt")


# (track, has properties, has traits) of each message model: `Call` asks for every message.
_SHAPES: dict[type, tuple[bool, bool, bool]] = {
    Track: (True, True, False), Page: (False, True, False), Screen: (False, True, False),
    Identify: (False, False, True), Group: (False, False, True), Alias: (False, False, False),
    Message: (False, False, False),
}  # fmt: skip


_UNREAD: Any = object()
_NESTED = (dict, list)


class _Parts:
    """What every destination's `Call` derives alike from one message: its canonical event, properties, traits
    and the roots they are read from; its products as items and its time once read (`Call.products`, `time`)."""

    __slots__ = ("context_traits", "event", "moment", "own", "products", "properties", "traits")

    def __init__(self, message: Message) -> None:
        kind = type(message)
        shape = _SHAPES.get(kind)
        if shape is None:  # a subclass of a message model: found the slow way
            shape = (
                issubclass(kind, Track),
                issubclass(kind, Track | Page | Screen),
                issubclass(kind, Identify | Group),
            )
        track, has_properties, has_traits = shape
        self.event: str = canonical_event(message.event) if track else message.type  # type: ignore[attr-defined]
        self.properties: dict[str, Any] = message.properties if has_properties else {}  # type: ignore[attr-defined]
        # Not getattr: a pydantic model raises and catches AttributeError for a missing field, which is slow.
        own = message.traits if has_traits else {}  # type: ignore[attr-defined]
        context_traits = _context_traits(message.context)
        self.own: dict[str, Any] = own
        self.context_traits: dict[str, Any] = context_traits
        if own and context_traits:  # a null own trait leaves the context's value
            self.traits: dict[str, Any] = (
                # By identity: `in` would ask each value's own __eq__, which a library caller's object may refuse.
                {**context_traits, **own} if not any(v is None for v in own.values())
                else {**context_traits, **{k: v for k, v in own.items() if v is not None}}
            )  # fmt: skip
        else:
            self.traits = own or context_traits
        self.products: tuple[Item, ...] | None = None
        self.moment: datetime | None = _UNREAD


# Per thread, the message the intake is mapping for each destination in turn (`sharing`), with its parts once a
# Call has derived them: (None, None) outside that loop. Each Call checks the message is the very one shared.
_SHARED = threading.local()
_NOT_SHARED: tuple[Any, _Parts | None] = (None, None)


def sharing(message: Any) -> None:
    """Map `message` for several destinations in turn, in this thread, with its parts derived once (`_Parts`),
    until `sharing` names another message or None. Only for a message its caller does not change meanwhile: the
    parts are taken from it once."""
    _SHARED.slot = (message, None) if message is not None else (None, None)


def _share(message: Message) -> _Parts:
    parts = _Parts(message)
    _SHARED.slot = (message, parts)
    return parts


def visitor_of(user_id: str | None, anonymous_id: str | None) -> str:
    """The visitor a vendor's userId names: userId || anonymousId (`Call.visitor_id`)."""
    return user_id or anonymous_id or ""


def moment_of(value: Any) -> datetime:
    """A message time (`Call.time`) in UTC: a datetime, or ISO-8601 text (naive taken as UTC). ValueError else."""
    moment = value if isinstance(value, datetime) else parse_iso_datetime(value)
    return utc(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def _time_given(value: Any) -> bool:
    """Whether a message time is given: neither null nor empty text (by its type: a caller's object may refuse `==`)."""
    return value is not None and not (isinstance(value, str) and not value)


def plain_time(message: dict[str, Any]) -> datetime | _Bail | None:
    """`Call.time` of a raw message (`spec.plain_parts` took its top level as the model keeps it): the first given
    time in UTC, None when none is, or BAIL when it cannot be read (the general path says so)."""
    for key in _TIME_SOURCES:
        value = message.get(key)
        if not _time_given(value):
            continue
        try:
            return moment_of(value)
        except ValueError:
            return BAIL
    return None


class Call:
    """One message as a vendor mapper sees it: the parsed model, the options, and the readers.

    Errors raised through it name the event, the Segment path and the vendor rule; values of optional
    fields that cannot be read are left out and recorded in `warnings`.
    """

    __slots__ = (
        "_item", "_parts", "_roots", "custom_name", "event", "message", "options", "overrides",
        "properties", "settings", "traits", "vendor", "warnings",
    )  # fmt: skip

    def __init__(
        self, message: Message, options: dict[str, Any], settings: Any, vendor: str,
        overrides: dict[Any, Field] | None = None,
    ) -> None:  # fmt: skip
        self.message = message
        self.options = options if isinstance(options, dict) else {}
        self.settings = settings
        self.vendor = vendor
        shared = getattr(_SHARED, "slot", _NOT_SHARED)
        # One of several destinations mapping this message (`sharing`): its parts are derived once for all.
        parts = (shared[1] or _share(message)) if shared[0] is message else _Parts(message)
        self._parts = parts
        self.event = parts.event
        #: The call's properties ({} for identify, group and alias).
        self.properties: dict[str, Any] = parts.properties
        #: `traits` over `context.traits` (MAPPINGS "Real traffic"), for values passed through as they are.
        self.traits: dict[str, Any] = parts.traits
        self._item: Item | None = None
        self.warnings: list[MappingWarning] = []
        #: The destination instance's field mappings, to read instead of a declared field: by id(field) for a
        #: field name, by (id(table), id(field)) for a stable name (shaping.field_overrides).
        self.overrides: dict[Any, Field] = overrides if overrides is not None else {}
        #: The vendor event name a user gave this custom event (customEventNames), if any.
        self.custom_name: str | None = None
        # In ROOTS order; the product's slot is filled for each read that uses it.
        self._roots: list[Any] = [
            parts.properties, parts.own, parts.context_traits, self.options, None, message.context, message
        ]  # fmt: skip

    # -- errors

    @property
    def label(self) -> str:
        return self.message.event_label

    def fail(self, path: str, rule: str) -> InvalidMessage:
        return InvalidMessage(self.label, path, rule)

    def warn(self, path: str, rule: str, target: str) -> None:
        """Record that the value at `path` was left out of `target` ("<vendor event> (<field>)")."""
        self.warnings.append(MappingWarning(self.label, path, rule, self.vendor, target))

    def path_of(self, f: Field) -> str:
        """The Segment path a field is first read from (a user's field mapping included): what an error
        names when a rule over several fields fails."""
        f = self.overrides.get(id(f), f) if self.overrides else f
        return self._path(f.compiled[0], None) if f.compiled else f.name

    def require(self, value: Any, path: str, target: str) -> Any:
        """`value`, or an InvalidMessage saying `path` is required by `target` (vendor event and field)."""
        if value is None or value == "" or value == []:  # noqa: PLR1714 - a list is unhashable
            raise self.fail(path, f"is required by {self.vendor} {target}")
        return value

    # -- declared fields

    def trait_path(self, key: str) -> str:
        """The Segment path of a trait as `self.traits` holds it: `traits.x`, or `context.traits.x`."""
        own = self._roots[1]
        return f"traits.{key}" if own.get(key) is not None or not self._roots[2].get(key) else f"context.traits.{key}"

    def _path(self, source: Source, item: Item | None) -> str:
        root, keys = source.root, source.keys
        if root == "product":
            return f"{(item or self.product()).path}.{'.'.join(keys)}"
        if root == "options":
            return f"integrations.{self.vendor}.{'.'.join(keys)}"
        return source.path

    def read(self, f: Field, item: Item | None = None, target: str = "") -> Any:
        """The value of a declared field: the first of its sources that is present.

        Plain values take the field's straight-line code (`_straight_read`); the rest, this general path.
        """
        if self.overrides:
            f = self.overrides.get(id(f), f)
        if not FAST_PATHS:
            return self._read(f, item, target)
        fast = f.fast_read
        if fast is None:
            fast = _straight_read(f)
            object.__setattr__(f, "fast_read", fast)
        roots = self._roots
        if f.uses_product:
            roots[_PRODUCT_ROOT] = (item or self.product()).raw
        return fast(self, roots, item, target)

    def row(self, row: Row) -> tuple[Any, ...]:
        """The value of each field of `row`, in order (`Call.read` of each)."""
        if self.overrides or not FAST_PATHS:
            return tuple([self.read(f, None, target) for f, target in row.reads])
        return row.fast(self, self._roots, None)

    def _read(self, f: Field, item: Item | None = None, target: str = "") -> Any:
        """The value of a declared field: the first of its sources that is present.

        Optional field: a present value that cannot be read is skipped with a warning and the next
        source is tried; the `default` applies only when no source was present at all. Required
        field: a value that cannot be read is an InvalidMessage naming its path, as is a field that no
        source gives a value (naming the first source path). `target` names the field in both:
        `<vendor event> (<field>)`.
        """
        if self.overrides:
            f = self.overrides.get(id(f), f)
        roots = self._roots
        if f.uses_product:
            roots[_PRODUCT_ROOT] = (item or self.product()).raw
        reader = f.reader
        present = False
        for source in f.compiled:
            value = roots[source.index]
            value = getattr(value, source.key, None) if source.index == _MESSAGE_ROOT else value.get(source.key)
            if value is None:
                continue
            for key in source.rest:
                value = value.get(key) if type(value) is dict else None
                if value is None:
                    break
            kind = type(value)
            if kind is str:
                if not value:
                    continue
                if value.isascii() and (reader is read_text or (reader is read_url and _valid_url(value))):
                    return value if f.to is None else f.to(value)  # the common cases, without a call
            elif (kind is int or (kind is float and math.isfinite(value))) and reader is read_number:
                if kind is float or -NUMBER_LIMIT < value < NUMBER_LIMIT:
                    return value if f.to is None else f.to(value)
            elif value is None or (kind is list and not value):
                continue
            present = True
            try:
                out = reader(value)
            except ValueError as exc:
                path, rule = self._place(self._path(source, item), str(exc))
                if f.required:
                    raise self.fail(path, f"{rule}, and {self.vendor} {target or f.name} requires it") from None
                self.warn(path, rule, target or f.name)
                continue
            return f.to(out) if f.to is not None else out
        if not present:
            return self._absent(f, item, target)
        if f.required:
            self._missing(f, item, target)
        return None

    def _absent(self, f: Field, item: Item | None, target: str) -> Any:
        """The value of a declared field that no source gives: its default, else None (see `_read`)."""
        if f.default is not None:
            try:
                out = f.default(self, item) if callable(f.default) else f.default
            except Unreadable as exc:
                if f.required:
                    raise self.fail(exc.path, f"{exc.rule}, and {self.vendor} {target or f.name} requires it") from None
                self.warn(exc.path, exc.rule, target or f.name)
                return None
            if out is not None:
                return f.to(out) if f.to is not None else out
        if f.required:
            self._missing(f, item, target)
        return None

    def strict(self, f: Field, item: Item | None = None) -> Any:
        """Like `read`, but a present value that cannot be read raises `Unreadable` (for computed values)."""
        if self.overrides:
            f = self.overrides.get(id(f), f)
        roots = self._roots
        for source in f.compiled:
            index = source.index  # the source's value, read here: a price is read for every product
            value = (item or self.product()).raw if index == _PRODUCT_ROOT else roots[index]
            value = getattr(value, source.key, None) if index == _MESSAGE_ROOT else value.get(source.key)
            for key in source.rest:
                if value is None:
                    break
                value = value.get(key) if type(value) is dict else None
            kind = type(value)
            if f.reader is read_number and (
                (kind is float and math.isfinite(value)) or (kind is int and -NUMBER_LIMIT < value < NUMBER_LIMIT)
            ):
                return value if f.to is None else f.to(value)  # a plain number (a price), without a call
            if value is None or value == "" or value == []:  # noqa: PLR1714 - a list is unhashable
                continue
            try:
                out = f.reader(value)
            except ValueError as exc:
                raise Unreadable(*self._place(self._path(source, item), str(exc))) from None
            return f.to(out) if f.to is not None else out
        return f.default(self, item) if callable(f.default) else f.default

    @staticmethod
    def _place(path: str, rule: str) -> tuple[str, str]:
        """A rule that starts with a place inside the value ('[2].x: ...') extends the path."""
        if rule[:1] in (".", "["):
            inner, _, rest = rule.partition(": ")
            return path + inner, rest
        return path, rule

    def _missing(self, f: Field, item: Item | None, target: str) -> None:
        first, *others = (self._path(s, item) for s in f.compiled)
        rule = f"is required by {self.vendor} {target or f.name}"
        if others:
            rule += f"; also read from {', '.join(others)}"
        raise self.fail(first, rule)

    def map(self, table: Table, item: Item | None = None) -> dict[str, Any]:
        """Every field of `table` that has a value, in declared order, by vendor field name."""
        roots, overrides = self._roots, self.overrides
        if table.uses_product:
            item = item or self.product()
            roots[_PRODUCT_ROOT] = item.raw
        if not overrides and FAST_PATHS:
            return table.fast_map(self, roots, item)
        read = self._read
        out: dict[str, Any] = {}
        table_id = id(table)
        for f, target, probe in table.targets:
            field = f
            if overrides:  # a field the user mapped: read from that path, whatever the probe says
                field = overrides.get((table_id, id(f)), f)
            if probe is not None and field is f and not (overrides and id(f) in overrides):
                for index, key in probe:
                    if roots[index].get(key) is not None:
                        break
                else:
                    continue
            value = read(field, item, target)
            if value is not None:
                out[f.name] = value
        return out

    def body(self, declared: Body) -> dict[str, Any]:
        """A declared body (`Body`) for this message: its lists' products read first, then its constants, its
        table's fields and its lists, in that order."""
        if not declared.each:
            return {**declared.constants, **self.map(declared.table, self.product() if declared.product else None)}
        lists = [(key, table, self.products) for key, table in declared.each]
        if declared.each_required:
            for key, _, items in lists:
                if not items:
                    raise self.fail(
                        "properties.products",
                        f"is required by {self.vendor} {declared.name} ({key}), one product at least",
                    )
        out = {**declared.constants, **self.map(declared.table, self.product() if declared.product else None)}
        for key, table, items in lists:
            out[key] = self.map_each(table, items)
        return out

    def map_each(self, table: Table, items: list[Item]) -> list[dict[str, Any]]:
        """`map` of `table` for each item, in order (a product list): one loop over the straight-line code."""
        if self.overrides or not FAST_PATHS or not table.uses_product:
            return [self.map(table, item) for item in items]
        roots, fast, out = self._roots, table.fast_map, []
        for item in items:
            roots[_PRODUCT_ROOT] = item.raw
            out.append(fast(self, roots, item))
        return out

    # -- products

    def _products_count(self) -> int:
        products = self.properties.get("products")
        return len(products) if isinstance(products, list) else 1 if isinstance(products, dict) else 0

    def product(self) -> Item:
        """The product of a single-product event: `properties`, unless it has no product id and
        `properties.products` holds exactly one item, which is then the product (MAPPINGS "Real traffic")."""
        if self._item is None:
            props = self.properties
            item = new_tuple(Item, (props, "properties"))
            for key in _PRODUCT_KEYS:
                if props.get(key) is not None:
                    break
            else:
                count = self._products_count()
                if count == 1:
                    item = self.products[0]
                elif count > 1:
                    raise self.fail(
                        "properties.product_id",
                        f"is required by {self.vendor} to tell which product is meant: properties.products has "
                        f"{count} items (send the product's fields in properties, or one item)",
                    )
            self._item = item
        return self._item

    @property
    def has_products(self) -> bool:
        return self.properties.get("products") is not None

    @property
    def products(self) -> list[Item]:
        """`properties.products` as items; one object counts as a list of one; [] when absent. A list of this
        call's own: the items are read once per message (`sharing`), and a mapper may change its list."""
        parts = self._parts
        if parts.products is None:
            parts.products = tuple(self.objects("products"))
        return list(parts.products)

    def objects(self, key: str, within: Item | None = None) -> list[Item]:
        """`properties.<key>` (or `<key>` of another item) as a list of objects with their paths; one
        object counts as a list of one; an error when it is neither."""
        raw, at = (self.properties, "properties") if within is None else within
        items = raw.get(key)
        if items is None:
            return []
        if isinstance(items, dict):
            return [new_tuple(Item, (items, f"{at}.{key}"))]
        if not isinstance(items, list):
            raise self.fail(f"{at}.{key}", "must be a list of objects")
        paths = _item_paths(at, key, len(items))
        out = []
        for i, obj in enumerate(items):  # by index: zip's check of equal lengths costs more than a cart's items
            if type(obj) is not dict and not isinstance(obj, dict):
                raise self.fail(paths[i], "must be an object")
            out.append(new_tuple(Item, (obj, paths[i])))
        return out

    # -- values passed through as they are

    def passthrough(
        self, values: Mapping[str, Any], root: str, target: str, skip: Any = (), *, flat: bool = False
    ) -> dict[str, Any]:
        """The entries of `values` not in `skip`, nulls left out, each made sendable; an entry that
        cannot be sent (lone surrogate, nesting too deep) is left out with a warning. `flat`: objects and
        lists as compact JSON text (`flat`)."""
        out: dict[str, Any] = {}
        if self.overrides and root in ("traits", "properties"):
            # A value a user's field mapping (by field name) reads is sent in that field, not again as its own key.
            roots = ("traits", "context.traits") if root == "traits" else (root,)
            skip = {
                *skip,
                *(
                    s.key
                    for k, f in self.overrides.items()
                    if isinstance(k, int)
                    for s in f.compiled
                    if s.root in roots
                ),
            }
        for key, value in values.items():
            if value is None or key in skip:
                continue
            if type(key) is str and not key.isascii() and has_surrogate(key):
                self.warn(root, f"has a key that {LONE_SURROGATE}", target)
                continue
            kind = type(value)
            if (
                (kind is str and value.isascii())
                or kind is bool
                or (kind is float and math.isfinite(value))
                or (kind is int and -NUMBER_LIMIT < value < NUMBER_LIMIT)
            ):
                out[key] = value  # sendable as it is (text, a flag, a total): the common cases, without a call
                continue
            try:
                clean = sendable(value, 1)
            except ValueError as exc:
                path = self.trait_path(key) if values is self.traits else f"{root}.{key}"
                self.warn(*self._place(path, str(exc)), target)
                continue
            if clean is not None:
                # `sendable` gives objects and lists as plain dicts and lists.
                out[key] = compact_json(clean) if flat and type(clean) in _NESTED else clean
        return out

    def flat(self, values: Mapping[str, Any], root: str, target: str, skip: Any = ()) -> dict[str, Any]:
        """`passthrough` with objects and lists as compact JSON text: a flat map of scalars."""
        return self.passthrough(values, root, target, skip, flat=True)

    # -- identity, time and context

    @property
    def user_id(self) -> str | None:
        """The Segment userId (None for an anonymous visitor)."""
        return self.message.userId

    @property
    def visitor_id(self) -> str:
        """userId || anonymousId (the handler has checked that one exists)."""
        return visitor_of(self.message.userId, self.message.anonymousId)

    def time(self, target: str, *, required: bool = False) -> datetime | None:
        """The message time in UTC: the first present of timestamp, originalTimestamp, receivedAt and
        sentAt, and only that one is checked (MAPPINGS "Real traffic"). None when none is present; when
        it cannot be read, None with a warning, or an InvalidMessage when `required`."""
        parts = self._parts
        if parts.moment is not _UNREAD:  # read for an earlier destination of a shared message
            return parts.moment
        for key in _TIME_SOURCES:
            value = getattr(self.message, key, None)
            if not _time_given(value):
                continue
            try:
                parts.moment = moment_of(value)
                return parts.moment
            except ValueError as exc:  # not kept: each destination warns, or fails, on its own
                rule = str(exc)
                if required:
                    raise self.fail(key, f"{rule}, and {self.vendor} {target} needs it") from None
                self.warn(key, rule, target)
                return None
        parts.moment = None
        return None

    @property
    def language(self) -> str | None:
        """The language of `context.locale` ('en-US' -> 'en'); an unreadable locale is left out with a warning."""
        locale = self.read(LOCALE, target="event (language)")
        return language(locale) if locale else None
