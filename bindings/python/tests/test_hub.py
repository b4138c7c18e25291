"""crsql_stream.hub against the real hub: dist/crsql-sync (``make hub``) as
a process on 127.0.0.1 with a temporary data directory and an auth file.
Two clients sync through it, a Syncer reconnects after the hub is SIGKILLed
and restarted on the same port, and the protocol's error codes arrive as
their typed exceptions.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import unittest

from crsql_stream import hub
from layout import connect

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BIN = os.environ.get("CRSQL_SYNC_BIN") or os.path.join(ROOT, "dist", "crsql-sync")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);\n"
    "SELECT crsql_as_crr('todos');\n"
)
TOKEN = "s3cret"
WAIT = 30  # seconds at most for something that takes well under one


class Hub:
    """``crsql-sync serve`` as a child process."""

    def __init__(self, d: str, port: int = 0) -> None:
        self.d = d
        self.log = open(os.path.join(d, "hub.log"), "a")
        self.p = subprocess.Popen(
            [BIN, "serve", "--data", os.path.join(d, "data"), "--schema-dir", os.path.join(d, "schema"),
             "--auth", os.path.join(d, "auth.toml"), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.p.stdout.readline()
        if not line.startswith("listening on ws://"):
            self.kill()
            raise AssertionError(f"the hub did not start: {line!r}\n{open(os.path.join(d, 'hub.log')).read()}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.url = f"ws://127.0.0.1:{self.port}/acme"

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        self.p.stdout.close()
        self.log.close()


def make_db(path: str, schema: str = SCHEMA) -> sqlite3.Connection:
    c = connect(path)
    c.executescript(schema)
    c.commit()
    return c


def rows(c: sqlite3.Connection):
    return c.execute("SELECT id, title FROM todos ORDER BY id").fetchall()


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.02)


class HubClientTest(unittest.TestCase):
    def setUp(self) -> None:
        if not os.path.isfile(BIN):
            self.fail(f"{BIN} is missing: build it with `make hub`")
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        os.makedirs(os.path.join(self.d, "schema"))
        with open(os.path.join(self.d, "schema", "acme.sql"), "w") as f:
            f.write(SCHEMA)
        digest = subprocess.run([BIN, "hash-token", TOKEN], check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(self.d, "auth.toml"), "w") as f:
            f.write(f'[tenants.acme]\ntokens = [{{ sha256 = "{digest}" }}]\n')
        self.hub = Hub(self.d)
        self.conns = []

    def tearDown(self) -> None:
        for c in self.conns:
            c.close()
        self.hub.kill()
        self.tmp.cleanup()

    def db(self, name: str, schema: str = SCHEMA) -> sqlite3.Connection:
        c = make_db(os.path.join(self.d, name), schema)
        self.conns.append(c)
        return c

    def test_two_clients_sync_through_the_hub_with_progress(self) -> None:
        a, b = self.db("a.db"), self.db("b.db")
        a.executemany("INSERT INTO todos (id, title) VALUES (?, ?)", [(f"a{i:03}", f"from a {i}") for i in range(50)])
        a.commit()
        b.execute("INSERT INTO todos (id, title) VALUES ('b1', 'from b')")
        b.commit()
        calls = []
        pa = hub.sync(a, self.hub.url, token=TOKEN, progress=lambda done, total: calls.append((done, total)))
        # 50 rows of 2 columns: 100 changes pushed.
        self.assertEqual((pa.pushed, pa.pulled), (100, 0))
        self.assertTrue(calls, "progress was never reported")
        self.assertEqual(calls[-1], (100, 100))
        self.assertTrue(all(0 <= d <= t for d, t in calls), calls)
        self.assertEqual([d for d, _ in calls], sorted(d for d, _ in calls))
        pulled = []
        pb = hub.sync(os.path.join(self.d, "b.db"), self.hub.url, token=TOKEN, progress=lambda d, t: pulled.append((d, t)))
        self.assertEqual((pb.pushed, pb.pulled), (2, 100))
        self.assertEqual(pulled[-1], (102, 102))
        hub.sync(a, self.hub.url, token=TOKEN)
        self.assertEqual(rows(a), rows(b))
        self.assertEqual(len(rows(a)), 51)
        # Nothing new: a second round moves nothing either way (positions
        # resumed from the streams, not sent again).
        again = hub.sync(a, self.hub.url, token=TOKEN, progress=lambda d, t: None)
        self.assertEqual((again.pushed, again.pulled), (0, 0))
        names = {r[0] for r in a.execute("SELECT name FROM crsql_streams")}
        self.assertEqual(len([n for n in names if n.startswith("crsql_hub_")]), 2, names)

    def test_syncer_reconnects_after_the_hub_is_killed_and_restarted(self) -> None:
        a = self.db("a.db")
        self.db("b.db").close()
        errors = []
        syncer = hub.Syncer(os.path.join(self.d, "b.db"), self.hub.url, token=TOKEN, poll=0.02, max_backoff=0.5,
                            on_error=errors.append)
        syncer.start()
        try:
            watch = connect(os.path.join(self.d, "b.db"))
            self.conns.append(watch)
            a.execute("INSERT INTO todos (id, title) VALUES ('t1', 'before')")
            a.commit()
            hub.sync(a, self.hub.url, token=TOKEN)
            wait_until(lambda: rows(watch) == [("t1", "before")], "b got t1 through the Syncer")
            # A commit of another connection while connected is pushed.
            watch.execute("INSERT INTO todos (id, title) VALUES ('t0', 'from b while connected')")
            watch.commit()

            def a_has(n: int) -> bool:
                hub.sync(a, self.hub.url, token=TOKEN, timeout=WAIT)
                return len(rows(a)) == n

            wait_until(lambda: a_has(2), "a got t0 from the Syncer")
            port = self.hub.port
            self.hub.kill()
            a.execute("INSERT INTO todos (id, title) VALUES ('t2', 'while down')")
            a.commit()
            # b writes while the hub is down: pushed after the reconnection.
            watch.execute("INSERT INTO todos (id, title) VALUES ('t3', 'from b while down')")
            watch.commit()
            wait_until(lambda: errors, "the Syncer noticed the lost connection")
            self.hub = Hub(self.d, port)
            hub.sync(a, self.hub.url, token=TOKEN, timeout=WAIT)
            wait_until(lambda: len(rows(watch)) == 4, "b got t2 after the restart")
            wait_until(lambda: a_has(4), "a got t3 from b")
            self.assertTrue(syncer.running)
        finally:
            syncer.stop()
        self.assertIsNone(syncer.error)
        self.assertEqual(rows(a), rows(watch))
        self.assertTrue(all(isinstance(e, hub.HubConnectionError) for e in errors), errors)

    def test_a_wrong_token_is_unauthorized_at_once(self) -> None:
        a = self.db("a.db")
        with self.assertRaises(hub.UnauthorizedError) as cm:
            hub.sync(a, self.hub.url, token="wrong", timeout=WAIT)
        self.assertEqual(cm.exception.code, "unauthorized")
        self.assertTrue(cm.exception.fatal)
        self.assertIsInstance(cm.exception, hub.HubError)
        # A Syncer stops for good on it and stop() raises it.
        s = hub.Syncer(os.path.join(self.d, "a.db"), self.hub.url, token="wrong").start()
        wait_until(lambda: not s.running, "the Syncer gave up")
        with self.assertRaises(hub.UnauthorizedError):
            s.stop()

    def test_another_schema_is_a_schema_mismatch(self) -> None:
        other = self.db("other.db", "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT);"
                                    "SELECT crsql_as_crr('todos');")
        with self.assertRaises(hub.SchemaMismatchError) as cm:
            hub.sync(other, self.hub.url, token=TOKEN, timeout=WAIT)
        self.assertEqual(cm.exception.code, "schema_mismatch")

    def test_retryable_errors_surface_when_retries_run_out(self) -> None:
        a = self.db("a.db")
        port = self.hub.port
        self.hub.kill()
        with self.assertRaises(hub.HubConnectionError) as cm:
            hub.sync(a, f"ws://127.0.0.1:{port}/acme", token=TOKEN, max_retries=2, max_backoff=0.05)
        self.assertIsNone(cm.exception.code)
        with self.assertRaises(hub.SyncTimeoutError):
            hub.sync(a, f"ws://127.0.0.1:{port}/acme", token=TOKEN, timeout=0.3, max_backoff=0.05)
        self.hub = Hub(self.d, port)

    def test_error_frames_decode_to_their_classes(self) -> None:
        for code, cls in [("gap", hub.GapError), ("foreign_sender", hub.ForeignSenderError),
                          ("resync_required", hub.ResyncRequiredError), ("unauthorized", hub.UnauthorizedError)]:
            frame = hub._error_frame(code, "why")
            with self.assertRaises(cls) as cm:
                hub._decode(frame)
            self.assertEqual((cm.exception.code, cm.exception.message), (code, "why"))
        with self.assertRaises(hub.HubError) as cm:
            hub._decode(hub._error_frame("brand_new", "later"))
        self.assertEqual(cm.exception.code, "brand_new")
        self.assertFalse(cm.exception.fatal)
        self.assertTrue(hub.GapError("x").fatal is False and hub.ForeignSenderError("x").fatal)

    def test_the_documented_hello_bytes(self) -> None:
        # docs/protocol.md, "Examples".
        h = hub._hello(bytes.fromhex("7a1cd6b1a6e44e3f9c2b5d8e0f112233"), bytes.fromhex("5c0e2a3b4d6f708192a3b4c5d6e7f809"),
                       "acme", b"s3cret", [(bytes.fromhex("f434e185b3a94d04b0ede0edcdb8e448"), (12, 3))])
        self.assertEqual(h.hex(), "014352535900017a1cd6b1a6e44e3f9c2b5d8e0f1122335c0e2a3b4d6f708192a3b4c5d6e7f80904"
                                  "61636d65000673336372657400"
                                  "01f434e185b3a94d04b0ede0edcdb8e448000000000000000c0000000000000003")


if __name__ == "__main__":
    unittest.main()
