"""Alembic's environment for the stream store (``schemas/stream_store.py``).

Run by ``portal.db.migrate`` (the portal at start, ``python -m portal migrate``)
with the database URL in the config's ``sqlalchemy.url``; never reads alembic.ini.
"""

from __future__ import annotations

from alembic import context

from schemas.stream_store import engine_for, metadata

url = context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with engine_for(url).connect() as connection:
        # render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that.
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
