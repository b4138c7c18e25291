#!/usr/bin/env python3
"""Two processes sync their databases both ways over TCP with crsql_stream.

    python tcp_sync.py serve   --db a.db --port 9077 --insert 20
    python tcp_sync.py connect --db b.db --port 9077 --insert 20

Each process owns one database file with an ``items`` CRR, an outbound
stream towards the peer (``to_<peer site id>``, leaving out the peer's own
changes) and an inbound stream from it (``from_<peer site id>``). They talk
on 127.0.0.1 only, and stop by themselves once a round moves nothing (or
after ``--timeout`` seconds).

Frames: a 4-byte big-endian length, then the payload; the payload's first
byte says what it is:

    H {"site": hex}          hello (both sides, first)
    A [db_version,seq]       "I have applied your packages up to here"
    P <package bytes>        one package of the sender's outbound stream
    E {"packages": n}        end of the sender's turn
    B                        bye: the client saw a quiet round
    X <message>              error; the sender stops

After the hellos, each side sends A with its inbound stream's
``last_applied``; the peer acknowledges that on its outbound stream, so a
resumed session starts exactly where the receiver stopped. Then rounds:
the client sends its pending packages and E, the server applies each one
as it arrives (each commit stores data and position together), answers A,
and the roles swap. A round in which neither side had a package ends the
session with B.

If the connection drops, even in the middle of a frame, the server goes
back to accepting and the client reconnects; either process may also be
restarted. Nothing is lost or applied twice: positions live in the
databases, the receiver reports them first thing, and a package that
arrives twice would be a no-op anyway.

``--cut-after-packages N`` is for tests: after N whole package frames the
process sends the first half of the next one, closes the socket and exits
with status 3, as if it had been killed mid-send.

Output: one JSON object per line on stdout (events), for humans and tests.
Needs the ``crsql_stream`` package (the wheel built by ``make wheel``) in a
Python whose sqlite3 can load extensions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import struct
import sys
import time
import zlib
from typing import NoReturn, Optional, Tuple

import crsql_stream

HOST = "127.0.0.1"
MAX_FRAME = 64 * 1024 * 1024
EXIT_CUT = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  id    TEXT PRIMARY KEY NOT NULL,
  label TEXT,
  n     INTEGER,
  note  TEXT
);
"""


class ConnectionLost(Exception):
    """The peer went away (cleanly or mid-frame)."""


class PeerError(Exception):
    """The peer reported an error (X frame) or broke the protocol."""


def log(event: str, **fields) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}), flush=True)


# ---------------------------------------------------------------- framing


class Framed:
    """A socket carrying length-prefixed frames, with a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        self.sock.settimeout(min(left, 15.0))

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self._arm()
        try:
            self.sock.sendall(frame(kind, body))
        except OSError as e:
            raise ConnectionLost(f"send failed: {e}") from e

    def _recv_exact(self, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._arm()
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except OSError as e:  # reset, or the peer stalled (socket timeout)
                raise ConnectionLost(f"receive failed: {e}") from e
            if not chunk:
                raise ConnectionLost(f"connection closed mid-{what} (got {len(buf)} of {n} bytes)"
                                     if buf or what == "payload" else "connection closed")
            buf += chunk
        return bytes(buf)

    def recv(self) -> Tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._recv_exact(4, "header"))
        if not 1 <= length <= MAX_FRAME:
            raise PeerError(f"bad frame length {length}")
        payload = self._recv_exact(length, "payload")
        kind, body = payload[:1], payload[1:]
        if kind == b"X":
            raise PeerError("peer failed: " + body.decode("utf-8", "replace"))
        return kind, body

    def expect(self, kind: bytes) -> bytes:
        got, body = self.recv()
        if got != kind:
            raise PeerError(f"expected a {kind!r} frame, got {got!r}")
        return body


def frame(kind: bytes, body: bytes = b"") -> bytes:
    payload = kind + body
    return struct.pack(">I", len(payload)) + payload


# ---------------------------------------------------------------- database


def open_db(path: str) -> sqlite3.Connection:
    conn = crsql_stream.connect(path, isolation_level=None, timeout=10)
    conn.execute(SCHEMA)
    conn.execute("SELECT crsql_as_crr('items')")
    return conn


def insert_rows(conn: sqlite3.Connection, label: str, count: int) -> None:
    """``count`` new rows labelled ``label``, five per transaction, plus an
    edit of a row both sides write (a conflict the merge resolves)."""
    start = conn.execute("SELECT count(*) FROM items WHERE label = ?", (label,)).fetchone()[0]
    for first in range(start, start + count, 5):
        conn.execute("BEGIN")
        for n in range(first, min(first + 5, start + count)):
            conn.execute("INSERT INTO items VALUES (?, ?, ?, ?)", (f"{label}-{n:05d}", label, n, "x" * (n % 40)))
        # Values differ per side (with equal values and versions, each side
        # would keep its own site id for the cell, as in cr-sqlite).
        conn.execute(
            "INSERT INTO items VALUES ('shared', ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET label = excluded.label, n = excluded.n, note = excluded.note",
            (label, zlib.crc32(label.encode()) + first, f"edited by {label}"),
        )
        conn.execute("COMMIT")
    log("inserted", label=label, rows=count)


class Peer:
    """The two streams towards one peer, created on first contact."""

    def __init__(self, conn: sqlite3.Connection, peer_site: str, max_changes: int) -> None:
        self.conn = conn
        self.out = crsql_stream.Outbound(conn, f"to_{peer_site}", exclude_sites=peer_site, max_changes=max_changes)
        self.inb = crsql_stream.Inbound(conn, f"from_{peer_site}", from_=peer_site)

    def package_range(self, data: bytes) -> Tuple[str, str, int]:
        info = json.loads(self.conn.execute("SELECT crsql_package_info(?)", (data,)).fetchone()[0])
        pos = lambda p: json.dumps(p, separators=(",", ":"))  # noqa: E731 - '[12,3]', as the streams write it
        return pos(info["since"]), pos(info["cursor"]), info["changes"]


# ---------------------------------------------------------------- protocol


class Session:
    def __init__(self, io: Framed, conn: sqlite3.Connection, args: argparse.Namespace, stats: dict) -> None:
        self.io = io
        self.conn = conn
        self.args = args
        self.stats = stats
        self.peer: Optional[Peer] = None

    def handshake(self) -> None:
        me = crsql_stream.site_id(self.conn)
        self.io.send(b"H", json.dumps({"site": me}).encode())
        hello = json.loads(self.io.expect(b"H"))
        site = hello["site"]
        if not isinstance(site, str) or len(site) != 32 or site == me:
            raise PeerError(f"bad peer site id {site!r}")
        self.peer = Peer(self.conn, site, self.args.max_changes)
        # Where to resume: what we have applied of the peer's stream ...
        self.io.send(b"A", self.peer.inb.last_applied.encode())
        # ... and what the peer has applied of ours.
        resume = self.io.expect(b"A").decode()
        self.peer.out.ack(resume)
        log("connected", peer=site, peer_has=resume, we_have=self.peer.inb.last_applied)

    def send_turn(self) -> int:
        assert self.peer is not None
        sent = 0
        for pkg in self.peer.out.packages(limit=self.args.per_turn):
            # Binary packages (bytes); a JSON-encoded stream would give str.
            data = pkg.data if isinstance(pkg.data, bytes) else pkg.data.encode()
            if self.args.cut_after_packages is not None and self.stats["sent"] == self.args.cut_after_packages:
                self.cut(data)
            self.io.send(b"P", data)
            sent += 1
            self.stats["sent"] += 1
            log("sent", since=pkg.since, cursor=pkg.cursor, changes=pkg.changes)
        self.io.send(b"E", json.dumps({"packages": sent}).encode())
        pos = self.io.expect(b"A").decode()
        self.peer.out.ack(pos)
        log("acked", position=pos)
        return sent

    def cut(self, data: bytes) -> NoReturn:
        whole = frame(b"P", data)
        self.io.sock.sendall(whole[: len(whole) // 2])
        self.io.sock.close()
        log("cut", sent_bytes=len(whole) // 2, frame_bytes=len(whole))
        crsql_stream.close(self.conn)
        sys.exit(EXIT_CUT)

    def receive_turn(self, first: Optional[Tuple[bytes, bytes]] = None) -> int:
        assert self.peer is not None
        received = 0
        while True:
            kind, body = first if first is not None else self.io.recv()
            first = None
            if kind == b"E":
                break
            if kind != b"P":
                raise PeerError(f"expected a package or the end of the turn, got {kind!r}")
            try:
                since, cursor, changes = self.peer.package_range(body)
                before = self.peer.inb.last_applied
                after = self.peer.inb.apply(body)
            except sqlite3.Error as e:  # corrupt, foreign, a gap: tell the peer, stop
                try:
                    self.io.send(b"X", str(e).encode())
                except ConnectionLost:
                    pass
                raise
            received += 1
            if after == before:
                self.stats["duplicates"] += 1
                log("duplicate", since=since, cursor=cursor)
            else:
                self.stats["applied"] += 1
                log("applied", since=since, cursor=cursor, changes=changes)
        self.io.send(b"A", self.peer.inb.last_applied.encode())
        return received

    def run_client(self) -> None:
        for round_no in range(1, self.args.max_rounds + 1):
            moved = self.send_turn()
            moved += self.receive_turn()
            if moved == 0:
                self.io.send(b"B")
                log("quiet", rounds=round_no)
                return
        raise PeerError(f"not quiet after {self.args.max_rounds} rounds")

    def run_server(self) -> None:
        for _ in range(self.args.max_rounds + 1):
            kind, body = self.io.recv()
            if kind == b"B":
                log("quiet")
                return
            self.receive_turn((kind, body))
            self.send_turn()
        raise PeerError(f"not quiet after {self.args.max_rounds} rounds")


def serve(args: argparse.Namespace, conn: sqlite3.Connection, stats: dict, deadline: float) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, args.port))
        listener.listen(1)
        port = listener.getsockname()[1]
        if args.port_file:
            tmp = args.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(port))
            os.replace(tmp, args.port_file)
        log("listening", port=port)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log("timeout")
                return 1
            listener.settimeout(min(left, 1.0))
            try:
                sock, addr = listener.accept()
            except socket.timeout:
                continue
            with sock:
                log("accepted", address=f"{addr[0]}:{addr[1]}")
                session = Session(Framed(sock, deadline), conn, args, stats)
                try:
                    session.handshake()
                    session.run_server()
                    return 0
                except ConnectionLost as e:
                    log("lost", reason=str(e))
                    # Back to accept: the client reconnects or is restarted.


def connect(args: argparse.Namespace, conn: sqlite3.Connection, stats: dict, deadline: float) -> int:
    while True:
        sock = None
        while sock is None:
            if time.monotonic() >= deadline:
                log("timeout")
                return 1
            try:
                sock = socket.create_connection((HOST, args.port), timeout=1.0)
            except OSError:
                time.sleep(0.05)
        with sock:
            log("connected_tcp", port=args.port)
            session = Session(Framed(sock, deadline), conn, args, stats)
            try:
                session.handshake()
                session.run_client()
                return 0
            except ConnectionLost as e:
                log("lost", reason=str(e))
                # Reconnect: the server may be restarting.


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["serve", "connect"])
    p.add_argument("--db", required=True, help="database file")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (serve: 0 picks a free one)")
    p.add_argument("--port-file", help="serve: write the port number to this file once listening")
    p.add_argument("--insert", type=int, default=0, metavar="N", help="insert N rows before syncing")
    p.add_argument("--label", help="label of inserted rows (default: the mode)")
    p.add_argument("--max-changes", type=int, default=1000, help="per package, when the stream is created")
    p.add_argument("--per-turn", type=int, default=1000, help="packages sent per turn at most")
    p.add_argument("--max-rounds", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    p.add_argument("--cut-after-packages", type=int, metavar="N", help="test only: cut the connection mid-package")
    args = p.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    conn = open_db(args.db)
    stats = {"sent": 0, "applied": 0, "duplicates": 0}
    try:
        if args.insert:
            insert_rows(conn, args.label or args.mode, args.insert)
        try:
            rc = (serve if args.mode == "serve" else connect)(args, conn, stats, deadline)
        except (PeerError, TimeoutError, sqlite3.Error) as e:
            log("failed", error=f"{type(e).__name__}: {e}")
            rc = 1
        rows = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        log("done", status=rc, rows=rows, **stats)
        return rc
    finally:
        crsql_stream.close(conn)


if __name__ == "__main__":
    sys.exit(main())
