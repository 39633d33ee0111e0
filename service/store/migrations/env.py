"""Alembic environment. `JobStore.migrate()` passes its open connection in `config.attributes`;
from the alembic CLI (`alembic -c service/store/alembic.ini ...`) the URL comes from
PRUNESEARCH_DATABASE_URL or the ini file's sqlalchemy.url."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from service.store.engine import make_engine
from service.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = os.environ.get("PRUNESEARCH_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set PRUNESEARCH_DATABASE_URL or sqlalchemy.url to run migrations")
    return url


def run_offline() -> None:
    url = _url()
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run(conn: Connection) -> None:
    context.configure(connection=conn, target_metadata=target_metadata,
                      render_as_batch=conn.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as new_conn:
            _run(new_conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
