"""The portal's ASGI application: the API, the pages, and the headers every
response carries.

``create_app`` migrates the database to the head revision before it serves
(``portal/db.py``), so a new SQLite file or an empty PostgreSQL database works
at once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response

from portal import api, pages
from portal.db import DEFAULT_DATABASE_URL, migrate
from portal.streams import PortalRules
from schemas.sealing import Sealer
from schemas.stream_store import engine_for

#: Signs the pages' session cookies; a random one per process when unset (sessions end with it).
SESSION_KEY_ENV = "DATASTREAMER_PORTAL_SESSION_KEY"

#: Every response: no framing (clickjacking the Delete button), no sniffing, no
#: referrer leaving the portal, and only the portal's own scripts and styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class PortalSettings:
    database_url: str = DEFAULT_DATABASE_URL
    rules: PortalRules = field(default_factory=PortalRules)
    #: Sealing keys (``schemas/sealing.py``); None: from the environment.
    sealing_keys: list[str] | None = None
    session_key: str | None = None
    #: Sent over https only (``Secure`` cookies, HSTS): behind TLS in production.
    https: bool = False


APP_INFO: dict[str, Any] = {
    "title": "Data Streamer management API",
    "version": "1.0.0",
    "description": ("Data streams of the IoT SIM data streamer: create, read, update, delete, deactivate, "
                    "activate and restart them, their status as the job reports it, and a test of a "
                    "destination. Every request carries an API key (header X-API-Key)."),
    "openapi_url": "/api/v1/openapi.json",
    "docs_url": None,  # Swagger UI and ReDoc load their scripts from CDNs, which the CSP refuses
    "redoc_url": None,
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI description the service serves, without a database (docs/portal-api.md)."""
    app = FastAPI(**APP_INFO)
    app.include_router(api.router)
    return app.openapi()


def create_app(settings: PortalSettings | None = None) -> FastAPI:
    settings = settings or PortalSettings()
    migrate(settings.database_url)
    app = FastAPI(**APP_INFO)
    app.state.engine = engine_for(settings.database_url)
    app.state.sealer = Sealer(settings.sealing_keys) if settings.sealing_keys else Sealer.from_environment()
    app.state.rules = settings.rules
    app.state.session_key = settings.session_key or os.environ.get(SESSION_KEY_ENV) or secrets.token_urlsafe(32)
    app.state.https = settings.https
    app.include_router(api.router)
    api.install_error_answers(app)
    pages.install(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if settings.https:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        return response

    return app
