"""rudder-transformer behind this server: every transformer request this package does not own goes there.

rudder-server has one `DEST_TRANSFORM_URL` for every destination type, user transformation and source, so
a server that answered only its own four types would make rudder-server abort everything else. With
`[rudder] upstream` set, such a request is passed to rudder-transformer unchanged (method, path, query,
headers and body) and its answer returned unchanged (status, headers, body bytes as received). httpx keeps
a pool of connections with bounded timeouts.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from fastapi import Request, Response

from ..config import RudderConfig

log = logging.getLogger("destinations.rudder")

# Connection-level headers (RFC 9110 section 7.6.1) and the ones each hop sets itself: never passed on.
_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"trailers",
        b"transfer-encoding", b"upgrade", b"host", b"content-length",
    }
)  # fmt: skip
# Set again by this server's own HTTP layer on the way back; relayed too, they would be doubled.
_SET_BY_US = frozenset({b"date", b"server"})
# httpx logs every request line at INFO, query string and all: only its warnings are wanted.
logging.getLogger("httpx").setLevel(logging.WARNING)
# What rudder-server retries when its transformer cannot be reached. Its processor retries any status for
# which `IsJobTerminated` is false (429, 408, 5xx: processor/internal/transformer/utils.go); its router gives
# every job 500, a retry, for any non-200 but 404 (router/transformer/transformer.go); its HTTP client retries
# 503 with `X-Rudder-Should-Retry: true` (internal/transformer-client/client.go).
UNREACHABLE_STATUS = 503


class Upstream:
    """The pooled client to rudder-transformer, or nothing (then callers answer 404 as before)."""

    def __init__(self, config: RudderConfig) -> None:
        self.url = config.upstream
        self._client: httpx.AsyncClient | None = None
        self._timeout = httpx.Timeout(config.upstream_read_timeout, connect=config.upstream_connect_timeout)
        self.on_forwarded: Any = None  # (route, status) -> None, set by the app for its metrics

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def _client_for_loop(self) -> httpx.AsyncClient:
        if self._client is None:
            # As many connections as rudder-server opens to its transformer (100 per host by default).
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
                follow_redirects=False,
            )
            self._client.headers.clear()  # pass on the caller's headers only, not httpx's defaults
        return self._client

    async def forward(self, request: Request, route: str, body: bytes | None = None) -> Response:
        """Pass `request` on (its body, or `body` when the caller has read it already) and relay the answer."""
        assert self.url is not None
        content = await request.body() if body is None else body
        # Raw bytes both ways: a header value that is not ASCII, or a path with escapes, goes on as it came.
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _HOP_BY_HOP]
        query = request.scope.get("query_string", b"")
        target = request.scope.get("raw_path") or request.url.path.encode()
        url = httpx.URL(self.url + target.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else ""))
        client = self._client_for_loop()
        try:
            upstream = await client.send(
                client.build_request(request.method, url, headers=headers, content=content), stream=True
            )
            try:
                data = b"".join([chunk async for chunk in upstream.aiter_raw()])
            finally:
                await upstream.aclose()
        except Exception as exc:  # the upstream's failure, or a request it cannot take: never our 500
            log.warning("rudder-transformer (upstream) did not answer %s %s: %s", request.method, route,
                        type(exc).__name__)  # fmt: skip
            self._note(route, UNREACHABLE_STATUS)
            return Response(
                b'{"message":"rudder-transformer (upstream) did not answer; try again"}',
                UNREACHABLE_STATUS,
                media_type="application/json",
                headers={"X-Rudder-Should-Retry": "true"},
            )
        self._note(route, upstream.status_code)
        relayed = [(k, v) for k, v in upstream.headers.raw if k.lower() not in _HOP_BY_HOP | _SET_BY_US]
        response = Response(data, upstream.status_code)
        response.raw_headers = [*relayed, (b"content-length", str(len(data)).encode())]
        return response

    async def get_json(self, path: str) -> Any:
        """GET a JSON document from upstream (its /features), within the connect timeout twice over;
        None when it cannot be had."""
        if self.url is None:
            return None
        try:
            answer = await self._client_for_loop().get(self.url + path, timeout=self._timeout.connect * 2)
            return answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _note(self, route: str, status: int) -> None:
        if self.on_forwarded is not None:
            self.on_forwarded(route, status)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
