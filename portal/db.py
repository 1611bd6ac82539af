"""The portal's database: migrations (Alembic) and the URL it is given.

The schema is ``schemas/stream_store.py`` (shared with the job); its history is
``portal/migrations/versions``. :func:`migrate` brings any database to the head
revision, and the portal runs it at start, so a fresh SQLite file or an empty
PostgreSQL database is ready without a separate step (``python -m portal
migrate`` does it alone, for deployments that migrate before they roll out).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from schemas.stream_store import engine_for

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The embedded default: an SQLite file beside the job's local outputs.
DEFAULT_DATABASE_URL = "sqlite:///out/portal.db"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation: a '%' in a password would be read as a reference.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> str:
    """Upgrade the database at ``url`` to the head revision; returns it."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and "/" in url[10:]:
        Path(url[10:]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
    return current_revision(url) or ""


def current_revision(url: str) -> str | None:
    with engine_for(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
