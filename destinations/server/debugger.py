"""The live event debugger: `GET /debugger` and its JSON API.

Every message the server took, newest first, with one badge per destination instance (delivered, pending,
retrying, filtered, invalid, dead) and, in its detail, what each instance made of it and every delivery
attempt. The page and its script ship in the package (no CDN, no build step) and poll the API once a
second. What it shows comes from the outbox database (delivery/debugger.py), where requests are kept with
their secrets masked: no write key, vendor key or webhook secret can appear.

Access (`[debugger]`): with a `token`, every route wants `Authorization: Bearer <token>` or the cookie the
login form sets; without one the debugger is open, and `serve` listens only on loopback then
(`check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..delivery import debugger as store
from ..delivery.outbox import resolve_url
from .intake import ApiError, Intake, get_intake

COOKIE = "destinations_debugger"
PAGE = resources.files(__package__).joinpath("debugger.html")
SCRIPT = resources.files(__package__).joinpath("debugger.js")


def _session(token: str) -> str:
    """The cookie's value: derived from the token, so the token itself is never stored in a browser."""
    return hmac.new(token.encode(), b"destinations debugger session", hashlib.sha256).hexdigest()


def allowed(intake: Intake, request: Request) -> bool:
    token = intake.config.debugger.token
    if token is None:
        return True
    secret = token.get_secret_value()
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and hmac.compare_digest(header[7:].strip().encode(), secret.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), _session(secret).encode())


def guard(request: Request, intake: Annotated[Intake, Depends(get_intake)]) -> Intake:
    """The debugger is on, and the caller may see it."""
    if not intake.config.debugger.enabled:
        raise ApiError(404, "not_found", "the debugger is off ([debugger] enabled = false)")
    if not allowed(intake, request):
        raise ApiError(
            401, "unauthorized", "the debugger wants its token: Authorization: Bearer <token>, or log in",
            headers={"WWW-Authenticate": 'Bearer realm="destinations debugger"'},
        )  # fmt: skip
    return intake


Guarded = Annotated[Intake, Depends(guard)]
router = APIRouter(tags=["debugger"])


@router.get("/debugger", summary="The live event debugger (a web page)", response_class=HTMLResponse)
def page(intake: Annotated[Intake, Depends(get_intake)]) -> Response:
    if not intake.config.debugger.enabled:
        raise ApiError(404, "not_found", "the debugger is off ([debugger] enabled = false)")
    # The page itself holds nothing: it asks the API, which checks access (and then shows the login form).
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


@router.get("/debugger/debugger.js", include_in_schema=False)
def script() -> Response:
    return Response(SCRIPT.read_text(encoding="utf-8"), media_type="text/javascript",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


@router.post("/debugger/login", summary="Log in to the debugger with its token (form field `token`)")
async def login(request: Request, intake: Annotated[Intake, Depends(get_intake)]) -> Response:
    token = intake.config.debugger.token
    given = parse_qs((await request.body())[:4096].decode("utf-8", "replace")).get("token", [""])[0]
    if token is None or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return RedirectResponse("/debugger?login=failed", status_code=303)
    answer = RedirectResponse("/debugger", status_code=303)
    answer.set_cookie(COOKIE, _session(token.get_secret_value()), httponly=True, samesite="strict",
                      path="/debugger", secure=request.url.scheme == "https")  # fmt: skip
    return answer


@router.get("/debugger/api/access", summary="How the debugger is guarded")
def access(intake: Guarded) -> dict[str, Any]:
    open_ = intake.config.debugger.token is None
    return {
        "open": open_,
        "note": "open: no [debugger] token is set, so the server listens on loopback only"
        if open_
        else "guarded by the [debugger] token",
        "keep": intake.config.debugger.keep,
        "destinations": sorted(intake.config.destinations),
    }


@router.get("/debugger/api/messages", summary="The newest messages, with a badge per destination instance")
def messages(
    intake: Guarded,
    q: Annotated[str | None, Query(description="userId, anonymousId, messageId or event name")] = None,
    destination: Annotated[str | None, Query(description="only this destination instance")] = None,
    status: Annotated[str | None, Query(description=" | ".join(store.STATUSES))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    if status is not None and status not in store.STATUSES:
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(store.STATUSES)}")
    rows = store.summaries(
        intake.outbox._db(), search=(q or "").strip() or None, destination=destination, status=status, limit=limit
    )
    return JSONResponse({"messages": rows}, headers={"Cache-Control": "no-store"})


@router.get("/debugger/api/messages/{message_id}", summary="One message: as received, mapped and delivered")
def message(intake: Guarded, message_id: str) -> JSONResponse:
    instances = {
        name: (d.base_url, list(d.credentials()[0]), list(d.credentials()[1]))
        for name, d in intake.config.destinations.items()
    }
    found = store.detail(intake.outbox._db(), message_id, instances, resolve_url)
    if found is None:
        raise ApiError(404, "not_found", "no such message among those the debugger keeps")
    return JSONResponse(found, headers={"Cache-Control": "no-store"})


@router.post("/debugger/api/messages/{message_id}/replay", summary="Dead requests of a message back to pending")
def replay(
    intake: Guarded,
    message_id: str,
    destination: Annotated[str | None, Query(description="only this destination instance")] = None,
) -> dict[str, Any]:
    ids = store.dead_request_ids(intake.outbox._db(), message_id, destination)
    replayed = intake.outbox.replay(ids=ids) if ids else 0
    if replayed and intake.delivery is not None:
        intake.delivery.notify([destination] if destination else None)
    return {"replayed": replayed}
