"""Tests of the crsql_stream Python package, as installed from the wheel.

`make py-binding-test` builds the wheel, installs it into a fresh venv of
/usr/bin/python3 and runs these with $CRSQL_STREAM_EXT unset, so only the
library inside the wheel can be loaded.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import unittest

import crsql_stream
from layout import connect

SCHEMA = "CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0)"


def new_db(path: str = ":memory:") -> crsql_stream.Connection:
    conn = connect(path, isolation_level=None)
    conn.execute(SCHEMA)
    conn.execute("SELECT crsql_as_crr('todos')")
    return conn


def rows(conn: sqlite3.Connection) -> list:
    return conn.execute("SELECT id, title, done FROM todos ORDER BY id").fetchall()


def crdt_state(conn: sqlite3.Connection) -> list:
    """The CRR metadata that must agree after a sync (db_version and seq are local)."""
    return conn.execute(
        'SELECT "table", pk, cid, val, col_version, site_id, cl FROM crsql_changes '
        'ORDER BY "table", pk, cid'
    ).fetchall()


class NoExtensionLoading:
    """A connection like those of a Python built without extension loading:
    no enable_load_extension / load_extension attributes."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:")

    def execute(self, *args):
        return self._conn.execute(*args)


class RefusesExtensionLoading(NoExtensionLoading):
    def enable_load_extension(self, on: bool) -> None:
        raise NotImplementedError("extension loading is not supported")

    def load_extension(self, path: str) -> None:
        raise AssertionError("must not be reached")


class Loading(unittest.TestCase):
    def test_path_is_the_library_inside_the_package(self):
        p = crsql_stream.path()
        self.assertTrue(os.path.isfile(p), p)
        self.assertEqual(os.path.basename(p), "libcrsql_stream.so")
        self.assertEqual(os.path.dirname(p), os.path.dirname(os.path.abspath(crsql_stream.__file__)))

    def test_installed_from_a_platform_wheel(self):
        from importlib import metadata

        dist = metadata.distribution("crsql-stream")
        wheel = dist.read_text("WHEEL") or ""
        self.assertIn("Root-Is-Purelib: false", wheel)
        self.assertRegex(wheel, r"Tag: py3-none-manylinux_\d+_\d+_\w+")
        self.assertEqual(dist.version, crsql_stream.__version__)
        files = [str(f) for f in dist.files or []]
        self.assertIn("crsql_stream/libcrsql_stream.so", files)
        self.assertIn("crsql_stream/py.typed", files)

    def test_load_into_a_stdlib_connection(self):
        conn = sqlite3.connect(":memory:")
        crsql_stream.load(conn)
        self.assertEqual(conn.execute("SELECT crsql_version()").fetchone()[0], crsql_stream.__version__)
        self.assertEqual(len(crsql_stream.site_id(conn)), 32)
        crsql_stream.load(conn)  # already loaded: nothing happens
        # Extension loading is switched off again afterwards.
        with self.assertRaises(sqlite3.OperationalError):
            conn.load_extension(crsql_stream.path())
        crsql_stream.close(conn)

    def test_connect_loads_and_returns_a_sqlite3_connection(self):
        conn = crsql_stream.connect(":memory:")
        self.assertIsInstance(conn, sqlite3.Connection)
        self.assertIsInstance(conn, crsql_stream.Connection)
        conn.execute(SCHEMA)
        self.assertEqual(conn.execute("SELECT crsql_as_crr('todos')").fetchone()[0], "OK")
        conn.close()

    def test_a_python_without_extension_loading_gets_a_clear_error(self):
        for fake in (NoExtensionLoading(), RefusesExtensionLoading()):
            with self.subTest(type(fake).__name__):
                with self.assertRaises(crsql_stream.ExtensionLoadingUnavailable) as cm:
                    crsql_stream.load(fake)  # type: ignore[arg-type]
                e = cm.exception
                self.assertIsInstance(e, sqlite3.NotSupportedError)
                self.assertIsInstance(e, sqlite3.Error)
                msg = str(e)
                self.assertIn("cannot load SQLite extensions", msg)
                self.assertIn(sys.executable, msg)  # which Python
                self.assertIn("/usr/bin/python3", msg)  # what to use instead
                self.assertIn("--enable-loadable-sqlite-extensions", msg)


class Close(unittest.TestCase):
    def traced(self, conn: sqlite3.Connection) -> list:
        seen: list = []
        conn.set_trace_callback(seen.append)
        return seen

    def test_close_calls_crsql_finalize_then_closes(self):
        conn = sqlite3.connect(":memory:")
        crsql_stream.load(conn)
        seen = self.traced(conn)
        crsql_stream.close(conn)
        self.assertIn("SELECT crsql_finalize()", seen)
        with self.assertRaises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
        crsql_stream.close(conn)  # twice is fine

    def test_connection_close_calls_crsql_finalize(self):
        conn = new_db()
        conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'x')")
        list(crsql_stream.Outbound(conn, "to_x").packages())  # fill the statement cache
        seen = self.traced(conn)
        conn.close()
        self.assertEqual(seen, ["SELECT crsql_finalize()"])
        with self.assertRaises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
        conn.close()

    def test_a_file_database_reopens_after_close(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.db")
            conn = new_db(path)
            conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'x')")
            conn.close()
            conn = new_db(path)
            self.assertEqual(rows(conn), [("t1", "x", 0)])
            self.assertEqual(conn.execute("SELECT crsql_db_version()").fetchone()[0], 1)
            conn.close()


class Streams(unittest.TestCase):
    def setUp(self):
        self.a = new_db()
        self.b = new_db()
        self.a_site = crsql_stream.site_id(self.a)
        for i in range(5):
            self.a.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"t{i}", f"todo {i}"))

    def tearDown(self):
        self.a.close()
        self.b.close()

    def test_outbound_and_inbound_by_hand(self):
        out = crsql_stream.Outbound(self.a, "to_b", max_changes=2)
        inb = crsql_stream.Inbound(self.b, "from_a", from_=self.a_site)
        self.assertEqual(out.last_sent, "[0,0]")
        self.assertIsNone(out.last_retrieved)
        self.assertEqual(inb.last_applied, "[0,0]")
        self.assertEqual(inb.sender, self.a_site)

        first = list(out.packages(limit=1))
        self.assertEqual(len(first), 1)
        pkg = first[0]
        self.assertIsInstance(pkg, crsql_stream.Package)
        self.assertIsInstance(pkg.data, bytes)
        self.assertEqual(pkg.since, "[0,0]")
        self.assertEqual(crsql_stream.parse_position(pkg.cursor), (1, 1))
        self.assertEqual((pkg.changes, pkg.size), (2, len(pkg.data)))
        self.assertEqual(out.last_retrieved, pkg.cursor)
        # Not acknowledged: produced again.
        self.assertEqual(next(out.packages()).data, pkg.data)

        self.assertEqual(inb.apply(pkg), pkg.cursor)
        self.assertEqual(inb.apply(pkg.data), pkg.cursor)  # a duplicate is a no-op
        out.ack(inb.last_applied)
        self.assertEqual(out.last_sent, pkg.cursor)
        out.ack("[0,0]")  # acknowledgements only move forward
        self.assertEqual(out.last_sent, pkg.cursor)

        rest = list(out.packages())
        self.assertEqual(rest[0].since, pkg.cursor)
        self.assertEqual([p.since for p in rest[1:]], [p.cursor for p in rest[:-1]])
        for p in rest:
            inb.apply(p)
        out.ack(inb.last_applied)
        self.assertEqual(list(out.packages()), [])
        self.assertEqual(rows(self.b), rows(self.a))
        self.assertFalse(self.a.in_transaction or self.b.in_transaction)

        # An existing stream is reopened, keeping its state and arguments.
        again = crsql_stream.Outbound(self.a, "to_b", max_changes=1000)
        self.assertEqual(again.last_sent, out.last_sent)

    def test_packages_after_a_position(self):
        out = crsql_stream.Outbound(self.a, "to_b", max_changes=1)
        cursors = [p.cursor for p in out.packages()]
        self.assertEqual([p.cursor for p in out.packages(after=cursors[1], limit=2)], cursors[2:4])

    def test_json_encoding_and_argument_values(self):
        out = crsql_stream.Outbound(
            self.a,
            "to b's json",  # quoted as an identifier
            encoding="json",
            tables=["todos"],
            exclude_sites=[bytes.fromhex("0b" * 16)],
            local_only=False,
            max_changes=100,
        )
        inb = crsql_stream.Inbound(self.b, "from a", tables="todos")
        pkgs = list(out.packages())
        self.assertTrue(pkgs and all(isinstance(p.data, str) for p in pkgs))
        for p in pkgs:
            inb.apply(p.data)
        self.assertEqual(rows(self.b), rows(self.a))
        sql = self.a.execute("SELECT sql FROM sqlite_master WHERE name = ?", ("to b's json",)).fetchone()[0]
        self.assertIn("exclude_sites = '" + "0b" * 16 + "'", sql)

    def test_a_bad_argument_raises_the_extensions_error(self):
        with self.assertRaises(sqlite3.OperationalError) as cm:
            crsql_stream.Outbound(self.a, "bad", max_changes=0)
        self.assertIn('crsql_OutboundStream bad: max_changes must be an integer from 1 to 10000000, got "0"', str(cm.exception))
        with self.assertRaises(ValueError):
            crsql_stream.Outbound(self.a, "bad", **{"max changes": 1})

    def test_a_name_taken_by_another_table_is_refused_and_never_dropped(self):
        self.a.execute("CREATE TABLE notes (x)")
        self.a.execute("INSERT INTO notes VALUES (1)")
        crsql_stream.Outbound(self.a, "to_b")
        for make, name, what in (
            (crsql_stream.Outbound, "todos", "not a stream"),  # the user's CRR
            (crsql_stream.Inbound, "notes", "not a stream"),  # a plain table
            (crsql_stream.Inbound, "To_B", "an outbound stream"),  # the other kind, any case
            (crsql_stream.Outbound, "crsql_changes", "reserved"),  # refused by the extension
        ):
            with self.subTest(name=name):
                with self.assertRaisesRegex((ValueError, sqlite3.OperationalError), what):
                    make(self.a, name)
        self.assertEqual(len(rows(self.a)), 5)
        self.assertEqual(self.a.execute("SELECT x FROM notes").fetchall(), [(1,)])
        self.assertGreater(len(crdt_state(self.a)), 0)  # crsql_changes is still the extension's

        # drop() checks again: a stream replaced by a plain table is not dropped.
        inb = crsql_stream.Inbound(self.a, "swap")
        self.a.execute("DROP TABLE swap")
        self.a.execute("CREATE TABLE swap (kept)")
        with self.assertRaisesRegex(ValueError, "not a stream"):
            inb.drop()
        self.assertEqual(self.a.execute("SELECT count(*) FROM swap").fetchone(), (0,))

    def test_a_stream_opened_in_another_case_is_the_same_stream(self):
        out = crsql_stream.Outbound(self.a, "To_B", max_changes=1)
        same = crsql_stream.Outbound(self.a, "to_b")
        pkg = next(same.packages())
        same.ack(pkg)
        self.assertEqual(out.last_sent, pkg.cursor)
        self.assertEqual(same.last_sent, pkg.cursor)

    def test_bad_helper_arguments_raise_before_sqlite_sees_them(self):
        out = crsql_stream.Outbound(self.a, "to_b")
        for bad, exc in ((-1, ValueError), (True, TypeError), (1.5, TypeError), ("2", TypeError)):
            with self.subTest(limit=bad), self.assertRaises(exc):
                out.packages(limit=bad)  # raises at the call, not at next()
        with self.assertRaises(TypeError):
            out.ack(None)
        with self.assertRaises(TypeError):
            out.ack(b"[1,0]")
        with self.assertRaises(TypeError):
            out.packages(after=7)
        out.ack((0, 0))  # a tuple, as parse_position returns
        self.assertEqual(out.last_sent, "[0,0]")
        with self.assertRaisesRegex(sqlite3.OperationalError, "position"):
            out.ack("[1,")
        for bad in ("[99999999999999999999999,0]", "[1.0,2]", "[-1,0]", "[1,2,3]", "nope", ""):
            with self.subTest(position=bad), self.assertRaisesRegex(ValueError, "not a position"):
                crsql_stream.parse_position(bad)
        with self.assertRaises(TypeError):
            crsql_stream.parse_position(b"[1,0]")
        self.assertEqual(crsql_stream.parse_position("[9223372036854775807,0]"), (2**63 - 1, 0))
        for kwargs in ({"batch": 0}, {"max_rounds": 0}, {"batch": -1}):
            with self.subTest(**kwargs), self.assertRaises(ValueError):
                crsql_stream.sync(self.a, self.b, **kwargs)

    def test_a_corrupted_package_raises_sqlite3_error_with_the_extensions_message(self):
        out = crsql_stream.Outbound(self.a, "to_b")
        inb = crsql_stream.Inbound(self.b, "from_a")
        pkg = next(out.packages())
        bad = bytearray(pkg.data)
        bad[len(bad) // 2] ^= 0x40
        with self.assertRaises(sqlite3.Error) as cm:
            inb.apply(bytes(bad))
        self.assertIsInstance(cm.exception, sqlite3.OperationalError)
        msg = str(cm.exception)
        self.assertTrue(msg.startswith("crsql_InboundStream from_a: "), msg)
        self.assertIn("checksum mismatch", msg)
        with self.assertRaises(sqlite3.Error) as cm:
            inb.apply(b"\x00")
        self.assertIn("crsql_InboundStream from_a: package truncated", str(cm.exception))
        # Nothing changed, and no transaction was left open.
        self.assertEqual(inb.last_applied, "[0,0]")
        self.assertIsNone(inb.sender)
        self.assertEqual(rows(self.b), [])
        self.assertFalse(self.b.in_transaction)
        # The intact package still applies.
        inb.apply(pkg)
        self.assertEqual(rows(self.b), rows(self.a))

    def test_a_gap_raises_with_both_positions(self):
        out = crsql_stream.Outbound(self.a, "to_b", max_changes=1)
        inb = crsql_stream.Inbound(self.b, "from_a")
        pkgs = list(out.packages())
        with self.assertRaises(sqlite3.OperationalError) as cm:
            inb.apply(pkgs[1])
        self.assertIn(f"gap: expected a package starting at [0,0], got {pkgs[1].since}", str(cm.exception))

    def test_apply_joins_the_callers_transaction(self):
        out = crsql_stream.Outbound(self.a, "to_b")
        inb = crsql_stream.Inbound(self.b, "from_a")
        pkg = next(out.packages())
        self.b.execute("BEGIN")
        inb.apply(pkg)
        self.assertTrue(self.b.in_transaction)  # not committed by the helper
        self.b.execute("ROLLBACK")
        self.assertEqual(inb.last_applied, "[0,0]")
        self.assertEqual(rows(self.b), [])

    def test_legacy_implicit_transactions_are_committed(self):
        # sqlite3's default isolation_level opens a transaction before an
        # INSERT; the helpers commit it when they were called outside one.
        b = connect(":memory:")
        b.execute(SCHEMA)
        b.execute("SELECT crsql_as_crr('todos')")
        out = crsql_stream.Outbound(self.a, "to_b")
        inb = crsql_stream.Inbound(b, "from_a")
        inb.apply(next(out.packages()))
        self.assertFalse(b.in_transaction)
        with self.assertRaises(sqlite3.OperationalError):
            inb.apply(b"garbage")
        self.assertFalse(b.in_transaction)
        self.assertEqual(rows(b), rows(self.a))
        b.close()


class Sync(unittest.TestCase):
    def test_two_peers_sync_both_ways_until_quiet(self):
        with tempfile.TemporaryDirectory() as d:
            a = new_db(os.path.join(d, "a.db"))
            b = new_db(os.path.join(d, "b.db"))
            a.execute("INSERT INTO todos VALUES ('t1', 'buy milk', 0), ('t2', 'write the report', 0)")
            a.execute("UPDATE todos SET done = 1 WHERE id = 't1'")
            b.execute("INSERT INTO todos VALUES ('t3', 'call mum', 0)")
            b.execute("INSERT INTO todos VALUES ('t2', 'write the REPORT', 1)")  # concurrent insert
            for i in range(30):  # a backlog bigger than one package
                a.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"a{i:02d}", "from a"))
                b.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"b{i:02d}", "from b"))

            moved = crsql_stream.sync(a, b, max_changes=4)
            self.assertGreater(moved, 15)
            self.assertEqual(len(rows(a)), 63)
            self.assertEqual(rows(a), rows(b))
            self.assertEqual(crdt_state(a), crdt_state(b))
            self.assertEqual(crsql_stream.sync(a, b), 0)  # quiet

            # Every stream has caught up.
            for conn in (a, b):
                lag = conn.execute(
                    "SELECT name, lag_versions FROM crsql_streams WHERE direction = 'outbound'"
                ).fetchall()
                self.assertEqual([x[1] for x in lag], [0], lag)

            # Later edits, after reopening both files: sync resumes from the stored positions.
            a.close()
            b.close()
            a = new_db(os.path.join(d, "a.db"))
            b = new_db(os.path.join(d, "b.db"))
            a.execute("DELETE FROM todos WHERE id = 't3'")
            b.execute("UPDATE todos SET title = 'call dad' WHERE id = 't3'")
            b.execute("INSERT INTO todos (id, title) VALUES ('t4', 'new')")
            moved = crsql_stream.sync(b, a)
            self.assertGreater(moved, 0)
            self.assertLess(moved, 10)  # only the new changes travelled
            self.assertEqual(rows(a), rows(b))
            self.assertEqual(crdt_state(a), crdt_state(b))
            self.assertNotIn("t3", [r[0] for r in rows(a)])  # the delete wins (causal length)
            self.assertEqual(crsql_stream.sync(a, b), 0)
            a.close()
            b.close()

    def test_sync_reports_progress_from_lag_changes(self):
        with tempfile.TemporaryDirectory() as d:
            a = new_db(os.path.join(d, "a.db"))
            b = new_db(os.path.join(d, "b.db"))
            for i in range(40):
                a.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"a{i:02d}", "from a"))
            for i in range(10):
                b.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"b{i:02d}", "from b"))
            expected = sum(c.execute("SELECT count(*) FROM crsql_changes").fetchone()[0] for c in (a, b))
            calls = []
            crsql_stream.sync(a, b, max_changes=5, batch=2, progress=lambda done, total: calls.append((done, total)))
            self.assertEqual(calls[0], (0, expected))
            self.assertEqual(calls[-1], (expected, expected))
            self.assertGreater(len(calls), 5)
            for (d0, t0), (d1, t1) in zip(calls, calls[1:]):
                self.assertLessEqual(d0, d1)
                self.assertLessEqual(t0, t1)
                self.assertLessEqual(d1, t1)
            # The figures are the streams' own: caught up now.
            for conn in (a, b):
                lags = conn.execute("SELECT lag_changes FROM crsql_streams WHERE direction = 'outbound'").fetchall()
                self.assertEqual(lags, [(0,)])
            with self.assertRaises(TypeError):
                crsql_stream.sync(a, b, progress=42)
            a.close()
            b.close()

    def test_sync_refuses_the_same_database_twice(self):
        with tempfile.TemporaryDirectory() as d:
            a = new_db(os.path.join(d, "a.db"))
            a2 = new_db(os.path.join(d, "a.db"))
            with self.assertRaises(ValueError):
                crsql_stream.sync(a, a2)
            a.close()
            a2.close()

    def test_sync_sets_exclude_sites_itself(self):
        a, b = new_db(), new_db()
        with self.assertRaisesRegex(TypeError, "exclude_sites is set by sync"):
            crsql_stream.sync(a, b, exclude_sites=crsql_stream.site_id(b))
        # Nothing was created.
        self.assertEqual(a.execute("SELECT count(*) FROM crsql_streams").fetchone()[0], 0)
        a.close()
        b.close()

    def test_sync_stops_after_max_rounds_and_keeps_what_moved(self):
        a, b = new_db(), new_db()
        for i in range(6):  # six transactions of two changes (title, done)
            a.execute("INSERT INTO todos (id, title) VALUES (?, 'x')", (f"t{i}",))
        with self.assertRaisesRegex(RuntimeError, "still moving packages after 2 rounds"):
            # max_changes=2: one transaction per package; batch=1: one package per round
            crsql_stream.sync(a, b, max_rounds=2, batch=1, max_changes=2)
        self.assertEqual(len(rows(b)), 2)  # one package per round arrived and stays
        self.assertGreater(crsql_stream.sync(a, b), 0)  # resumes from there
        self.assertEqual(rows(a), rows(b))
        a.close()
        b.close()


if __name__ == "__main__":
    unittest.main()
