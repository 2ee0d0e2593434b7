"""`destinations.toml`: loading, `${ENV}` references and validation with errors that name the key."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from .base import Destination, describe_settings_errors, http_url, origin_of
from .errors import ConfigurationError
from .registry import destination_types, get_destination

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(value: Any) -> float:
    """Seconds from a number or text such as "90s", "15m", "4h", "1d"."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as 30, "90s", "15m" or "4h"')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError('must be a duration such as 30, "90s", "15m" or "4h"')
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Settings checked against others (`lease` against the timeouts): a problem of one is not told when another it
    #: is checked against was left out for a variable not set (it would be checked against a default).
    checked_against: ClassVar[dict[str, frozenset[str]]] = {}


# The largest batch Segment's Webhooks (Actions) sends with its defaults: 1,000 events (segment-docs,
# catalog/actions-webhook) of at most 32 KB each (Segment's limit for one event). README "Ways in".
WEBHOOK_MAX_BODY_BYTES = 32 * 1024 * 1024


class ServerConfig(_Table):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    write_keys: list[SecretStr] = Field(default_factory=list)
    # One secret, or several while Segment's shared secret is being rotated (any one that matches passes).
    webhook_secret: list[SecretStr] = Field(default_factory=list)
    delivery: Literal["outbox", "direct"] = "outbox"
    max_body_bytes: int = Field(default=512_000, gt=0)
    webhook_max_body_bytes: int = Field(default=WEBHOOK_MAX_BODY_BYTES, gt=0)
    # Origins (scheme://host[:port]) whose pages may post to the tracking routes from a browser; "*" any.
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("write_keys")
    @classmethod
    def _no_blank_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        return [k for k in keys if k.get_secret_value().strip()]

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str | SecretStr) else value

    @field_validator("webhook_secret")
    @classmethod
    def _no_blank_secrets(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        # A blank secret (an unset ${VAR:-}) must not quietly turn the signature check off.
        if any(not s.get_secret_value().strip() for s in secrets):
            raise ValueError("must not be blank; remove the key to take unsigned calls")
        return secrets

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError('must be a list of origins such as ["https://shop.example"], or "*"')
        out = []
        for origin in value:
            if origin == "*":
                out.append(origin)
                continue
            text = origin.strip().rstrip("/") if isinstance(origin, str) else ""
            found = origin_of(text) if re.fullmatch(r"https?://[^/?#\s@]+", text, re.IGNORECASE) else None
            if found is None:
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], without a path")
            # As a browser writes it: lower case, the host IDNA-encoded, without its scheme's default port.
            default_port = ":80" if found.startswith("http:") else ":443"
            out.append(found.removesuffix(default_port))
        return out


class OutboxConfig(_Table):
    """Where the outbox lives and how it delivers; durations in seconds or as "15m", "4h"."""

    checked_against: ClassVar[dict[str, frozenset[str]]] = {"lease": frozenset({"connect_timeout", "read_timeout"})}

    path: Path = Path("var/outbox.sqlite3")
    batch_size: int = Field(default=100, ge=1, le=10_000)
    batch_bytes: int = Field(default=500_000, ge=1_000)
    concurrency: int = Field(default=4, ge=1, le=64)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retry_window: float = 4 * 3600.0
    min_attempts: int = Field(default=3, ge=1)
    backoff_base: float = 1.0
    backoff_cap: float = 600.0
    max_retry_after: float = 600.0
    lease: float | None = None  # seconds a claim is held; default connect + read timeout + 10 s
    dedupe_window: float = 24 * 3600.0
    cart_ttl: float = 30 * 24 * 3600.0  # a cart the package keeps (carts.py) is forgotten when untouched this long

    @field_validator("cart_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("lease")
    @classmethod
    def _lease_outlasts_a_call(cls, lease: float | None, info: ValidationInfo) -> float | None:
        # A claim that ends while its call may still be waiting lets a second worker send the same request.
        call = info.data.get("connect_timeout", 5.0) + info.data.get("read_timeout", 30.0)
        if lease is not None and lease <= call:
            raise ValueError(
                f"must be longer than connect_timeout + read_timeout ({call:g} s), or a slow vendor gets the same"
                " request twice"
            )
        return lease

    @property
    def lease_seconds(self) -> float:
        """How long a claimed request stays with its worker before another may take it (a crash)."""
        return self.lease if self.lease is not None else self.connect_timeout + self.read_timeout + 10.0

    @field_validator(
        "connect_timeout", "read_timeout", "retry_window", "backoff_base", "backoff_cap", "max_retry_after",
        "lease", "dedupe_window", "cart_ttl", mode="before",
    )  # fmt: skip
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else duration(value)


class RudderConfig(_Table):
    """The RudderStack transformer routes: where rudder-transformer is, for what this package does not own."""

    # rudder-transformer's address (http://host:9090): every transformer request for another destination
    # type, a user transformation or a source is passed there unchanged. Absent: those are answered 404.
    upstream: str | None = None
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 600.0  # a user transformation may take long; rudder-server waits too

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return http_url(value.strip())  # a host and port a request can go to, as for a destination's base URL

    @field_validator("upstream_connect_timeout", "upstream_read_timeout", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float:
        return duration(value)


class DebuggerConfig(_Table):
    """The live debugger (`GET /debugger` of `serve`): what it keeps and who may see it."""

    enabled: bool = True
    keep: int = Field(default=1000, ge=1, le=1_000_000)  # the last messages kept, with their outcomes
    # Required to listen beyond loopback; sent as `Authorization: Bearer …` or through the page's login form.
    token: SecretStr | None = None

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (it guards every message the server took)")
        return value

    @property
    def keep_count(self) -> int:
        """Messages kept, 0 when the debugger is off (what the outbox is given)."""
        return self.keep if self.enabled else 0


@dataclass(frozen=True)
class Config:
    """A validated configuration: server, outbox and the destination instances by name."""

    server: ServerConfig = field(default_factory=ServerConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    destinations: dict[str, Destination] = field(default_factory=dict)
    source: str = "(defaults)"
    rudder: RudderConfig = field(default_factory=RudderConfig)
    debugger: DebuggerConfig = field(default_factory=DebuggerConfig)
    #: Instances the file names that could not be made here, with why (an unset variable holding a vendor key, any
    #: setting refused): only with `instances_needed` False, for the commands that read and change rows alone
    #: (`outbox stats|dead|replay`).
    unconfigured: dict[str, str] = field(default_factory=dict)


def expand_env(value: Any, where: str, environ: Mapping[str, str], unset: list[str] | None = None) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string; a missing variable is an error naming `where`, or,
    with `unset`, that error's text noted there and the variable read as empty."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problem = f"{where}: environment variable {name} is not set"
            if unset is None:
                raise ConfigurationError(problem)
            unset.append(problem)
            return ""

        return _ENV_REF.sub(replace, value)
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", environ, unset) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}", environ, unset) for k, v in value.items()}
    return value


def _expanded(table: dict[str, Any], where: str, environ: Mapping[str, str], problems: list[str], known: Any
              ) -> tuple[dict[str, Any], frozenset[str]]:  # fmt: skip
    """A table's keys with their variables expanded, less the settings (`known`) holding a variable that is not set
    (each such variable a problem: `<where> <key>: environment variable X is not set`), so that the others are still
    checked; and those settings. A key that is no setting stays, to be named for that too."""
    out: dict[str, Any] = {}
    left_out: set[str] = set()
    for key, value in table.items():
        unset: list[str] = []
        out[key] = expand_env(value, f"{where} {key}", environ, unset)
        problems.extend(unset)
        if unset and key in known:
            del out[key]
            left_out.add(key)
    return out, frozenset(left_out)


_ROOT_KEY = re.compile(r"[ .\[]")


def _about_others(
    lines: list[str], left_out: frozenset[str], checked_against: dict[str, frozenset[str]] | None = None
) -> list[str]:
    """Validation problems (`key rule`, as `describe_settings_errors` writes them) but those of a setting left out
    for a variable not set (it is required, or would have been checked: the variable is what to fix), or of one
    checked against a setting left out."""
    if not left_out:
        return lines
    against = checked_against or {}
    keys = [_ROOT_KEY.split(line, maxsplit=1)[0] for line in lines]
    return [
        line for line, key in zip(lines, keys, strict=True)
        if key not in left_out and not against.get(key, frozenset()) & left_out
    ]  # fmt: skip


def _validate(model: type[_Table], data: dict[str, Any], where: str, left_out: frozenset[str] = frozenset()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = _about_others(describe_settings_errors(exc, "this table"), left_out, model.checked_against)
        problems = [f"{where} {line}" for line in lines]
        raise ConfigurationError("; ".join(problems), problems) from None


def parse_config(
    data: dict[str, Any],
    source: str = "destinations.toml",
    environ: dict[str, str] | None = None,
    *,
    server_needed: bool = True,
    instances_needed: bool = True,
) -> Config:
    """Validate a configuration, every table and instance, raising one ConfigurationError that lists every problem
    found (`problems`, a line each: a user fixing a file should not learn of its problems one run at a time).

    With `server_needed` False (`send`, `outbox`), a `${VAR}` of `[server]` and `[debugger]` that is not set counts
    as empty: those commands never use the server's write keys, webhook secret or debugger token. With
    `instances_needed` False (the `outbox` commands that only read and change rows), an instance that cannot be
    made (a vendor key's variable not set here, any setting refused) is left out and named in `unconfigured`, with
    why."""
    env = dict(os.environ) if environ is None else environ
    problems = [
        f"{source}: unknown table [{unknown}] (known: server, outbox, destinations, rudder, debugger)"
        for unknown in sorted(set(data) - {"server", "outbox", "destinations", "rudder", "debugger"})
    ]

    def table(name: str, model: type[_Table], lenient: bool = False) -> Any:
        where = f"{source}: [{name}]"
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            problems.append(f"{where} must be a table")
            return None
        settings, left_out = _expanded(raw, where, _Lenient(env) if lenient else env, problems, model.model_fields)
        try:
            return _validate(model, settings, where, left_out)
        except ConfigurationError as exc:
            problems.extend(exc.problems)
            return None

    rudder = table("rudder", RudderConfig)
    debugger = table("debugger", DebuggerConfig, lenient=not server_needed)
    server = table("server", ServerConfig, lenient=not server_needed)
    outbox = table("outbox", OutboxConfig)
    tables = data.get("destinations", {})
    if not isinstance(tables, dict):
        problems.append(f"{source}: [destinations] must hold one table per destination instance")
        tables = {}
    instances: dict[str, Destination] = {}
    unconfigured: dict[str, str] = {}
    for name, settings in tables.items():
        own: list[str] = []
        instance = _instance(name, settings, source, env, own)
        if instance is not None:
            instances[name] = instance
        elif instances_needed:
            problems.extend(own)
        else:
            unconfigured[name] = "; ".join(own)
    if problems or server is None or outbox is None or rudder is None or debugger is None:
        raise ConfigurationError("; ".join(problems), problems)
    return Config(server=server, outbox=outbox, destinations=instances, source=source, rudder=rudder,
                  debugger=debugger, unconfigured=unconfigured)  # fmt: skip


def _instance(name: str, table: Any, source: str, environ: Mapping[str, str], problems: list[str]
              ) -> Destination | None:  # fmt: skip
    """The destination instance `[destinations.<name>]` describes, or None with every problem of it noted in
    `problems`, each naming the file, the table and the key."""
    where = f"{source}: [destinations.{name}]"
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table")
        return None
    kind = expand_env(table.get("type"), f"{where} type", environ, unset := [])
    if unset:  # which settings it takes is not known: its variable is what to fix
        problems.extend(unset)
        return None
    if not isinstance(kind, str) or not kind:
        problems.append(f"{where} type is required (one of: {', '.join(sorted(destination_types()))})")
        return None
    cls = destination_types().get(kind)
    known = cls.Settings.model_fields if cls is not None else {}
    settings, left_out = _expanded({k: v for k, v in table.items() if k != "type"}, where, environ, problems, known)
    try:
        instance = get_destination(kind, settings)
    except ConfigurationError as exc:
        if not exc.problems:  # about the type, not a setting
            problems.append(f"{where} {exc}")
        else:
            problems.extend(f"{where} {kind} settings: {line}" for line in _about_others(exc.problems, left_out))
        return None
    return None if left_out else instance


class _Lenient(dict):  # type: ignore[type-arg]
    """An environment in which every variable is set: unset ones are empty."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def load_config(
    path: str | Path,
    environ: dict[str, str] | None = None,
    *,
    server_needed: bool = True,
    instances_needed: bool = True,
) -> Config:
    """Read and validate a `destinations.toml`; relative outbox paths are taken from the working directory."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path), environ, server_needed=server_needed, instances_needed=instances_needed)
