"""The portal's Data Streamer pages (the guide's section 2), server-rendered.

- ``/portal/data-streams``: the overview (2.1): API, type, URL, last data,
  remote status per stream; Delete (after a confirmation dialog), Deactivate,
  Activate; "New Data Stream".
- ``/portal/data-streams/new``: the configuration page (2.2): Stream Type, API
  Type and exactly the fields of section 6 for the chosen type, the historic
  data checkbox, Discard Changes and Store.
- ``/portal/data-streams/<id>``: a stream's status, recent deliveries and a
  chart of documents delivered per hour over the last day.

Every page works without JavaScript; ``static/portal.js`` only shows the chosen
API type's fields and turns the Delete page into a dialog. Signing in takes an
API key (the API's): the session cookie (signed by Starlette's
``SessionMiddleware``, ``itsdangerous``) holds the key's prefix, never the key,
and every request checks the key is still valid. Every form carries the
session's CSRF token, compared in constant time, and the cookie is
``SameSite=Strict``.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from portal import catalogue
from portal.auth import Principal, authenticate
from portal.streams import SECRET_FIELDS, FieldError, StateConflictError, StreamNotFoundError, StreamService
from schemas.stream_store import api_keys
from schemas.streams import DESTINATION_OF

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals.update(api_type_names=catalogue.API_TYPE_NAMES, stream_type_names=catalogue.STREAM_TYPE_NAMES)
BASE = "/portal"


def install(app: FastAPI) -> None:
    app.add_middleware(SessionMiddleware, secret_key=app.state.session_key, session_cookie="portal_session",
                       same_site="strict", https_only=app.state.https, max_age=8 * 3600)
    app.mount(f"{BASE}/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for path, endpoint, methods in (
        ("/", _home, ["GET"]),
        (f"{BASE}/login", _login_page, ["GET"]),
        (f"{BASE}/login", _login, ["POST"]),
        (f"{BASE}/logout", _logout, ["POST"]),
        (f"{BASE}/data-streams", _overview, ["GET"]),
        (f"{BASE}/data-streams/new", _new_page, ["GET"]),
        (f"{BASE}/data-streams/new", _store, ["POST"]),
        (f"{BASE}/data-streams/{{stream_id}}", _stream_page, ["GET"]),
        (f"{BASE}/data-streams/{{stream_id}}/delete", _delete_page, ["GET"]),
        (f"{BASE}/data-streams/{{stream_id}}/{{action}}", _action, ["POST"]),
    ):
        app.add_api_route(path, endpoint, methods=methods, include_in_schema=False)


# --------------------------------------------------------------------------- sessions


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def _form(request: Request) -> dict[str, str] | None:
    """The posted form, or None when its CSRF token is not the session's."""
    form = await request.form()
    sent, expected = str(form.get("csrf_token", "")), request.session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return None
    return {key: str(value) for key, value in form.items()}


def _principal(request: Request, connection: sa.Connection) -> Principal | None:
    prefix = request.session.get("key")
    if not prefix:
        return None
    row = connection.execute(sa.select(api_keys).where(api_keys.c.prefix == prefix)).mappings().first()
    if row is None or row["revoked_at"] is not None:
        request.session.clear()
        return None
    return Principal(key_prefix=prefix, organisation_id=row["organisation_id"])


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"csrf_token": _csrf(request), "base": BASE, **context},
                                      status_code=status_code)


def _missing(request: Request) -> HTMLResponse:
    """Another organisation's stream gets this page too: no way to tell them apart."""
    return _render(request, "message.html", status_code=404, title="Not found", message="There is no such data stream.")


def _to_login() -> RedirectResponse:
    return RedirectResponse(f"{BASE}/login", status_code=303)


def _forbidden(request: Request) -> HTMLResponse:
    return _render(request, "message.html", status_code=403, title="Form expired",
                   message="The form was not accepted (its security token is missing or expired). Please try again.")


# --------------------------------------------------------------------------- pages


def _home() -> RedirectResponse:
    return RedirectResponse(f"{BASE}/data-streams", status_code=303)


def _login_page(request: Request) -> HTMLResponse:
    return _render(request, "login.html", error=None)


async def _login(request: Request) -> Response:
    form = await _form(request)
    if form is None:
        return _forbidden(request)
    with request.app.state.engine.connect() as connection:
        principal = authenticate(connection, form.get("api_key", "").strip())
    if principal is None:
        return _render(request, "login.html", status_code=401, error="This API key is not valid.")
    request.session.clear()
    request.session["key"] = principal.key_prefix
    _csrf(request)  # a new token with the new session
    return _home()


async def _logout(request: Request) -> Response:
    if await _form(request) is not None:
        request.session.clear()
    return _to_login()


def _overview(request: Request) -> Response:
    with request.app.state.engine.begin() as connection:
        principal = _principal(request, connection)
        if principal is None:
            return _to_login()
        streams = _service(request, connection).list(principal)
    notice = request.session.pop("notice", None)
    return _render(request, "overview.html", streams=streams, principal=principal, notice=notice)


def _new_page(request: Request) -> Response:
    with request.app.state.engine.connect() as connection:
        principal = _principal(request, connection)
    if principal is None:
        return _to_login()
    return _render(request, "new.html", api_types=catalogue.API_TYPES, stream_types=catalogue.STREAM_TYPES,
                   values={}, error=None, error_field=None, principal=principal)


def _body_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The API's create body from the form: only the chosen API type's fields."""
    api_type = form.get("api_type", "")
    body: dict[str, Any] = {"stream_type": form.get("stream_type", ""), "api_type": api_type,
                            "historic_data": form.get("historic_data") == "on"}
    if form.get("organisation_id", "").strip():
        try:
            body["organisation_id"] = int(form["organisation_id"])
        except ValueError:
            raise FieldError("organisation_id", "organisation_id must be a number") from None
    fields = catalogue.FIELDS_OF.get(api_type)
    if fields is None:
        return body
    block = DESTINATION_OF[api_type]
    destination = {}
    for item in fields:
        value = form.get(f"{api_type}.{item.name}", "").strip()
        if value:
            destination[item.name] = value
    body[block] = destination
    return body


async def _store(request: Request) -> Response:
    form = await _form(request)
    if form is None:
        return _forbidden(request)
    with request.app.state.engine.begin() as connection:
        principal = _principal(request, connection)
        if principal is None:
            return _to_login()
        problem: FieldError | None = None
        try:
            body = _body_from_form(form)
            if body["stream_type"] not in catalogue.STREAM_TYPE_NAMES:
                raise FieldError("stream_type", "Please select a stream type.")
            if body["api_type"] not in catalogue.API_TYPE_NAMES:
                raise FieldError("api_type", "Please select an API type.")
            block = DESTINATION_OF[body["api_type"]]
            for item in catalogue.FIELDS_OF[body["api_type"]]:
                if item.required and item.name not in body[block]:
                    raise FieldError(f"{block}.{item.name}", f"{item.label} is required.")
            view, signing_secret = _service(request, connection).create(principal, body)
        except FieldError as err:
            problem = err
    if problem is not None:
        # Typed credentials are not sent back into the page.
        secret_names = {f"{api_type}.{name}" for api_type, block in DESTINATION_OF.items()
                        for name in SECRET_FIELDS[block]}
        values = {key: value for key, value in form.items() if key not in secret_names and key != "csrf_token"}
        return _render(request, "new.html", status_code=422, api_types=catalogue.API_TYPES,
                       stream_types=catalogue.STREAM_TYPES, values=values, error=str(problem),
                       error_field=problem.field, principal=principal)
    notice = f"Data stream {view['id']} stored and activated."
    if signing_secret:
        notice += (f" Its signing secret, shown only now (requests carry an HMAC-SHA256 signature made with it): "
                   f"{signing_secret}")
    request.session["notice"] = notice
    return _home()


def _stream_page(request: Request, stream_id: str) -> Response:
    with request.app.state.engine.connect() as connection:
        principal = _principal(request, connection)
        if principal is None:
            return _to_login()
        service = _service(request, connection)
        try:
            stream = service.get(principal, stream_id)
            recent = service.recent(principal, stream_id)
            hourly = service.hourly(principal, stream_id)
        except StreamNotFoundError:
            return _missing(request)
    peak = max([hour["delivered"] for hour in hourly] + [1])
    return _render(request, "stream.html", stream=stream, recent=recent, hourly=hourly, peak=peak)


def _delete_page(request: Request, stream_id: str) -> Response:
    """The confirmation (the dialog's page when JavaScript is off)."""
    with request.app.state.engine.connect() as connection:
        principal = _principal(request, connection)
        if principal is None:
            return _to_login()
        try:
            stream = _service(request, connection).get(principal, stream_id)
        except StreamNotFoundError:
            return _missing(request)
    return _render(request, "confirm_delete.html", stream=stream)


async def _action(request: Request, stream_id: str, action: str) -> Response:
    if action not in ("delete", "deactivate", "activate", "restart"):
        return _render(request, "message.html", status_code=404, title="Not found", message="No such action.")
    form = await _form(request)
    if form is None:
        return _forbidden(request)
    with request.app.state.engine.begin() as connection:
        principal = _principal(request, connection)
        if principal is None:
            return _to_login()
        service = _service(request, connection)
        try:
            if action == "delete":
                service.delete(principal, stream_id)
                request.session["notice"] = f"Data stream {stream_id} deleted."
            elif action == "deactivate":
                service.deactivate(principal, stream_id)
                request.session["notice"] = f"Data stream {stream_id} deactivated: its documents are kept."
            elif action == "activate":
                service.activate(principal, stream_id)
                request.session["notice"] = (f"Data stream {stream_id} activated: the kept documents are delivered "
                                             "first.")
            else:
                service.restart(principal, stream_id)
                request.session["notice"] = f"Data stream {stream_id} restarted."
        except StreamNotFoundError:
            return _missing(request)
        except StateConflictError as err:
            request.session["notice"] = str(err)
    return _home()


def _service(request: Request, connection: sa.Connection) -> StreamService:
    state = request.app.state
    return StreamService(connection, state.sealer, state.rules)
