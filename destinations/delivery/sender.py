"""Sending one request to a vendor, and the one place that decides what its answer means."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import requests
from requests.adapters import HTTPAdapter

from ..base import Destination, HttpRequest
from ..redaction import guard_http_logs, redact_query, redact_text, secret_forms

log = logging.getLogger("destinations.delivery")

Kind = Literal["delivered", "retry", "permanent", "config"]

# HTTP statuses worth another try (DESIGN.md section 6); every other 4xx, and 501, is permanent.
RETRY_STATUSES = frozenset({408, 423, 429})
CONFIG_STATUSES = frozenset({401, 403})
DETAIL_LIMIT = 500


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt: `status` is short ("200", "200 BAD_INPUT", "timeout"), `detail`
    a redacted, truncated excerpt of the answer; `split` asks to resend a merged batch one by one."""

    kind: Kind
    status: str
    detail: str = ""
    retry_after: float | None = None
    split: bool = False
    http: int = 0  # the vendor's HTTP status; 0 when there was no answer


def parse_retry_after(value: str | None, now: float, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), within [0, cap]."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def classify(
    destination: Destination, status: int, headers: Any, body: bytes, *, max_retry_after: float = 600.0
) -> Outcome:
    """The outcome of an HTTP answer: HTTP rules first, then the vendor's body rules."""
    success = 200 <= status < 300
    problem = _vendor_problem(destination, status, body) if success else None
    if success and problem is None:  # nothing of the answer is kept: no excerpt to make and mask
        return Outcome("delivered", str(status), http=status)
    # Masked before it is cut, so a key straddling the cut cannot survive in part.
    secrets = _secret_values(destination)
    detail = redact_query(redact_text(body[: 4 * DETAIL_LIMIT].decode("utf-8", "replace"), secrets))[:DETAIL_LIMIT]
    if problem is not None:  # a 2xx the vendor's rules refuse (problem is only asked of a 2xx so far)
        kind, code = problem
        return Outcome(kind, f"{status} {code}", detail, split=kind == "permanent", http=status)  # type: ignore[arg-type]
    retry_after = parse_retry_after(headers.get("Retry-After"), time.time(), max_retry_after)
    if status in RETRY_STATUSES or (500 <= status < 600 and status != 501):
        return Outcome("retry", str(status), detail, retry_after, http=status)
    if status in CONFIG_STATUSES:
        return Outcome("config", str(status), detail, http=status)
    problem = _vendor_problem(destination, status, body)
    if problem is not None and problem[0] == "config":
        return Outcome("config", f"{status} {problem[1]}", detail, http=status)
    return Outcome("permanent", str(status), detail, split=status in (400, 413, 422), http=status)


def _vendor_problem(destination: Destination, status: int, body: bytes) -> tuple[str, str] | None:
    """`destination.response_problem`, or None when its rules cannot read the answer (a body nested past what
    the JSON reader takes, a plugin's bug): then the HTTP status alone decides, and the log says so. Raising here
    would leave the batch to its lease and send it again and again, the outcome never recorded."""
    try:
        return destination.response_problem(status, body)
    except Exception as exc:
        log.warning("%s: the vendor's answer (HTTP %d) could not be read for its own rules (%s); the HTTP status"
                    " decides", destination.name, status, type(exc).__name__)  # fmt: skip
        return None


def classify_exception(destination: Destination, exc: Exception) -> Outcome:
    """Timeouts, refused or reset connections are retried; a request that cannot be formed is not."""
    text = redact_query(redact_text(f"{type(exc).__name__}: {exc}", _secret_values(destination)))[:DETAIL_LIMIT]
    if isinstance(exc, requests.Timeout):
        return Outcome("retry", "timeout", text)
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return Outcome("retry", "connection error", text)
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return Outcome("config", "invalid url", text)
    if isinstance(exc, requests.exceptions.InvalidHeader | requests.exceptions.InvalidSchema | ValueError):
        # A request that cannot be formed never will be: permanent. The text may quote a header's value,
        # which can hold a credential this destination does not know about: only the kind is kept.
        return Outcome("permanent", "invalid request", type(exc).__name__)
    return Outcome("retry", type(exc).__name__, text)


def _secret_values(destination: Destination) -> list[str]:
    """Every form this instance's secrets can take in an answer or an exception text (`Destination.secrets`, in
    each of its `secret_forms`)."""
    return secret_forms(destination.secrets())


def merge_bodies(bodies: list[str], batchable: bool) -> bytes:
    """JSON array texts concatenated as one array, without parsing them again."""
    if len(bodies) == 1 or not batchable:
        return bodies[0].encode("utf-8")
    return ("[" + ",".join([b[1:-1] for b in bodies if len(b) > 2]) + "]").encode("utf-8")


def merge(requests_: list[HttpRequest]) -> HttpRequest:
    """Batchable requests to one endpoint as one: their JSON array bodies concatenated in order."""
    if len(requests_) == 1:
        return requests_[0]
    first = requests_[0]
    body: list[Any] = []
    for r in requests_:
        body.extend(r.json)
    return HttpRequest(first.method, first.url, first.params, first.headers, body, batchable=True)


class Sender:
    """One pooled session per destination instance, with connect and read timeouts."""

    def __init__(
        self,
        destination: Destination,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        pool_size: int = 8,
        max_retry_after: float = 600.0,
    ) -> None:
        guard_http_logs()
        self.destination = destination
        self.timeout = (connect_timeout, read_timeout)
        self.max_retry_after = max_retry_after
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "destinations (+https://pypi.org/project/destinations/)"
        # requests reads proxy and CA settings from the environment on every call (about 0.5 ms);
        # read them once per URL instead, with the same rules (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE).
        self.session.trust_env = False
        self._environment: dict[str, dict[str, Any]] = {}

    def send(self, request: HttpRequest) -> Outcome:
        """Send with the instance's credentials added; never raises."""
        try:  # ASCII-escaped, so a lone surrogate in an event cannot break the encoding
            data = json.dumps(request.json, separators=(",", ":"), allow_nan=False).encode("ascii")
        except (TypeError, ValueError) as exc:
            return Outcome("permanent", "unserialisable", f"{type(exc).__name__}: the body is not valid JSON")
        return self.send_raw(request.method, request.url, request.params, request.headers, data)

    def send_raw(self, method: str, url: str, params: dict[str, Any], headers: dict[str, str], data: bytes) -> Outcome:
        """`send` for a body already serialised (the outbox stores JSON text). The instance's credentials are
        added only to a URL under its base URL (`Destination.owns`)."""
        secret_params, secret_headers = self.destination.credentials() if self.destination.owns(url) else ({}, {})
        try:
            env = self._environment.get(url)
            if env is None:
                with requests.Session() as probe:
                    env = self._environment[url] = probe.merge_environment_settings(url, {}, None, None, None)
            response = self.session.request(
                method,
                url,
                params={**params, **secret_params},
                headers={**headers, **secret_headers},
                data=data,
                timeout=self.timeout,
                proxies=env["proxies"],
                verify=env["verify"],
                cert=env["cert"],
                allow_redirects=False,  # requests would re-send a POST as a GET and call it delivered
            )
            body = response.content
        except Exception as exc:  # every failure of the call becomes an outcome, never an escape
            return classify_exception(self.destination, exc)
        return classify(
            self.destination, response.status_code, response.headers, body, max_retry_after=self.max_retry_after
        )

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"<Sender {self.destination!r}>"
