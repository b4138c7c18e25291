"""A client of the ``crsql-sync`` hub: sync a database with a hub over the
hub's wire protocol (docs/protocol.md of the project), on the `websockets
<https://websockets.readthedocs.io>`_ package (``pip install
'crsql-stream[hub]'``).

    import crsql_stream
    from crsql_stream import hub

    hub.sync("a.db", "ws://127.0.0.1:8080/acme", token="s3cret",
             progress=lambda done, total: print(done, "/", total))

    syncer = hub.Syncer("a.db", "ws://127.0.0.1:8080/acme")   # stays connected
    syncer.start()
    ...                                  # write to a.db from any connection
    syncer.stop()

The database gets two streams per hub (named by the hub's site id):
``crsql_hub_to_<hub>`` (outbound, ``local_only = 1``: only this site's own
changes go up) and ``crsql_hub_from_<hub>`` (inbound). Their positions are
stored in the database, so every sync resumes where the last one stopped,
and so does a reconnection. It is the same protocol and the same streams as
``crsql-sync sync`` and the Rust and Node clients.

Errors: the protocol's error codes are raised as subclasses of
:class:`HubError` (``.code``, ``.message``): :class:`UnauthorizedError`,
:class:`SchemaMismatchError`, :class:`GapError`, … Codes that retrying
cannot fix (:attr:`HubError.fatal`) end a sync at once; the others, and lost
connections (:class:`HubConnectionError`), are retried with backoff and
raised only when ``max_retries`` or ``timeout`` run out.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

__all__ = [
    "BadFrameError",
    "BadPackageError",
    "BadTenantError",
    "ForeignSenderError",
    "FrameTooLargeError",
    "GapError",
    "HubConnectionError",
    "HubError",
    "HubTimeoutError",
    "InternalError",
    "Progress",
    "ProtocolVersionError",
    "ReadOnlyError",
    "ResyncRequiredError",
    "SchemaMismatchError",
    "ShuttingDownError",
    "SyncTimeoutError",
    "Syncer",
    "UnauthorizedError",
    "UnknownTenantError",
    "schema_hash",
    "sync",
]

PROTOCOL_VERSION = 1
MAGIC = b"CRSY"
T_HELLO, T_WELCOME, T_PACKAGE, T_ACK, T_CAUGHT_UP, T_ERROR = 1, 2, 3, 4, 5, 6
WELCOME_READ_ONLY = 0x01
_POS = struct.Struct(">QQ")
_WELCOME = struct.Struct(">H16s16sBIQQQ")

ProgressCallback = Callable[[int, int], Any]


# --------------------------------------------------------------------------
# Errors


class HubError(Exception):
    """An error of the hub protocol: ``code`` is the protocol's stable code
    (``'unauthorized'``, ``'gap'``, …; ``None`` for errors of this client
    that have none) and ``message`` the text that came with it."""

    #: The code of this class (subclasses set it).
    CODE: Optional[str] = None
    #: Codes that retrying cannot fix: a sync ends at once with them.
    FATAL_CODES = frozenset(
        {
            "protocol_version",
            "bad_tenant",
            "unknown_tenant",
            "unauthorized",
            "read_only",
            "foreign_sender",
            "schema_mismatch",
            "resync_required",
        }
    )

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        self.code = code if code is not None else self.CODE
        self.message = message
        super().__init__(f"{self.code}: {message}" if self.code else message)

    @property
    def fatal(self) -> bool:
        """Whether retrying cannot help (the sync gives up at once)."""
        return self.code in self.FATAL_CODES or (self.code is None and not isinstance(self, HubConnectionError))


class ProtocolVersionError(HubError):
    CODE = "protocol_version"


class BadFrameError(HubError):
    CODE = "bad_frame"


class FrameTooLargeError(HubError):
    CODE = "frame_too_large"


class BadTenantError(HubError):
    CODE = "bad_tenant"


class UnknownTenantError(HubError):
    CODE = "unknown_tenant"


class UnauthorizedError(HubError):
    CODE = "unauthorized"


class ReadOnlyError(HubError):
    CODE = "read_only"


class ForeignSenderError(HubError):
    CODE = "foreign_sender"


class GapError(HubError):
    CODE = "gap"


class SchemaMismatchError(HubError):
    CODE = "schema_mismatch"


class ResyncRequiredError(HubError):
    CODE = "resync_required"


class BadPackageError(HubError):
    CODE = "bad_package"


class ShuttingDownError(HubError):
    CODE = "shutting_down"


class HubTimeoutError(HubError):
    """The hub's ``timeout`` code: it had packages in flight and no
    acknowledgement for its ``--write-timeout``."""

    CODE = "timeout"


class InternalError(HubError):
    CODE = "internal"


class HubConnectionError(HubError):
    """No connection to the hub, or it was lost (raised when retries run out)."""


class SyncTimeoutError(HubError):
    """Not caught up within ``timeout``; ``last`` is the last error, if any."""

    def __init__(self, message: str, last: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.last = last


_BY_CODE: Dict[str, type] = {
    c.CODE: c
    for c in (
        ProtocolVersionError,
        BadFrameError,
        FrameTooLargeError,
        BadTenantError,
        UnknownTenantError,
        UnauthorizedError,
        ReadOnlyError,
        ForeignSenderError,
        GapError,
        SchemaMismatchError,
        ResyncRequiredError,
        BadPackageError,
        ShuttingDownError,
        HubTimeoutError,
        InternalError,
    )
}


def error_for(code: str, message: str) -> HubError:
    """The :class:`HubError` subclass of a protocol error code (a code this
    version does not know: a plain :class:`HubError` with that code)."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls else HubError(message, code)


# --------------------------------------------------------------------------
# Frames (docs/protocol.md)

Pos = Tuple[int, int]


def _pos_text(p: Pos) -> str:
    return f"[{p[0]},{p[1]}]"


def _parse_pos(text: Optional[str]) -> Pos:
    if text is None:
        return (0, 0)
    from . import parse_position

    return parse_position(str(text))


def _hello(site: bytes, schema: bytes, tenant: str, token: bytes, positions: List[Tuple[bytes, Pos]]) -> bytes:
    t = tenant.encode()
    out = [bytes([T_HELLO]), MAGIC, struct.pack(">H", PROTOCOL_VERSION), site, schema]
    out += [bytes([len(t)]), t, struct.pack(">H", len(token)), token, struct.pack(">H", len(positions))]
    for s, p in positions:
        out += [s, _POS.pack(*p)]
    return b"".join(out)


def _error_frame(code: str, message: str) -> bytes:
    m = message.encode()[:65535]
    return bytes([T_ERROR, len(code)]) + code.encode() + struct.pack(">H", len(m)) + m


@dataclass(frozen=True)
class _Welcome:
    hub_site: bytes
    read_only: bool
    max_frame: int
    applied: Pos
    backlog: int


def _decode(frame: Union[bytes, str]) -> Tuple[int, Any]:
    """(type, body) of a frame from the hub; a HubError for an error frame,
    a HubConnectionError for anything that does not decode."""
    if not isinstance(frame, (bytes, bytearray)) or not frame:
        raise HubConnectionError(f"bad frame from the hub: {type(frame).__name__} message")
    t, body = frame[0], bytes(frame[1:])
    try:
        if t == T_WELCOME:
            v, site, _schema, flags, max_frame, dv, seq, backlog = _WELCOME.unpack(body)
            if v != PROTOCOL_VERSION:
                raise HubConnectionError(f"the hub speaks protocol version {v}, this client {PROTOCOL_VERSION}")
            return t, _Welcome(site, bool(flags & WELCOME_READ_ONLY), max_frame, (dv, seq), backlog)
        if t in (T_ACK, T_CAUGHT_UP):
            return t, _POS.unpack(body)
        if t == T_PACKAGE and body:
            return t, body
        if t == T_ERROR:
            n = body[0]
            code = body[1 : 1 + n].decode("ascii")
            (m,) = struct.unpack(">H", body[1 + n : 3 + n])
            message = body[3 + n : 3 + n + m].decode("utf-8", "replace")
            raise error_for(code, message)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise HubConnectionError(f"bad frame from the hub (type {t}): {e}") from e
    raise HubConnectionError(f"unexpected frame type {t} from the hub")


# --------------------------------------------------------------------------
# The database side


def schema_hash(conn: sqlite3.Connection) -> bytes:
    """The 16-byte schema hash of a hello: SHA-256 over every CRR, in name
    order, of ``name NUL pk1 US pk2 … NUL col1 US col2 … LF``, cut to 16
    bytes (docs/protocol.md, "Schema hash")."""
    h = hashlib.sha256()
    tables = [
        r[0]
        for r in conn.execute(
            # Both layouts: cr-sqlite's `T__crsql_clock`, compact's `T__crsql_rows`.
            "SELECT substr(name, 1, length(name) - 13) FROM sqlite_master "
            "WHERE type = 'table' AND name LIKE '%\\_\\_crsql\\_clock' ESCAPE '\\' "
            "UNION SELECT substr(name, 1, length(name) - 12) FROM sqlite_master "
            "WHERE type = 'table' AND name LIKE '%\\_\\_crsql\\_rows' ESCAPE '\\' ORDER BY 1"
        )
    ]
    for t in tables:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (t,)).fetchone() is None:
            continue
        cols = conn.execute("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", (t,)).fetchall()
        pks = [c[0] for c in sorted((c for c in cols if c[1] > 0), key=lambda c: c[1])]
        others = [c[0] for c in cols if c[1] == 0]
        h.update(t.encode() + b"\0" + "\x1f".join(pks).encode() + b"\0" + "\x1f".join(others).encode() + b"\n")
    return h.digest()[:16]


_IN_PREFIX = "crsql_hub_from_"


def _positions(conn: sqlite3.Connection) -> List[Tuple[bytes, Pos]]:
    out = []
    for name, pos in conn.execute(
        "SELECT name, last_applied FROM crsql_streams WHERE direction = 'inbound' "
        "AND name LIKE 'crsql\\_hub\\_from\\_%' ESCAPE '\\' ORDER BY name"
    ):
        try:
            out.append((bytes.fromhex(name[len(_IN_PREFIX) :]), _parse_pos(pos)))
        except ValueError:
            continue
    return out


def _pending(conn: sqlite3.Connection, db_version: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM crsql_changes WHERE db_version > ? AND site_id IS crsql_site_id()", (db_version,)
    ).fetchone()[0]


@dataclass
class Progress:
    """Progress of one connection, in changes."""

    #: Local changes pushed and acknowledged.
    pushed: int = 0
    #: Local changes the hub lacked at the hello (counted with a progress callback only).
    push_total: int = 0
    #: Changes pulled and applied.
    pulled: int = 0
    #: About how many changes the hub held for this client at the hello.
    pull_total: int = 0

    @property
    def done(self) -> int:
        return self.pushed + self.pulled

    @property
    def total(self) -> int:
        return max(self.push_total + self.pull_total, self.done)


def _write(conn: sqlite3.Connection, sql: str, params: Tuple[Any, ...] = ()) -> None:
    from . import _write as write

    write(conn, sql, params)


class _Stop(Exception):
    pass


def _session(conn: sqlite3.Connection, url: str, tenant: str, opts: Dict[str, Any], stop: threading.Event) -> Progress:
    """One connection; returns when caught up (``once``), raises otherwise."""
    try:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
        from websockets.sync.client import connect
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "crsql_stream.hub needs the websockets package: pip install 'crsql-stream[hub]' (or websockets>=13)"
        ) from e
    from . import site_id as _site

    try:
        ws = connect(
            url,
            open_timeout=10,
            close_timeout=2,
            max_size=opts["max_frame"],
            compression=None,
            ssl=opts["ssl"],
        )
    except InvalidURI as e:
        raise HubError(f"bad hub URL {url!r}: {e}") from e
    except (OSError, InvalidHandshake, TimeoutError) as e:
        raise HubConnectionError(f"cannot connect to {url}: {e}") from e
    with ws:
        try:
            return _run(conn, ws, tenant, opts, stop, bytes.fromhex(_site(conn)))
        except ConnectionClosed as e:
            raise HubConnectionError(f"connection lost: {e}") from e
        except OSError as e:
            raise HubConnectionError(f"connection lost: {e}") from e
        except sqlite3.Error as e:
            try:
                ws.send(_error_frame("internal", f"client database: {e}"))
            except Exception:
                pass
            raise


def _run(conn, ws, tenant: str, opts: Dict[str, Any], stop: threading.Event, site: bytes) -> Progress:
    token = (opts["token"] or "").encode()
    ws.send(_hello(site, schema_hash(conn), tenant, token, _positions(conn)))
    try:
        t, welcome = _decode(ws.recv(timeout=30))
    except TimeoutError as e:
        raise HubConnectionError("no welcome from the hub within 30 s") from e
    if t != T_WELCOME:
        raise HubConnectionError(f"expected a welcome, got frame type {t}")
    hub = welcome.hub_site.hex()
    out_name, in_name = f'"crsql_hub_to_{hub}"', f'"crsql_hub_from_{hub}"'
    max_bytes = max(min(welcome.max_frame, opts["max_frame"]) - 64, 1024)
    _write(
        conn,
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {out_name} USING "
        f"crsql_OutboundStream(local_only = 1, peer = '{hub}', max_bytes = {max_bytes})",
    )
    _write(conn, f"CREATE VIRTUAL TABLE IF NOT EXISTS {in_name} USING crsql_InboundStream(from = '{hub}')")
    last_sent = _parse_pos(conn.execute("SELECT last_sent FROM crsql_streams WHERE name = ?", (out_name[1:-1],)).fetchone()[0])
    newest = conn.execute("SELECT crsql_db_version()").fetchone()[0]
    if welcome.applied[0] > newest:
        raise HubError(
            f"the hub applied this site's changes up to {_pos_text(welcome.applied)}, but this database's newest "
            f"version is {newest}: it was restored from a backup or copied; give it a new site id with "
            "SELECT crsql_new_site_id()"
        )
    if welcome.applied < last_sent:
        _write(conn, f"INSERT INTO {out_name}(rewind) VALUES (?)", (_pos_text(welcome.applied),))
    report: Optional[ProgressCallback] = opts["progress"]
    progress = Progress(pull_total=welcome.backlog)
    if report is not None and not welcome.read_only:
        progress.push_total = _pending(conn, welcome.applied[0])
    last_report = [0.0]

    def tell(force: bool) -> None:
        now = time.monotonic()
        if report is not None and (force or now - last_report[0] >= 0.1):
            last_report[0] = now
            report(progress.done, progress.total)

    window, poll = opts["window"], opts["poll"]
    push_cursor = welcome.applied
    inflight: List[Tuple[Pos, int]] = []
    push_exhausted = welcome.read_only
    caught_up = False
    seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
    read_sql = f"SELECT package, cursor, changes FROM {out_name} WHERE cursor > ? LIMIT 1"
    while True:
        while not push_exhausted and len(inflight) < window:
            try:
                row = conn.execute(read_sql, (_pos_text(push_cursor),)).fetchone()
            except sqlite3.OperationalError as e:
                if "resync required" in str(e):
                    raise ResyncRequiredError(str(e)) from e
                raise
            if row is None:
                push_exhausted = True
                break
            ws.send(bytes([T_PACKAGE]) + bytes(row[0]))
            push_cursor = _parse_pos(row[1])
            inflight.append((push_cursor, max(row[2], 0)))
        tell(False)
        if opts["once"] and push_exhausted and not inflight and caught_up:
            tell(True)
            return progress
        if stop.is_set():
            raise _Stop()
        if opts["deadline"] is not None and time.monotonic() > opts["deadline"]:
            raise SyncTimeoutError(f"not caught up after {opts['timeout']} s (timeout)")
        try:
            frame = ws.recv(timeout=poll)
        except TimeoutError:
            v = conn.execute("PRAGMA data_version").fetchone()[0]
            if v != seen_version:
                seen_version = v
                push_exhausted = welcome.read_only
            continue
        t, body = _decode(frame)
        if t == T_PACKAGE:
            caught_up = False
            try:
                _write(conn, f"INSERT INTO {in_name}(package) VALUES (?)", (body,))
                row = conn.execute(f"SELECT last_applied FROM {in_name}").fetchone()
            except sqlite3.OperationalError as e:
                m = str(e)
                if "schema mismatch" in m or "not a CRR here" in m:
                    err: HubError = SchemaMismatchError(m)
                elif ": gap: " in m:
                    err = GapError(m)
                else:
                    err = BadPackageError(m)
                ws.send(_error_frame(err.code or "internal", m))
                raise err from e
            ws.send(bytes([T_ACK]) + _POS.pack(*_parse_pos(row[0])))
            if report is not None:
                progress.pulled += _changes_of(conn, body)
        elif t == T_ACK:
            _write(conn, f"INSERT INTO {out_name}(last_sent) VALUES (?)", (_pos_text(body),))
            while inflight and inflight[0][0] <= body:
                progress.pushed += inflight.pop(0)[1]
            if not inflight:
                caught_up = False
        elif t == T_CAUGHT_UP:
            caught_up = not inflight
        else:
            raise HubConnectionError(f"unexpected frame type {t} from the hub")


def _changes_of(conn: sqlite3.Connection, package: bytes) -> int:
    """How many changes a package holds (its header, ``crsql_package_info``)."""
    try:
        return int(conn.execute("SELECT json_extract(crsql_package_info(?), '$.changes')", (package,)).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0


def _tenant(url: str) -> str:
    path = url.split("://", 1)[-1].partition("/")[2].rstrip("/")
    if not path or "/" in path or not all(c.isascii() and (c.isalnum() or c in "_-") for c in path):
        raise HubError(f"bad hub URL {url!r}: expected ws://HOST:PORT/<tenant> or wss://… (tenant: 1-64 of A-Z a-z 0-9 _ -)")
    return path


def _sync(
    conn: sqlite3.Connection, url: str, opts: Dict[str, Any], stop: threading.Event
) -> Optional[Progress]:
    """The reconnect loop shared by :func:`sync` and :class:`Syncer`; None when stopped."""
    if not url.startswith(("ws://", "wss://")):
        raise HubError(f"bad hub URL {url!r}: the scheme must be ws or wss")
    tenant = _tenant(url)
    timeout = opts["timeout"]
    deadline = opts["deadline"] = None if timeout is None else time.monotonic() + timeout
    backoff, failures = 0.1, 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise SyncTimeoutError(f"not caught up after {timeout} s (timeout)")
        try:
            return _session(conn, url, tenant, opts, stop)
        except _Stop:
            return None
        except SyncTimeoutError:
            raise
        except HubError as e:
            failures += 1
            retries = opts["max_retries"]
            if e.fatal or (retries is not None and failures > retries):
                raise
            on_retry = opts.get("on_retry")
            if on_retry is not None:
                on_retry(e)
            if deadline is not None and time.monotonic() + backoff > deadline:
                raise SyncTimeoutError(f"not caught up before the timeout; last error: {e}", e) from e
            if stop.wait(backoff * (1 + random.random() / 2)):
                return None
            backoff = min(backoff * 2, opts["max_backoff"])


def _options(token, once, progress, timeout, max_retries, window, poll, max_backoff, max_frame, ssl, on_retry=None):
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    return dict(
        token=token,
        once=once,
        progress=progress,
        timeout=timeout,
        max_retries=max_retries,
        window=window,
        poll=poll,
        max_backoff=max_backoff,
        max_frame=max_frame,
        ssl=ssl,
        on_retry=on_retry,
    )


def _open(database: Union[str, "os.PathLike[str]"]) -> sqlite3.Connection:
    from . import connect

    conn = connect(database, timeout=30, check_same_thread=False)
    return conn


def sync(
    database: Union[sqlite3.Connection, str, "os.PathLike[str]"],
    url: str,
    token: Optional[str] = None,
    *,
    once: bool = True,
    progress: Optional[ProgressCallback] = None,
    timeout: Optional[float] = None,
    max_retries: Optional[int] = None,
    window: int = 8,
    poll: float = 0.05,
    max_backoff: float = 10.0,
    max_frame: int = 64 << 20,
    ssl: Any = None,
) -> Progress:
    """Sync ``database`` (a connection with the extension loaded, or a path)
    with the hub at ``url`` (``ws://HOST:PORT/<tenant>`` or ``wss://…``):
    push this site's changes and pull everyone else's until caught up both
    ways (``once``; else it runs until an error), reconnecting with backoff
    (0.1 s doubling to ``max_backoff``) after a lost connection or a
    retryable error code. Returns the :class:`Progress` of the last
    connection.

    ``progress(done, total)`` is called with changes moved and expected
    (both ways) at most every 0.1 s and once at the end. ``timeout``
    (seconds) bounds the whole call (:class:`SyncTimeoutError`);
    ``max_retries`` the failed connections in a row (then the last error is
    raised). ``ssl`` is an :class:`ssl.SSLContext` for ``wss://`` (e.g. one
    trusting a private CA). Raises a :class:`HubError` subclass for the
    protocol's codes and :class:`sqlite3.Error` for the local database.

    Commit your own writes first: only committed changes are pushed.
    """
    opts = _options(token, once, progress, timeout, max_retries, window, poll, max_backoff, max_frame, ssl)
    own = not isinstance(database, sqlite3.Connection)
    conn = _open(database) if own else database
    try:
        result = _sync(conn, url, opts, threading.Event())
        assert result is not None
        return result
    finally:
        if own:
            conn.close()


class Syncer:
    """Keeps a database file in sync with a hub from a background thread
    (its own connection): local commits of any connection are pushed within
    ``poll`` seconds, and other devices' changes are applied as the hub
    forwards them. Reconnects with backoff for ever, except on a fatal code
    (then :attr:`error` holds it and the thread ends).

        syncer = Syncer("a.db", "ws://127.0.0.1:8080/acme", token="…")
        syncer.start()
        ...
        syncer.stop()        # raises the fatal error, if there was one

    The keyword arguments are those of :func:`sync` (``once`` is False);
    ``on_error(exc)`` is called for each retried error.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        url: str,
        token: Optional[str] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        on_error: Optional[Callable[[HubError], Any]] = None,
        window: int = 8,
        poll: float = 0.05,
        max_backoff: float = 10.0,
        max_frame: int = 64 << 20,
        ssl: Any = None,
    ) -> None:
        if isinstance(path, sqlite3.Connection):
            raise TypeError("Syncer takes the database's path (it opens its own connection in its thread)")
        self.path, self.url = path, url
        self._opts = _options(token, False, progress, None, None, window, poll, max_backoff, max_frame, ssl, on_error)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: The error that ended the thread (a fatal :class:`HubError`, or a database error), else None.
        self.error: Optional[BaseException] = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Syncer":
        """Start the background thread (once)."""
        if self._thread is not None:
            raise RuntimeError("Syncer.start: already started")
        _tenant(self.url)
        self._thread = threading.Thread(target=self._main, name=f"crsql-hub-sync {self.url}", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        conn = None
        try:
            conn = _open(self.path)
            _sync(conn, self.url, self._opts, self._stop)
        except BaseException as e:  # handed to stop()
            self.error = e
        finally:
            if conn is not None:
                conn.close()

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """Stop the thread and wait for it (up to ``timeout`` seconds; it
        stops within ``poll`` seconds when connected, at once when waiting
        to reconnect). Raises :attr:`error` if the thread ended with one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "Syncer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
