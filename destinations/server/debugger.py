"""The live event debugger: `GET /debugger` and its JSON API.

Every message the server took, newest first, with one badge per destination instance (delivered, pending,
retrying, filtered, invalid, dead) and, in its detail, what each instance made of it and every delivery
attempt. The page and its script ship in the package (no CDN, no build step) and poll the API once a
second. What it shows comes from the outbox database (delivery/debugger.py), where requests are kept with
their secrets masked: no write key, vendor key or webhook secret can appear.

Access (`[debugger]`): with a `token`, every route wants `Authorization: Bearer <token>` or the cookie the
login form sets; without one the debugger is open, `serve` listens only on loopback then (`check_exposure`),
and the API answers only requests addressed to a loopback name. A replay also wants the header
`X-Debugger: replay` and no other host's `Origin`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..delivery import debugger as store
from ..delivery.outbox import resolve_url
from .intake import ApiError, Intake, get_intake, is_loopback

COOKIE = "destinations_debugger"
OFF = "the debugger is off ([debugger] enabled = false)"
NOT_KEPT = "no such message among those the debugger keeps"
PAGE = resources.files(__package__).joinpath("debugger.html")
SCRIPT = resources.files(__package__).joinpath("debugger.js")


def _session(token: str) -> str:
    """The cookie's value: derived from the token, so the token itself is never stored in a browser."""
    return hmac.new(token.encode(), b"destinations debugger session", hashlib.sha256).hexdigest()


def allowed(intake: Intake, request: Request) -> bool:
    """Whether a request may see the debugger: no token is set, or it brings the token or the login cookie."""
    token = intake.config.debugger.token
    if token is None:
        return True
    secret = token.get_secret_value()
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and hmac.compare_digest(header[7:].strip().encode(), secret.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), _session(secret).encode())


def _host(request: Request) -> str:
    """The name a request was addressed to, without its port (`[::1]:8080` -> `[::1]`)."""
    host = request.headers.get("host", "")
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


def guard(request: Request, intake: Annotated[Intake, Depends(get_intake)]) -> Intake:
    """The debugger is on, and the caller may see it. Open (no token), it answers only requests addressed to a
    loopback name: a page that rebinds its own name to 127.0.0.1 must not read it."""
    if not intake.config.debugger.enabled:
        raise ApiError(404, "not_found", OFF)
    if intake.config.debugger.token is None and not is_loopback(_host(request)):
        raise ApiError(403, "forbidden", "the debugger without a token answers loopback addresses only")
    if not allowed(intake, request):
        raise ApiError(
            401, "unauthorized", "the debugger wants its token: Authorization: Bearer <token>, or log in",
            headers={"WWW-Authenticate": 'Bearer realm="destinations debugger"'},
        )  # fmt: skip
    return intake


def same_page(request: Request, intake: Annotated[Intake, Depends(guard)]) -> Intake:
    """A change (replay) comes from the debugger's own page or an API client: it carries the `X-Debugger`
    header, which no other site's page can send without asking (and CORS never allows it here), and no
    foreign `Origin`."""
    origin = request.headers.get("origin")
    # The host part only: behind a TLS proxy the scheme this server sees may not be the page's.
    foreign = origin is not None and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
    if request.headers.get("x-debugger") != "replay" or foreign:
        raise ApiError(403, "forbidden", "a replay wants the header X-Debugger: replay, from this server's page")
    return intake


def _json(value: Any) -> Response:
    """JSON in ASCII: a lone surrogate in a message travels as its escape instead of failing the answer."""
    return Response(json.dumps(value, ensure_ascii=True), media_type="application/json",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


Guarded = Annotated[Intake, Depends(guard)]
Changing = Annotated[Intake, Depends(same_page)]
router = APIRouter(tags=["debugger"])


@router.get("/debugger", summary="The live event debugger (a web page)", response_class=HTMLResponse)
def page(intake: Annotated[Intake, Depends(get_intake)]) -> Response:
    if not intake.config.debugger.enabled:
        raise ApiError(404, "not_found", OFF)
    # The page itself holds nothing: it asks the API, which checks access (and then shows the login form).
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


@router.get("/debugger/debugger.js", include_in_schema=False)
def script() -> Response:
    return Response(SCRIPT.read_text(encoding="utf-8"), media_type="text/javascript",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


@router.post("/debugger/login", summary="Log in to the debugger with its token (form field `token`)")
async def login(request: Request, intake: Annotated[Intake, Depends(get_intake)]) -> Response:
    token = intake.config.debugger.token
    body = b""
    async for part in request.stream():  # a form with a token is small: read no more than 4 KB of it
        body += part
        if len(body) > 4096:
            break
    given = parse_qs(body[:4096].decode("utf-8", "replace")).get("token", [""])[0]
    if token is None or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return RedirectResponse("/debugger?login=failed", status_code=303)
    answer = RedirectResponse("/debugger", status_code=303)
    answer.set_cookie(COOKIE, _session(token.get_secret_value()), httponly=True, samesite="strict",
                      path="/debugger", secure=request.url.scheme == "https")  # fmt: skip
    return answer


@router.get("/debugger/api/access", summary="How the debugger is guarded")
def access(intake: Guarded) -> Response:
    open_ = intake.config.debugger.token is None
    return _json({
        "open": open_,
        "note": "open: no [debugger] token is set, so the server listens on loopback only" if open_
        else "guarded by the [debugger] token",
        "keep": intake.config.debugger.keep,
        "destinations": sorted(intake.config.destinations),
    })  # fmt: skip


@router.get("/debugger/api/messages", summary="The newest messages, with a badge per destination instance")
def messages(
    intake: Guarded,
    q: Annotated[str | None, Query(max_length=1000, description="userId, anonymousId, messageId or event name")] = None,
    destination: Annotated[str | None, Query(max_length=1000, description="only this destination instance")] = None,
    status: Annotated[str | None, Query(description=" | ".join(store.STATUSES))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    if status is not None and status not in store.STATUSES:
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(store.STATUSES)}")
    rows = store.summaries(
        intake.outbox._db(), search=(q or "").strip() or None, destination=destination, status=status, limit=limit
    )
    return _json({"messages": rows})


def _detail(intake: Intake, message_id: str) -> Response:
    instances = {
        name: (d.base_url, list(d.credentials()[0]), list(d.credentials()[1]))
        for name, d in intake.config.destinations.items()
    }
    found = store.detail(intake.outbox._db(), message_id, instances, resolve_url)
    if found is None:
        raise ApiError(404, "not_found", NOT_KEPT)
    return _json(found)


@router.get("/debugger/api/messages/{message_id:path}", summary="One message: as received, mapped and delivered")
def message(intake: Guarded, message_id: str) -> Response:
    return _detail(intake, message_id)


@router.get("/debugger/api/message", summary="One message, by a messageId given as a query parameter")
def message_by_query(intake: Guarded, message_id: Annotated[str, Query(alias="messageId")]) -> Response:
    # Any messageId, "." and ".." included, which no path can carry (a URL resolves them).
    return _detail(intake, message_id)


def _replay(intake: Intake, message_id: str, destination: str | None) -> Response:
    db = intake.outbox._db()
    if not store.kept(db, message_id):
        raise ApiError(404, "not_found", NOT_KEPT)
    ids = store.dead_request_ids(db, message_id, destination)
    replayed = intake.outbox.replay(ids=ids) if ids else 0
    if replayed and intake.delivery is not None:
        intake.delivery.notify([destination] if destination else None)
    return _json({"replayed": replayed})


@router.post(
    "/debugger/api/messages/{message_id:path}/replay",
    summary="Dead requests of a message back to pending (wants the header X-Debugger: replay)",
)
def replay(
    intake: Changing,
    message_id: str,
    destination: Annotated[str | None, Query(description="only this destination instance")] = None,
) -> Response:
    return _replay(intake, message_id, destination)


@router.post("/debugger/api/replay", summary="Replay, by a messageId given as a query parameter")
def replay_by_query(
    intake: Changing,
    message_id: Annotated[str, Query(alias="messageId")],
    destination: Annotated[str | None, Query(description="only this destination instance")] = None,
) -> Response:
    return _replay(intake, message_id, destination)
