"""Python binding for crsql_stream, a SQLite extension for cr-sqlite
compatible CRDTs and sync streams.

The wheel ships the extension library; this module loads it into a standard
library :class:`sqlite3.Connection` and wraps the stream virtual tables in a
few thin helpers. Everything goes through plain SQL, so anything the helpers
do not cover is one ``conn.execute`` away (see docs/sql.md of the project).

    import crsql_stream

    a = crsql_stream.connect("a.db")     # sqlite3.connect() + load()
    b = crsql_stream.connect("b.db")
    for c in (a, b):
        c.execute("CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT)")
        c.execute("SELECT crsql_as_crr('todos')")
    a.execute("INSERT INTO todos VALUES ('t1', 'buy milk')")
    a.commit()
    crsql_stream.sync(a, b)              # both ways, until quiet
    b.execute("SELECT title FROM todos").fetchall()   # [('buy milk',)]
    a.close(); b.close()                 # crsql_finalize(), then close

Transactions: every helper that writes (creating a stream, :meth:`Outbound.ack`,
:meth:`Inbound.apply`) commits its own statement when the connection was not
in a transaction before the call, and leaves the commit to you when it was
(then the write is part of your transaction, as the extension intends: an
applied package and its ``last_applied`` roll back together). A failed
statement that Python's implicit-transaction handling had opened a
transaction for is rolled back.

Errors of the extension are raised as the :mod:`sqlite3` module raises them
(:class:`sqlite3.OperationalError`, a subclass of :class:`sqlite3.Error`)
with the extension's message, e.g.
``crsql_InboundStream from_a: gap: expected a package starting at [3,0], got [5,0] (…)``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

__version__ = "0.1.0"

__all__ = [
    "Connection",
    "ExtensionLoadingUnavailable",
    "Inbound",
    "Outbound",
    "Package",
    "Position",
    "close",
    "connect",
    "finalize",
    "load",
    "parse_position",
    "path",
    "site_id",
    "sync",
]

#: A stream position, as the extension writes it: JSON text ``'[db_version,seq]'``.
Position = str

#: What a package is on the Python side: ``bytes`` (binary encoding) or ``str``
#: (``encoding = 'json'``).
PackageData = Union[bytes, str]

if sys.platform == "darwin":
    _LIB_NAME = "libcrsql_stream.dylib"
elif sys.platform == "win32":
    _LIB_NAME = "crsql_stream.dll"
else:
    _LIB_NAME = "libcrsql_stream.so"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT64_MAX = 2**63 - 1


class ExtensionLoadingUnavailable(sqlite3.NotSupportedError):
    """This Python's :mod:`sqlite3` module was built without support for
    loading SQLite extensions, so :func:`load` cannot work with it. The message
    says which Python it is and what to use instead."""


# --------------------------------------------------------------------------
# Loading


def path() -> str:
    """Absolute path of the extension library shipped in this package.

    Outside an installed wheel (running from a source checkout, where the
    library has not been copied into the package), falls back to
    ``$CRSQL_STREAM_EXT``. Raises :class:`FileNotFoundError` if neither exists.
    """
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIB_NAME)
    if os.path.isfile(bundled):
        return bundled
    env = os.environ.get("CRSQL_STREAM_EXT")
    if env and os.path.isfile(env):
        return os.path.abspath(env)
    raise FileNotFoundError(
        f"crsql_stream: the extension library {_LIB_NAME} is not in {os.path.dirname(bundled)} "
        "(install the wheel built by `make wheel`) and $CRSQL_STREAM_EXT does not name a file"
    )


def _cannot_load_message(detail: str) -> str:
    return (
        f"crsql_stream.load: this Python's sqlite3 module cannot load SQLite extensions "
        f"({detail}; Python {sys.executable}, SQLite {sqlite3.sqlite_version}). "
        "Use a Python whose sqlite3 supports extension loading: for example the system "
        "Python of Debian or Ubuntu (/usr/bin/python3), with a virtual environment made by "
        "`/usr/bin/python3 -m venv`, or rebuild this Python with "
        "--enable-loadable-sqlite-extensions (pyenv: "
        "PYTHON_CONFIGURE_OPTS=--enable-loadable-sqlite-extensions pyenv install <version>)."
    )


def _is_loaded(conn: Any) -> bool:
    try:
        conn.execute("SELECT crsql_version()").fetchone()
        return True
    except sqlite3.OperationalError:
        return False


def load(conn: sqlite3.Connection) -> None:
    """Load the extension into ``conn`` (a :class:`sqlite3.Connection`).

    Loading is per connection: call this for every connection that uses CRRs
    or streams, including connections that only write to CRR tables (the
    triggers call the extension's functions). Does nothing if the extension is
    already loaded into ``conn``. Extension loading is switched off again
    afterwards.

    Raises :class:`ExtensionLoadingUnavailable` (a
    :class:`sqlite3.NotSupportedError`) if this Python's sqlite3 module was
    built without extension loading (pyenv's and some other builds), and
    :class:`sqlite3.OperationalError` if SQLite refuses to load the library.
    """
    if _is_loaded(conn):
        return
    enable = getattr(conn, "enable_load_extension", None)
    if enable is None or getattr(conn, "load_extension", None) is None:
        raise ExtensionLoadingUnavailable(
            _cannot_load_message("sqlite3.Connection has no enable_load_extension")
        )
    lib = path()
    try:
        enable(True)
    except (AttributeError, NotImplementedError) as e:
        raise ExtensionLoadingUnavailable(_cannot_load_message(f"enable_load_extension: {e}")) from e
    try:
        conn.load_extension(lib)
    except sqlite3.Error as e:
        raise type(e)(f"crsql_stream.load: SQLite could not load {lib}: {e}") from e
    finally:
        enable(False)


class Connection(sqlite3.Connection):
    """A :class:`sqlite3.Connection` whose :meth:`close` first runs
    ``crsql_finalize()``. Made by :func:`connect`."""

    def close(self) -> None:
        """Finalize the extension's cached statements (``SELECT crsql_finalize()``),
        then close the connection. Closing twice is allowed."""
        try:
            finalize(self)
        finally:
            super().close()


def connect(database: Union[str, "os.PathLike[str]"], **kwargs: Any) -> Connection:
    """``sqlite3.connect(database, **kwargs)`` with the extension loaded.

    Returns a :class:`Connection`, whose ``close()`` calls ``crsql_finalize()``
    first. ``kwargs`` go to :func:`sqlite3.connect` (``isolation_level``,
    ``timeout``, …); a ``factory`` must be a subclass of :class:`Connection`.
    """
    kwargs.setdefault("factory", Connection)
    conn: Connection = sqlite3.connect(database, **kwargs)
    try:
        load(conn)
    except BaseException:
        sqlite3.Connection.close(conn)
        raise
    return conn


def finalize(conn: sqlite3.Connection) -> None:
    """Run ``SELECT crsql_finalize()``, which finalizes the extension's cached
    prepared statements. Optional (the extension also does it when SQLite
    closes the connection), kept for cr-sqlite compatibility. Does nothing on
    a closed connection."""
    try:
        conn.execute("SELECT crsql_finalize()").fetchall()
    except sqlite3.ProgrammingError:
        # "Cannot operate on a closed database."
        pass


def close(conn: sqlite3.Connection) -> None:
    """Close any connection the extension was loaded into: ``crsql_finalize()``,
    then ``conn.close()``. As with :meth:`sqlite3.Connection.close`, an open
    transaction is rolled back, not committed."""
    try:
        finalize(conn)
    finally:
        conn.close()


def site_id(conn: sqlite3.Connection) -> str:
    """This database's site id as 32 lowercase hex digits (``crsql_site_id()``)."""
    return bytes(conn.execute("SELECT crsql_site_id()").fetchone()[0]).hex()


def parse_position(position: Position) -> Tuple[int, int]:
    """``'[12,3]'`` → ``(12, 3)``. Positions compare as these tuples.

    Raises ValueError for anything else (as the extension would refuse it:
    two integers from 0 to 2**63 - 1)."""
    if not isinstance(position, str):
        raise TypeError(f"a position is text such as '[12,3]', got {type(position).__name__} ({position!r})")
    try:
        value = json.loads(position)
    except ValueError:
        value = None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX for v in value)
    ):
        raise ValueError(f"not a position: {position!r} (expected '[db_version,seq]')")
    return value[0], value[1]


def _position_arg(value: Union[Position, "Package", Tuple[int, int]], what: str) -> Position:
    """A position given to a helper: its text, a :class:`Package` (its
    ``cursor``) or a ``(db_version, seq)`` tuple; checked before SQLite sees it."""
    if isinstance(value, Package):
        value = value.cursor
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{what}: a position tuple is (db_version, seq), got {value!r}")
        value = f"[{value[0]},{value[1]}]"
    if not isinstance(value, str):
        raise TypeError(f"{what}: a position is text such as '[12,3]', got {type(value).__name__} ({value!r})")
    return value


def _count_arg(value: Any, what: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------
# SQL helpers


def _quote_ident(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a stream name must be a non-empty string, got {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _arg_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return ",".join(_arg_text(key, v) for v in items)
    raise TypeError(f"stream argument {key}: cannot use a {type(value).__name__} ({value!r})")


def _args_sql(args: Dict[str, Any]) -> str:
    parts = []
    for key, value in args.items():
        if value is None:
            continue
        if not _IDENT.fullmatch(key):
            raise ValueError(f"not a stream argument name: {key!r}")
        parts.append(f"{key} = '" + _arg_text(key, value).replace("'", "''") + "'")
    return ", ".join(parts)


def _write(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> None:
    """Execute a writing statement; commit it unless the caller has a
    transaction open (see the module docstring)."""
    outside = not conn.in_transaction
    try:
        conn.execute(sql, params)
    except BaseException:
        if outside and conn.in_transaction:
            conn.rollback()
        raise
    if outside and conn.in_transaction:
        conn.commit()


# --------------------------------------------------------------------------
# Streams


@dataclass(frozen=True)
class Package:
    """One row of an outbound stream: a package and where it lies in the stream."""

    #: The opaque package to send: ``bytes``, or ``str`` with ``encoding = 'json'``.
    data: PackageData
    #: Position of the last change it covers (inclusive). Acknowledge this (or
    #: the receiver's ``last_applied``) once the peer has applied it.
    cursor: Position
    #: Position it starts after (exclusive): the previous package's cursor.
    since: Position
    #: Number of changes (0 for a heartbeat that only moves the position).
    changes: int
    #: Encoded size in bytes.
    size: int


class _Stream:
    """What both stream kinds share: create-if-missing, checking that the
    table of that name really is a stream of this kind, and ``drop()``."""

    _MODULE = ""
    _DIRECTION = ""

    def __init__(self, conn: sqlite3.Connection, name: str, **args: Any) -> None:
        self.conn = conn
        self.name = name
        self._q = _quote_ident(name)
        _write(conn, f"CREATE VIRTUAL TABLE IF NOT EXISTS {self._q} USING {self._MODULE}({_args_sql(args)})")
        self._check_kind()

    def _check_kind(self) -> None:
        """Raise ValueError unless ``name`` is a stream of this kind (so a
        helper never writes to, or drops, a table that is not its stream)."""
        row = self._stream_row("direction")
        if row is None or row[0] != self._DIRECTION:
            what = "a table that is not a stream" if row is None else f"an {row[0]} stream"
            raise ValueError(
                f"crsql_stream.{type(self).__name__}: {self.name!r} already exists as {what}, "
                f"not a {self._MODULE} table; choose another name"
            )

    def _stream_row(self, column: str) -> Optional[Tuple[Any]]:
        """This stream's ``column`` in ``crsql_streams`` (a 1-tuple), or None."""
        return self.conn.execute(f"SELECT {column} FROM crsql_streams WHERE name = ?", (self.name,)).fetchone()

    def _stream_column(self, column: str) -> Any:
        row = self._stream_row(column)
        if row is None:
            raise sqlite3.OperationalError(f"crsql_stream: no stream named {self.name}")
        return row[0]

    def drop(self) -> None:
        """``DROP TABLE`` the stream, deleting its stored state (and, for an
        inbound stream, its staged parts). Raises ValueError, dropping
        nothing, if the table of that name is no longer a stream of this kind."""
        self._check_kind()
        _write(self.conn, f"DROP TABLE IF EXISTS {self._q}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Outbound(_Stream):
    """An outbound stream: ``crsql_OutboundStream`` virtual table ``name``.

    Creates the table if it does not exist, with ``args`` as its arguments
    (``since``, ``exclude_sites``, ``local_only``, ``tables``,
    ``max_changes``, ``max_bytes``, ``encoding``); an existing stream keeps
    the arguments it was created with. Values may be ``str``, ``int``,
    ``bool``, ``bytes`` (a site id, written as hex) or a list of those
    (joined with commas), e.g.
    ``Outbound(conn, "to_b", exclude_sites=[b_site], max_changes=500)``.
    """

    _MODULE = "crsql_OutboundStream"
    _DIRECTION = "outbound"

    def packages(
        self, limit: Optional[int] = None, *, after: Union[Position, Package, Tuple[int, int], None] = None
    ) -> Iterator[Package]:
        """The packages after ``last_sent`` (or after ``after``), in order,
        at most ``limit`` (an integer ≥ 0; ``None``: no limit) of them.

        Lazy: each package is built when the iteration reaches it. Reading
        changes nothing in the database; a package that is not acknowledged
        is produced again by the next call. Bad arguments raise here, not at
        the first ``next()``.
        """
        sql = f"SELECT package, cursor, since, changes, bytes FROM {self._q}"
        params: List[Any] = []
        if after is not None:
            sql += " WHERE cursor > ?"
            params.append(_position_arg(after, "packages(after=...)"))
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_count_arg(limit, "packages(limit=...)", 0))
        return self._rows(sql, params)

    def _rows(self, sql: str, params: List[Any]) -> Iterator[Package]:
        cur = self.conn.execute(sql, params)
        try:
            for data, cursor, since, changes, size in cur:
                yield Package(data, cursor, since, changes, size)
        finally:
            try:
                cur.close()
            except sqlite3.ProgrammingError:
                pass  # the connection was closed while the generator was suspended

    def ack(self, cursor: Union[Position, Package, Tuple[int, int]]) -> None:
        """Record that the peer has applied everything up to ``cursor`` (a
        position, a :class:`Package` or a ``(db_version, seq)`` tuple):
        ``INSERT INTO name(last_sent) VALUES (cursor)``. Idempotent and
        order-insensitive: ``last_sent`` only moves forward."""
        position = _position_arg(cursor, "ack")
        _write(self.conn, f"INSERT INTO {self._q}(last_sent) VALUES (?)", (position,))

    @property
    def last_sent(self) -> Position:
        """The acknowledged position (durable)."""
        return str(self._stream_column("last_sent"))

    @property
    def last_retrieved(self) -> Optional[Position]:
        """The largest cursor this connection has read (per connection, ``None`` before the first)."""
        value = self._stream_column("last_retrieved")
        return None if value is None else str(value)



class Inbound(_Stream):
    """An inbound stream: ``crsql_InboundStream`` virtual table ``name``.

    Creates the table if it does not exist, with ``args`` as its arguments
    (``from_`` or ``from`` — the expected sender's site id as hex or bytes —,
    ``since``, ``tables``); an existing stream keeps its arguments. ``from``
    is a Python keyword, so pass it as ``from_=...`` or ``**{"from": ...}``.
    """

    _MODULE = "crsql_InboundStream"
    _DIRECTION = "inbound"

    def __init__(self, conn: sqlite3.Connection, name: str, **args: Any) -> None:
        if "from_" in args:
            if "from" in args:
                raise TypeError("give from_ or from, not both")
            args["from"] = args.pop("from_")
        super().__init__(conn, name, **args)

    def apply(self, package: Union[PackageData, Package]) -> Position:
        """Apply one package (``INSERT INTO name(package) VALUES (?)``) and
        return the new ``last_applied``, the position to acknowledge to the
        sender.

        A duplicate (already covered) is a no-op. A gap, a corrupted,
        truncated or foreign package, or one whose tables do not match the
        local schema raises :class:`sqlite3.OperationalError` with the
        extension's message, and changes nothing.
        """
        if isinstance(package, Package):
            package = package.data
        if isinstance(package, (bytearray, memoryview)):
            package = bytes(package)
        _write(self.conn, f"INSERT INTO {self._q}(package) VALUES (?)", (package,))
        return self.last_applied

    @property
    def last_applied(self) -> Position:
        """Position of the last applied package (``since`` before the first):
        where the sender should resume."""
        return str(self.conn.execute(f"SELECT last_applied FROM {self._q}").fetchone()[0])

    @property
    def sender(self) -> Optional[str]:
        """Hex site id of the sender this stream follows (``None`` until pinned)."""
        value = self.conn.execute(f"SELECT sender FROM {self._q}").fetchone()[0]
        return None if value is None else str(value)



def _link(out: Outbound, inb: Inbound, batch: int) -> int:
    """Move up to ``batch`` packages from ``out`` to ``inb``; acknowledge."""
    # The receiver may be ahead of the acknowledged position (applied, then
    # the ack was lost): start from what it has.
    out.ack(inb.last_applied)
    moved = 0
    for pkg in out.packages(limit=batch):
        inb.apply(pkg.data)
        moved += 1
    if moved:
        out.ack(inb.last_applied)
    return moved


class _Progress:
    """Feeds a ``progress(done, total)`` callback from ``lag_changes`` of the
    outbound streams: ``total`` is what was left at the start plus whatever
    was written meanwhile, ``done`` what left the streams since; both only
    grow, and ``done == total`` once every stream has caught up."""

    def __init__(self, callback: Optional[Callable[[int, int], Any]], outs: Sequence["Outbound"]) -> None:
        self.callback, self.outs, self.done, self.total = callback, outs, 0, 0
        if callback is not None:
            self.total = self._left()
            callback(0, self.total)

    def _left(self) -> int:
        return sum(int(out._stream_column("lag_changes") or 0) for out in self.outs)

    def update(self) -> None:
        if self.callback is None:
            return
        left = self._left()
        if self.done + left > self.total:
            self.total = self.done + left
        else:
            self.done = self.total - left
        self.callback(self.done, self.total)


def sync(
    a: sqlite3.Connection,
    b: sqlite3.Connection,
    *,
    max_rounds: int = 10_000,
    batch: int = 100,
    progress: Optional[Callable[[int, int], Any]] = None,
    **outbound_args: Any,
) -> int:
    """Sync two connections both ways until no package moves; return how many
    packages moved in total.

    On each side, creates (if missing) an outbound stream towards the other,
    ``crsql_sync_to_<peer site id>``, which leaves out the peer's own changes,
    and an inbound stream from it, ``crsql_sync_from_<peer site id>``. So
    repeated calls continue where the previous one stopped, also across
    restarts. ``outbound_args`` (``max_changes``, ``tables``, …) are used when
    the outbound streams are created.

    ``progress``, if given, is called as ``progress(done, total)`` before the
    first package and after every batch of packages: ``total`` is the number
    of changes the two outbound streams had left to send (their
    ``lag_changes``) when ``sync`` started, plus any written meanwhile, and
    ``done`` how many of them have been sent and acknowledged since. Both
    only grow; the last call has ``done == total``.

    Every package and acknowledgement is committed as it goes (unless a
    connection has a transaction open; then that transaction holds them).
    Commit your own writes first: the outbound streams only read committed
    changes, so an open transaction's writes are not sent.
    Raises :class:`ValueError` if ``a`` and ``b`` are the same database (same
    site id) or ``max_rounds`` or ``batch`` is below 1, :class:`TypeError` if
    ``outbound_args`` has ``exclude_sites``
    (``sync`` sets it to the peer), and :class:`RuntimeError` if the two are
    not quiet after ``max_rounds`` rounds (one round: up to ``batch`` packages
    each way).
    """
    _count_arg(max_rounds, "sync: max_rounds", 1)
    _count_arg(batch, "sync: batch", 1)
    if "exclude_sites" in outbound_args:
        raise TypeError("crsql_stream.sync: exclude_sites is set by sync (to the peer's site id); leave it out")
    if progress is not None and not callable(progress):
        raise TypeError("crsql_stream.sync: progress must be a callable taking (done, total)")
    sa, sb = site_id(a), site_id(b)
    if sa == sb:
        raise ValueError(f"crsql_stream.sync: both connections are the same database (site {sa})")
    links = (
        (Outbound(a, f"crsql_sync_to_{sb}", exclude_sites=sb, **outbound_args), Inbound(b, f"crsql_sync_from_{sa}", from_=sa)),
        (Outbound(b, f"crsql_sync_to_{sa}", exclude_sites=sa, **outbound_args), Inbound(a, f"crsql_sync_from_{sb}", from_=sb)),
    )
    meter = _Progress(progress, [out for out, _ in links])
    total = 0
    for _ in range(max_rounds):
        moved = 0
        for out, inb in links:
            moved += _link(out, inb, batch)
            meter.update()
        if moved == 0:
            return total
        total += moved
    raise RuntimeError(f"crsql_stream.sync: still moving packages after {max_rounds} rounds")
