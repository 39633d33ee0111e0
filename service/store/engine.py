"""Engine factory: one place that knows what each backend needs to be safe under concurrency.

SQLite: WAL (readers never block the writer), a busy timeout (writers queue instead of failing),
foreign keys on (off by default), and pysqlite's implicit transactions replaced by explicit ones so a
write transaction can start with BEGIN IMMEDIATE: it takes the write lock up front, which is what
makes read-then-update sequences such as claiming a job atomic between processes.
PostgreSQL: pre-ping so connections dropped by a server restart are replaced, not reported as errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from service.store.errors import StoreUnavailableError

# Execution option on an engine/connection: its transactions write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "prunesearch_write"


def redact(url: str | URL) -> str:
    """The URL as it may appear in logs and errors: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def parse_url(url: str | URL) -> URL:
    """Parse, defaulting PostgreSQL to psycopg 3 (the driver the project depends on; a bare
    postgresql:// would ask for psycopg2, postgres:// for nothing SQLAlchemy knows)."""
    try:
        u = make_url(url)
    except ArgumentError:
        # The text may hold a password, so it is not echoed.
        raise StoreUnavailableError("not a valid database URL") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL, *, busy_timeout_ms: int = 5000, echo: bool = False) -> Engine:
    u = parse_url(url)
    try:
        if u.get_backend_name() == "sqlite":
            return _sqlite_engine(u, busy_timeout_ms, echo)
        connect_args: dict[str, Any] = {}
        if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
            connect_args["connect_timeout"] = 10
        return create_engine(u, pool_pre_ping=True, connect_args=connect_args, echo=echo)
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreUnavailableError(f"{redact(u)}: no usable SQLAlchemy driver for {u.drivername!r} ({exc})") from exc


def _sqlite_engine(u: URL, busy_timeout_ms: int, echo: bool) -> Engine:
    db = u.database
    if db and db != ":memory:" and not db.startswith("file:"):
        try:
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"{redact(u)}: cannot create the database folder ({exc})") from exc
    engine = create_engine(u, echo=echo,
                           connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, far fewer fsyncs
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# Connection-level failures: the database is down, unreachable, locked past the busy timeout.
UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def reason(exc: BaseException) -> str:
    """The first line of the driver's message: enough to act on, no SQL or traceback links."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


class Transactions:
    """Short transactions on one engine, shared by every store on the database: `with tx(write=True)`
    commits on success; writes take SQLite's write lock up front (WRITE_OPTION); connection failures
    become StoreUnavailableError prefixed with `label`."""

    def __init__(self, engine: Engine, label: str) -> None:
        self.engine, self.label = engine, label
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

    @contextmanager
    def __call__(self, write: bool = False) -> Iterator[Session]:
        try:
            with (self._write if write else self._read).begin() as session:
                yield session
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(f"{self.label}: {reason(exc)}") from exc
