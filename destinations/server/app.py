"""The intake server: one FastAPI app over one configuration, and the `serve` / `worker` commands.

The app takes events in three ways (tracking API, webhook, RudderStack transformer protocol),
commits them to the outbox before answering, and, unless started intake-only, runs the delivery
workers of that outbox in the same process. Stopping (SIGTERM, Ctrl-C) stops taking requests,
answers those in flight, lets the workers finish the vendor calls they have started and leaves
everything else in the outbox for the next start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from ..config import Config, load_config
from ..delivery.worker import tune_collector
from ..errors import ConfigurationError
from ..redaction import redact_query, redact_text, secret_forms
from . import debugger, rudder, tracking, webhook
from .intake import ApiError, Intake, is_loopback
from .metrics import CONTENT_TYPE, TimingMiddleware
from .tracking import TRACKING_PATHS

log = logging.getLogger("destinations.server")


class BrowserOrigins:
    """CORS for the tracking routes only, with Starlette's CORSMiddleware (the Fetch standard's preflight,
    `Access-Control-Allow-Origin` for allowed origins only). `/webhook`, `/v0/…` and the operations routes
    never answer CORS.

    CORS only stops a page from reading the answer; a page can still post a simple request. So a POST
    whose `Origin` is not allowed is refused here with 403 before it is read: with `cors_origins` empty
    (the default) no browser page can send events, while server libraries, which send no `Origin`, can.
    """

    # Headers analytics-next sends: Content-Type (text/plain), Authorization (Basic, from the write key)
    # and X-Retry-Count on a retry (packages/browser/src/plugins/segmentio/shared-dispatcher.ts).
    ALLOW_HEADERS = ("Content-Type", "Authorization", "X-Retry-Count")

    def __init__(self, app: Any, origins: list[str]) -> None:
        self.app = app
        self.any = "*" in origins
        self.origins = frozenset(origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=["*"] if self.any else sorted(self.origins),
            allow_methods=["POST"],
            allow_headers=list(self.ALLOW_HEADERS),
            max_age=600,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if scope["path"] == "/webhook" and origin is not None:
            # Segment's servers send no Origin; a browser always does on a cross-site POST. Without this,
            # any page could post events to an unsigned webhook through its visitors' browsers.
            await JSONResponse(
                {"code": "origin_not_allowed", "message": "/webhook takes calls from Segment's servers, not browsers"},
                403,
            )(scope, receive, send)
            return
        if scope["path"] not in TRACKING_PATHS:
            await self.app(scope, receive, send)
            return
        if origin is not None and scope["method"] != "OPTIONS" and not self.allowed(origin):
            refusal = JSONResponse(
                {"code": "origin_not_allowed", "message": "this origin is not in the server's cors_origins"}, 403
            )
            await refusal(scope, receive, send)
            return
        await self.cors(scope, receive, send)

    def allowed(self, origin: bytes) -> bool:
        # Exactly as Starlette's CORSMiddleware compares it: browsers write origins in lower case.
        return self.any or origin.decode("latin-1") in self.origins


def create_app(config: Config, *, deliver: bool = True) -> FastAPI:
    """The app for one configuration; `deliver=False` takes events into the outbox without delivering them."""
    intake = Intake(config, deliver=deliver)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        intake.start()
        log.info(
            "taking events for %s (outbox %s, delivered %s%s)",
            ", ".join(sorted(config.destinations)) or "no destination",
            config.outbox.path,
            "by workers in this process" if intake.delivery else "elsewhere (intake only)",
            "; /webhook delivers directly" if config.server.delivery == "direct" else "",
        )
        try:
            yield
        finally:
            await intake.upstream.close()
            await anyio.to_thread.run_sync(intake.stop)
            log.info("stopped; requests not yet delivered stay in the outbox")

    app = FastAPI(
        title="destinations",
        summary="Segment-spec events to Wigzo, Segmentify, D·engage and eSputnik",
        lifespan=lifespan,
    )
    app.state.intake = intake
    # The last added runs first: timing sees the origin checks' answers too.
    app.add_middleware(BrowserOrigins, origins=config.server.cors_origins)
    app.add_middleware(TimingMiddleware, metrics=intake.metrics)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/health", tags=["operations"], summary="Liveness and a glance at the outbox")
    def health() -> JSONResponse:
        workers = intake.delivery.workers.values() if intake.delivery else []
        body: dict[str, Any] = {
            "status": "ok",
            "service": "UP",
            "delivery": config.server.delivery if intake.delivery or config.server.delivery == "direct" else "off",
            "workers": sum(1 for w in workers if w.is_alive()),
            "destinations": sorted(config.destinations),
        }
        try:
            body["pending"] = intake.outbox.pending_count()
        except Exception:
            body |= {"status": "degraded", "pending": None}
            return JSONResponse(body, 503)
        # rudder-server polls /health of its transformer too; it expects apiVersion 2 on every 200.
        return JSONResponse(body, headers={"apiVersion": "2"})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(intake.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(tracking.router)
    app.include_router(webhook.router)
    app.include_router(rudder.router)
    app.include_router(debugger.router)
    _document_write_key(app)
    return app


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    fields = {"status": exc.status, "code": exc.code, "path": request.url.path}
    if exc.status >= 500:
        log.warning("answered %d %s: %s", exc.status, exc.code, exc.message, extra=fields)
    else:
        log.info("refused a request: %d %s: %s", exc.status, exc.code, exc.message, extra=fields)
    return exc.response()


async def _client_gone(request: Request, _: Exception) -> Response:
    """A client that hangs up while its body is being read (any route that reads one: the tracking API,
    /webhook, the transformer routes, the upstream relay) is routine on the internet, not a fault of ours:
    one line, no traceback, and nothing was committed. Left to `_internal_error`, Starlette would log it
    and then re-raise it to uvicorn, which logs it again as "Exception in ASGI application"."""
    log.info(
        "%s %s: the client closed the connection before sending the whole body; nothing was taken",
        request.method,
        request.url.path,
        extra={"path": request.url.path},
    )
    # Nobody reads this answer (uvicorn drops it); 499, nginx's "client closed request", keeps it apart
    # from the server's own failures in the request metrics.
    return Response(status_code=499)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"code": "internal", "message": "internal error; the event was not taken"}, 500)


def _document_write_key(app: FastAPI) -> None:
    """The write key as an OpenAPI security scheme (HTTP Basic, username = write key)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["writeKey"] = {
                "type": "http",
                "scheme": "basic",
                "description": "the write key as the username, no password (Segment's libraries do this)",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- logging ----------------------------------------------------------------------------------------


# LogRecord's own attributes, and uvicorn's `color_message` (the message again, with ANSI colour codes).
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message",
}  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object a line, every configured secret masked in the message, the traceback and the
    fields given with `extra=` (destination, messageId …), which become keys of their own."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        return redact_text(redact_query(text), self.secrets)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._clean(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = self._clean(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = self._clean(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def config_secrets(config: Config) -> list[str]:
    """Every secret of a configuration: write keys, webhook secret, the debugger's token, each destination's
    secrets (`Destination.secrets`), each in every form it may be quoted."""
    out = [k.get_secret_value() for k in config.server.write_keys]
    out += [s.get_secret_value() for s in config.server.webhook_secret]
    if config.debugger.token is not None:
        out.append(config.debugger.token.get_secret_value())
    for destination in config.destinations.values():
        out += destination.secrets()
    return out + secret_forms(out)  # as set, and in every form it may be quoted (`secret_forms`)


def setup_logging(level: str = "info", secrets: list[str] | None = None) -> None:
    """JSON lines on stderr for this package, uvicorn and everything else, secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets or []))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn.access is uvicorn's to turn on or off (--access-log)
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# --- the commands -----------------------------------------------------------------------------------


def check_exposure(config: Config, host: str) -> None:
    """Every way events are written must be authenticated to listen beyond loopback: the tracking API by write
    keys, /webhook by its signature secret. Otherwise anyone who can reach the port can send events. The
    debugger, which shows them, wants its token there too."""
    if not config.server.write_keys and not is_loopback(host):
        raise ConfigurationError(
            f"{config.source}: [server] write_keys is empty, so the tracking API takes events without a key;"
            f" refusing to listen on {host}, which other machines can reach. Set write_keys (for example"
            ' write_keys = ["${SEGMENT_WRITE_KEY}"]) or listen on 127.0.0.1.'
        )
    if not config.server.webhook_secret and not is_loopback(host):
        raise ConfigurationError(
            f"{config.source}: [server] webhook_secret is not set, so /webhook takes events without a signature;"
            f" refusing to listen on {host}, which other machines can reach. Set webhook_secret (Segment's shared"
            " secret of the Webhooks destination) or listen on 127.0.0.1."
        )
    if config.debugger.enabled and config.debugger.token is None and not is_loopback(host):
        raise ConfigurationError(
            f"{config.source}: [debugger] token is not set, so /debugger shows every message to anyone;"
            f" refusing to listen on {host}, which other machines can reach. Set a token (16 characters or"
            ' more, token = "${DEBUGGER_TOKEN}"), set [debugger] enabled = false, or listen on 127.0.0.1.'
        )


def app_from_env() -> FastAPI:
    """The app of a `serve --workers N` worker process (uvicorn imports it by name in each process)."""
    config = load_config(os.environ["DESTINATIONS_CONFIG"])
    setup_logging(os.environ.get("DESTINATIONS_LOG_LEVEL", "info"), config_secrets(config))
    tune_collector()
    return create_app(config, deliver=os.environ.get("DESTINATIONS_DELIVER", "1") == "1")


def serve(
    config_path: str,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    deliver: bool = True,
    log_level: str = "info",
    access_log: bool = False,
) -> int:
    """`destinations serve`: the app on uvicorn until SIGINT or SIGTERM."""
    import uvicorn

    config = load_config(config_path)
    host = host or config.server.host
    port = config.server.port if port is None else port
    check_exposure(config, host)
    if workers < 1:
        raise ConfigurationError("--workers must be 1 or more")
    setup_logging(log_level, config_secrets(config))
    if config.debugger.enabled and port:  # what the demo prints, for a server started by hand
        shown = f"[{host}]" if ":" in host else host
        log.info("the live debugger: http://%s:%d/debugger", shown, port)
    cfg = config.outbox
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": int(cfg.connect_timeout + cfg.read_timeout + 10),
        "server_header": False,
    }
    if workers == 1:
        tune_collector()
        uvicorn.run(create_app(config, deliver=deliver), **options)
        return 0
    os.environ["DESTINATIONS_CONFIG"] = str(Path(config_path).resolve())
    os.environ["DESTINATIONS_DELIVER"] = "1" if deliver else "0"
    os.environ["DESTINATIONS_LOG_LEVEL"] = log_level
    uvicorn.run("destinations.server.app:app_from_env", factory=True, workers=workers, **options)
    return 0


def run_worker(config_path: str, *, log_level: str = "info", report_every: float = 60.0) -> int:
    """`destinations worker`: deliver from the outbox until SIGINT or SIGTERM, then stop gracefully."""
    config = load_config(config_path)
    if not config.destinations:
        raise ConfigurationError(f"{config.source}: no [destinations.NAME] table; nothing to deliver to")
    setup_logging(log_level, config_secrets(config))
    tune_collector()
    intake = Intake(config, deliver=True)
    stopping = threading.Event()

    def stop(signum: int, _: Any) -> None:
        log.info("%s: finishing the requests in flight", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    intake.start()
    log.info("delivering to %s from %s", ", ".join(sorted(config.destinations)), config.outbox.path)
    last = time.monotonic()
    while not stopping.wait(1.0):
        if time.monotonic() - last >= report_every:
            last = time.monotonic()
            counts = intake.delivery_counts()
            log.info(
                "delivered %d, retried %d, dead %d; %d pending",
                sum(counts["delivered"].values()),
                sum(counts["retried"].values()),
                sum(counts["dead"].values()),
                intake.outbox.pending_count(),
            )
    intake.stop()
    log.info("stopped; requests not yet delivered stay in the outbox")
    return 0
