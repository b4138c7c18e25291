"""The extension loaded into Python's standard-library sqlite3 module.

Run with Debian's Python (SQLite 3.40.1), which can load extensions:

    /usr/bin/python3 -m unittest discover -s tests/python -v

The extension is taken from $CRSQL_STREAM_EXT, or ../../dist/libcrsql_stream.so
relative to this file (`make build` puts it there).
"""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _support import EXT, HERE, SKIP, SKIP_REASON  # noqa: E402

OTHER_SITE = bytes.fromhex("0b" * 16)

CHANGES_COLS = '"table", pk, cid, val, col_version, db_version, site_id, cl, seq'


def connect(path=":memory:"):
    """A connection in autocommit mode (explicit BEGIN/COMMIT) with the
    extension loaded."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(EXT)
    conn.enable_load_extension(False)
    return conn


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def typed_rows(conn, sql, params=()):
    """Rows with each value tagged by its Python type, so that 1 and 1.0
    compare different (as they do in SQLite)."""
    return [
        tuple((type(v).__name__, v) for v in row)
        for row in conn.execute(sql, params).fetchall()
    ]


def changes_since(conn, since, exclude_site=None):
    sql = f"SELECT {CHANGES_COLS} FROM crsql_changes WHERE db_version > ?"
    params = [since]
    if exclude_site is not None:
        sql += " AND site_id IS NOT ?"
        params.append(exclude_site)
    return conn.execute(sql + " ORDER BY db_version, seq", params).fetchall()


def apply_changes(conn, changes):
    conn.execute("BEGIN")
    try:
        conn.executemany(
            f"INSERT INTO crsql_changes ({CHANGES_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            changes,
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_fds_to(path):
    """Paths of this process's open file descriptors that point at `path`
    (or its -journal / -wal / -shm companions)."""
    real = os.path.realpath(path)
    found = []
    fd_dir = "/proc/self/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(real):
            found.append(target)
    return found


@unittest.skipIf(SKIP, SKIP_REASON)
class LoadingTest(unittest.TestCase):
    def test_extension_loads_into_stdlib_sqlite3(self):
        conn = connect()
        self.addCleanup(conn.close)
        site = one(conn, "SELECT crsql_site_id()")
        self.assertIsInstance(site, bytes)
        self.assertEqual(len(site), 16)
        self.assertEqual(one(conn, "SELECT crsql_db_version()"), 0)
        self.assertEqual(one(conn, "SELECT hex(crsql_pack_columns(1, 'a'))"), "0209010B0161")
        funcs = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM pragma_function_list WHERE name LIKE 'crsql%'"
            )
        }
        for name in ("crsql_as_crr", "crsql_db_version", "crsql_site_id", "crsql_finalize"):
            self.assertIn(name, funcs)
        modules = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM pragma_module_list WHERE name LIKE 'crsql%'"
            )
        }
        self.assertLessEqual({"crsql_changes", "crsql_unpack_columns"}, modules)

    def test_loading_twice_on_one_connection_is_harmless(self):
        conn = connect()
        self.addCleanup(conn.close)
        site = one(conn, "SELECT crsql_site_id()")
        conn.execute("CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c)")
        conn.execute("SELECT crsql_as_crr('foo')")
        conn.execute("INSERT INTO foo VALUES (1, 'x', 'y')")
        conn.enable_load_extension(True)
        conn.load_extension(EXT)
        conn.load_extension(EXT)
        conn.enable_load_extension(False)
        self.assertEqual(one(conn, "SELECT crsql_site_id()"), site)
        self.assertEqual(one(conn, "SELECT crsql_db_version()"), 1)
        # The triggers still record each write exactly once.
        conn.execute("INSERT INTO foo VALUES (2, 'x', 'y')")
        conn.execute("UPDATE foo SET b = 'z' WHERE a = 1")
        self.assertEqual(one(conn, "SELECT crsql_db_version()"), 3)
        self.assertEqual(
            conn.execute(
                "SELECT hex(pk), cid, col_version, db_version, seq FROM crsql_changes "
                "ORDER BY db_version, seq"
            ).fetchall(),
            [
                ("010901", "c", 1, 1, 1),
                ("010902", "b", 1, 2, 0),
                ("010902", "c", 1, 2, 1),
                ("010901", "b", 2, 3, 0),
            ],
        )
        # Merges still count once.
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO crsql_changes VALUES ('foo', X'010903', 'b', 'm', 1, 1, ?, 1, 0)",
            (OTHER_SITE,),
        )
        self.assertEqual(one(conn, "SELECT crsql_rows_impacted()"), 1)
        conn.execute("COMMIT")
        self.assertEqual(one(conn, "SELECT count(*) FROM foo"), 3)

    def test_loading_into_a_second_connection_on_the_same_file_shares_the_site_id(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "db.sqlite")
            a = connect(path)
            b = connect(path)
            try:
                self.assertEqual(one(a, "SELECT crsql_site_id()"), one(b, "SELECT crsql_site_id()"))
                a.execute("CREATE TABLE foo(a PRIMARY KEY NOT NULL, b)")
                a.execute("SELECT crsql_as_crr('foo')")
                a.execute("INSERT INTO foo VALUES (1, 'a')")
                # b sees the version a committed, and continues from it.
                self.assertEqual(one(b, "SELECT crsql_db_version()"), 1)
                b.execute("INSERT INTO foo VALUES (2, 'b')")
                self.assertEqual(one(b, "SELECT crsql_db_version()"), 2)
                self.assertEqual(one(a, "SELECT crsql_db_version()"), 2)
                self.assertEqual(
                    a.execute(
                        "SELECT hex(pk), db_version FROM crsql_changes ORDER BY db_version, seq"
                    ).fetchall(),
                    [("010901", 1), ("010902", 2)],
                )
            finally:
                a.close()
                b.close()


@unittest.skipIf(SKIP, SKIP_REASON)
class SyncTest(unittest.TestCase):
    SCHEMA = [
        "CREATE TABLE items(id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER DEFAULT 0, data BLOB)",
        "CREATE TABLE tags(item NOT NULL, tag NOT NULL, PRIMARY KEY (item, tag))",
    ]

    def make_db(self, path):
        conn = connect(path)
        self.addCleanup(conn.close)
        for sql in self.SCHEMA:
            conn.execute(sql)
        conn.execute("SELECT crsql_as_crr('items')")
        conn.execute("SELECT crsql_as_crr('tags')")
        return conn

    def contents(self, conn):
        return (
            typed_rows(conn, "SELECT * FROM items ORDER BY id"),
            typed_rows(conn, "SELECT * FROM tags ORDER BY item, tag"),
        )

    def clocks(self, conn, with_site=True):
        """What must agree after convergence: per cell, the version, the
        causal length, the value and (unless two sites wrote the same value
        at the same version, which is a tie nobody wins) the author.
        db_version and seq are local positions and differ."""
        site = ", site_id" if with_site else ""
        rows = typed_rows(
            conn,
            f'SELECT "table", pk, cid, val, col_version, cl{site} FROM crsql_changes '
            'ORDER BY "table", pk, cid',
        )
        # A live row's causal length 1 may be explicit (a sentinel at cl 1)
        # on one side and implicit (cells only) on the other: a peer that
        # receives the cells before the sentinel ignores the sentinel. Both
        # mean the same, so drop such sentinels.
        with_cells = {(r[0], r[1]) for r in rows if r[2] != ("str", "-1")}
        return [
            r
            for r in rows
            if not (r[2] == ("str", "-1") and r[5] == ("int", 1) and (r[0], r[1]) in with_cells)
        ]

    def test_two_connections_sync_a_table_both_ways(self):
        with tempfile.TemporaryDirectory() as d:
            a = self.make_db(os.path.join(d, "a.db"))
            b = self.make_db(os.path.join(d, "b.db"))
            site_a = one(a, "SELECT crsql_site_id()")
            site_b = one(b, "SELECT crsql_site_id()")
            self.assertNotEqual(site_a, site_b)
            seen = {"a": 0, "b": 0}  # highest db_version of the peer applied

            def sync():
                ab = changes_since(a, seen["a"], exclude_site=site_b)
                ba = changes_since(b, seen["b"], exclude_site=site_a)
                if ab:
                    seen["a"] = max(c[5] for c in ab)
                if ba:
                    seen["b"] = max(c[5] for c in ba)
                apply_changes(b, ab)
                apply_changes(a, ba)
                # Watermarks move on past what we just received, so the
                # relayed copies are not sent back.
                seen["a"] = max(seen["a"], one(a, "SELECT crsql_db_version()"))
                seen["b"] = max(seen["b"], one(b, "SELECT crsql_db_version()"))

            a.executescript(
                """
                BEGIN;
                INSERT INTO items VALUES (1, 'apple', 3, X'01'), (2, 'pear', 1, NULL);
                INSERT INTO tags VALUES (1, 'fruit'), (2, 'fruit');
                COMMIT;
                """
            )
            b.executescript(
                """
                INSERT INTO items VALUES (10, 'bread', 2, NULL);
                INSERT INTO tags VALUES (10, 'bakery');
                """
            )
            sync()
            self.assertEqual(self.contents(a), self.contents(b))
            self.assertEqual(len(self.contents(a)[0]), 3)

            # Concurrent edits: different columns of one row, the same column
            # (higher col_version wins), a delete against an update, a PK-only
            # delete and re-insert, a primary-key change.
            a.executescript(
                """
                UPDATE items SET qty = 30 WHERE id = 1;
                UPDATE items SET name = 'pear (a)' WHERE id = 2;
                UPDATE items SET name = 'pear (a2)' WHERE id = 2;
                DELETE FROM items WHERE id = 10;
                DELETE FROM tags WHERE item = 2;
                INSERT INTO tags VALUES (2, 'fruit');
                """
            )
            b.executescript(
                """
                UPDATE items SET name = 'green apple' WHERE id = 1;
                UPDATE items SET name = 'pear (b)' WHERE id = 2;
                UPDATE items SET qty = 5 WHERE id = 10;
                UPDATE items SET id = 11 WHERE id = 10;
                INSERT INTO items VALUES (12, 'rye', 1.5, X'');
                """
            )
            sync()
            self.assertEqual(self.contents(a), self.contents(b))
            # Both deleted row 10 (a directly, b by moving it to 11): equal
            # tombstones, so each keeps its own as the author; compare the
            # authors separately.
            self.assertEqual(self.clocks(a, False), self.clocks(b, False))
            for conn in (a, b):
                authors = dict(
                    ((r[0], r[1]), r[2])
                    for r in conn.execute(
                        "SELECT hex(pk), cid, site_id FROM crsql_changes WHERE \"table\" = 'items'"
                    )
                )
                self.assertEqual(authors[("010901", "name")], site_b)
                self.assertEqual(authors[("010901", "qty")], site_a)
                self.assertEqual(authors[("010902", "name")], site_a)
                self.assertEqual(authors[("01090B", "qty")], site_b)
            items = dict((r[0][1], r) for r in self.contents(a)[0])
            self.assertEqual(items[1][1:3], (("str", "green apple"), ("int", 30)))
            self.assertEqual(items[2][1], ("str", "pear (a2)"))
            self.assertNotIn(10, items)
            self.assertEqual(items[11][1:3], (("str", "bread"), ("int", 5)))
            self.assertEqual(items[12][2], ("float", 1.5))

            # A second sync with nothing new changes nothing.
            before = (one(a, "SELECT crsql_db_version()"), one(b, "SELECT crsql_db_version()"))
            apply_changes(b, changes_since(a, 0))
            apply_changes(a, changes_since(b, 0))
            self.assertEqual(
                (one(a, "SELECT crsql_db_version()"), one(b, "SELECT crsql_db_version()")), before
            )
            self.assertEqual(self.contents(a), self.contents(b))
            self.assertEqual(self.clocks(a, False), self.clocks(b, False))

            # Resurrection: b re-inserts the row a deleted; a receives it.
            b.execute("INSERT INTO items VALUES (10, 'bread again', 1, NULL)")
            sync()
            self.assertEqual(self.contents(a), self.contents(b))
            self.assertIn(
                (("int", 10), ("str", "bread again"), ("int", 1), ("NoneType", None)),
                self.contents(a)[0],
            )

    def test_random_edits_converge(self):
        rnd = random.Random(int(os.environ.get("CRSQL_TEST_SEED", "12345")))
        with tempfile.TemporaryDirectory() as d:
            dbs = [self.make_db(os.path.join(d, f"{n}.db")) for n in "abc"]
            for _ in range(15):
                for conn in dbs:
                    conn.execute("BEGIN")
                    for _ in range(rnd.randint(1, 6)):
                        random_write(conn, rnd)
                    conn.execute("COMMIT")
                # Full pairwise exchange in a random order.
                pairs = [(x, y) for x in dbs for y in dbs if x is not y]
                rnd.shuffle(pairs)
                for src, dst in pairs:
                    apply_changes(dst, changes_since(src, 0))
            for src in dbs:
                for dst in dbs:
                    if src is not dst:
                        apply_changes(dst, changes_since(src, 0))
            first = self.contents(dbs[0])
            for conn in dbs[1:]:
                self.assertEqual(self.contents(conn), first)
                self.assertEqual(self.clocks(conn, False), self.clocks(dbs[0], False))


def random_write(conn, rnd):
    """One random local write to the `items`/`tags` schema of SyncTest."""
    op = rnd.random()
    item = rnd.randint(1, 12)
    try:
        if op < 0.35:
            conn.execute(
                "INSERT INTO items VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "name = excluded.name, qty = excluded.qty",
                (item, rnd.choice(["a", "b", "c", None]), rnd.randint(0, 3), rnd.choice([None, b"\x00"])),
            )
        elif op < 0.55:
            conn.execute(
                "UPDATE items SET qty = ? WHERE id = ?",
                (rnd.choice([1, 2, 2.5, "two", None]), item),
            )
        elif op < 0.7:
            conn.execute("DELETE FROM items WHERE id = ?", (item,))
        elif op < 0.8:
            conn.execute("INSERT OR REPLACE INTO items (id, name) VALUES (?, ?)", (item, "replaced"))
        elif op < 0.9:
            conn.execute("INSERT OR IGNORE INTO tags VALUES (?, ?)", (item, rnd.choice("xyz")))
        else:
            conn.execute("DELETE FROM tags WHERE item = ?", (item,))
    except sqlite3.IntegrityError:
        pass


@unittest.skipIf(SKIP, SKIP_REASON)
class CloseTest(unittest.TestCase):
    def test_closing_without_crsql_finalize_works_and_the_file_reopens(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "db.sqlite")
            conn = connect(path)
            conn.execute("CREATE TABLE foo(a PRIMARY KEY NOT NULL, b)")
            conn.execute("SELECT crsql_as_crr('foo')")
            # Exercise every cached-statement path: triggers, merges, reads.
            conn.execute("INSERT INTO foo VALUES (1, 'one')")
            conn.execute("UPDATE foo SET b = 'uno' WHERE a = 1")
            conn.execute("DELETE FROM foo WHERE a = 1")
            conn.execute(
                "INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'two', 1, 1, ?, 1, 0)",
                (OTHER_SITE,),
            )
            self.assertEqual(one(conn, "SELECT count(*) FROM crsql_changes"), 2)
            conn.close()
            # Python closes with sqlite3_close_v2, which never fails but keeps a
            # "zombie" connection (and its file open) while statements are
            # unfinalized. No descriptor may remain open on the file.
            self.assertEqual(open_fds_to(path), [])

            conn = connect(path)
            try:
                self.assertEqual(conn.execute("SELECT * FROM foo ORDER BY a").fetchall(), [(2, "two")])
                self.assertEqual(one(conn, "SELECT crsql_db_version()"), 4)
                conn.execute("INSERT INTO foo VALUES (3, 'three')")
                self.assertEqual(one(conn, "SELECT crsql_db_version()"), 5)
                self.assertEqual(one(conn, "PRAGMA integrity_check"), "ok")
            finally:
                conn.close()
            self.assertEqual(open_fds_to(path), [])

            # And crsql_finalize() followed by close works as well.
            conn = connect(path)
            conn.execute("INSERT INTO foo VALUES (4, 'four')")
            self.assertEqual(one(conn, "SELECT crsql_finalize()"), "finalized")
            conn.close()
            self.assertEqual(open_fds_to(path), [])


CRASH_TABLES = {
    "items": ["id"],
    "tags": ["item", "tag"],
    'odd "name"': ["k"],
}
CRASH_SCHEMA = [
    "CREATE TABLE items(id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty DEFAULT 0, data BLOB)",
    "CREATE TABLE tags(item NOT NULL, tag NOT NULL, PRIMARY KEY (item, tag))",
    'CREATE TABLE "odd ""name"""(k TEXT NOT NULL PRIMARY KEY, v)',
]

# The crash test's writer: loops over random CRR transactions (local writes
# of every kind and merges of remote changes) on one file and prints the
# committed db_version after each COMMIT.
# argv: extension, database, journal mode, seed, repr(CRASH_SCHEMA).
CHILD = textwrap.dedent(
    r"""
    import ast, random, sqlite3, sys
    ext, path, journal, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    schema = ast.literal_eval(sys.argv[5])
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.enable_load_extension(True)
    conn.load_extension(ext)
    conn.execute("PRAGMA journal_mode = " + journal)
    conn.execute("PRAGMA synchronous = NORMAL" if journal == "wal" else "PRAGMA synchronous = FULL")
    for sql in schema:
        conn.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    for t in ("items", "tags", 'odd "name"'):
        conn.execute("SELECT crsql_as_crr(?)", (t,))
    odd = '"' + 'odd "name"'.replace('"', '""') + '"'
    remote = bytes.fromhex("0b" * 16)
    print("ready", conn.execute("SELECT crsql_db_version()").fetchone()[0], flush=True)
    while True:
        conn.execute("BEGIN")
        for _ in range(rnd.randint(1, 20)):
            op = rnd.random()
            i = rnd.randint(1, 60)
            try:
                if op < 0.25:
                    conn.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)",
                                 (i, "n%d" % rnd.randint(0, 9), rnd.choice([1, 2.5, "x", None]),
                                  rnd.randbytes(rnd.randint(0, 64))))
                elif op < 0.4:
                    conn.execute("UPDATE items SET qty = ?, name = ? WHERE id = ?",
                                 (rnd.randint(0, 5), "u%d" % rnd.randint(0, 3), i))
                elif op < 0.5:
                    conn.execute("DELETE FROM items WHERE id = ?", (i,))
                elif op < 0.55:
                    conn.execute("UPDATE items SET id = ? WHERE id = ?", (rnd.randint(61, 400), i))
                elif op < 0.65:
                    conn.execute("INSERT OR IGNORE INTO tags VALUES (?, ?)", (i, rnd.choice("abc")))
                elif op < 0.7:
                    conn.execute("DELETE FROM tags WHERE item = ?", (i,))
                elif op < 0.8:
                    conn.execute("INSERT INTO " + odd + " VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                                 ("k'%d" % i, rnd.random()))
                elif op < 0.83:
                    conn.execute("DELETE FROM " + odd + " WHERE k = ?", ("k'%d" % i,))
                elif op < 0.97:
                    # A change from a remote site: a cell, a delete or a sentinel.
                    cl = rnd.randint(1, 5)
                    cid = rnd.choice(["name", "qty", "-1"]) if cl % 2 else "-1"
                    conn.execute(
                        "INSERT INTO crsql_changes VALUES ('items', crsql_pack_columns(?), ?, ?, ?, ?, ?, ?, ?)",
                        (i, cid, None if cid == "-1" else "r%d" % rnd.randint(0, 9),
                         rnd.randint(1, 6), rnd.randint(1, 200), remote, cl, rnd.randint(0, 5)))
                else:
                    conn.execute("SELECT crsql_next_db_version()")
            except sqlite3.IntegrityError:
                pass
        conn.execute("COMMIT")
        print("committed", conn.execute("SELECT crsql_db_version()").fetchone()[0], flush=True)
    """
)


def qi(name):
    return '"' + name.replace('"', '""') + '"'


@unittest.skipIf(SKIP, SKIP_REASON)
class CrashTest(unittest.TestCase):
    ROUNDS = int(os.environ.get("CRSQL_CRASH_ROUNDS", "20"))

    def check_consistent(self, conn, ctx):
        self.assertEqual(one(conn, "PRAGMA integrity_check"), "ok", ctx)
        for table, pks in CRASH_TABLES.items():
            base, clock, pkst = qi(table), qi(table + "__crsql_clock"), qi(table + "__crsql_pks")
            join = " AND ".join(f"p.{qi(c)} IS b.{qi(c)}" for c in pks)
            # Every live base row has a key and clock rows (cells or sentinel).
            untracked = conn.execute(
                f"SELECT b.* FROM {base} AS b WHERE NOT EXISTS ("
                f"  SELECT 1 FROM {pkst} AS p JOIN {clock} AS c ON c.key = p.__crsql_key WHERE {join})"
            ).fetchall()
            self.assertEqual(untracked, [], f"{ctx}: rows of {table} without clocks")
            # Liveness agrees: a key whose causal length is odd has a base row,
            # one whose causal length is even has none.
            cl = f"coalesce((SELECT col_version FROM {clock} WHERE key = p.__crsql_key AND col_name = '-1'), 1)"
            exists = f"EXISTS (SELECT 1 FROM {base} AS b WHERE {join})"
            wrong = conn.execute(
                f"SELECT p.*, {cl} AS cl, {exists} AS present FROM {pkst} AS p "
                f"WHERE EXISTS (SELECT 1 FROM {clock} WHERE key = p.__crsql_key) "
                f"AND ({cl} % 2 = 1) != {exists}"
            ).fetchall()
            self.assertEqual(wrong, [], f"{ctx}: {table}: causal length and base row disagree")
            # Clock rows only for existing keys and known columns.
            orphans = one(
                conn,
                f"SELECT count(*) FROM {clock} WHERE key NOT IN (SELECT __crsql_key FROM {pkst}) "
                f"OR (col_name != '-1' AND col_name NOT IN (SELECT name FROM pragma_table_info(?)))",
                (table,),
            )
            self.assertEqual(orphans, 0, f"{ctx}: {table}: orphan clock rows")
        # Positions are unique (DECISIONS D4).
        dups = conn.execute(
            "SELECT db_version, seq, count(*) FROM crsql_changes GROUP BY db_version, seq HAVING count(*) > 1"
        ).fetchall()
        self.assertEqual(dups, [], f"{ctx}: duplicate (db_version, seq) positions")

    def check_full_sync_reproduces(self, conn, ctx):
        fresh = connect(":memory:")
        try:
            for sql in CRASH_SCHEMA:
                fresh.execute(sql)
            for table in CRASH_TABLES:
                fresh.execute("SELECT crsql_as_crr(?)", (table,))
            apply_changes(fresh, changes_since(conn, 0))
            for table, pks in CRASH_TABLES.items():
                order = ", ".join(qi(c) for c in pks)
                sql = f"SELECT * FROM {qi(table)} ORDER BY {order}"
                self.assertEqual(typed_rows(fresh, sql), typed_rows(conn, sql), f"{ctx}: {table} differs after a full sync")
        finally:
            fresh.close()

    def test_killed_writer_leaves_a_consistent_database(self):
        rnd = random.Random(int(os.environ.get("CRSQL_TEST_SEED", "4242")))
        with tempfile.TemporaryDirectory() as d:
            paths = {"wal": os.path.join(d, "wal.db"), "delete": os.path.join(d, "delete.db")}
            last_version = {"wal": 0, "delete": 0}
            kills_mid_write = 0
            for rnd_no in range(self.ROUNDS):
                journal = "wal" if rnd_no % 2 == 0 else "delete"
                path = paths[journal]
                seed = rnd.randrange(1 << 30)
                ctx = f"round {rnd_no} ({journal}, child seed {seed})"
                child = subprocess.Popen(
                    [sys.executable, "-c", CHILD, EXT, path, journal, str(seed), repr(CRASH_SCHEMA)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    line = child.stdout.readline()
                    if not line.startswith("ready"):
                        child.kill()
                        self.fail(f"{ctx}: writer did not start: {line!r} {child.communicate()[1]}")
                    time.sleep(rnd.uniform(0.02, 0.35))
                    if child.poll() is not None:
                        self.fail(f"{ctx}: writer died: {child.communicate()[1]}")
                    child.send_signal(signal.SIGKILL)
                    out, err = child.communicate(timeout=10)
                finally:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
                self.assertEqual(child.returncode, -signal.SIGKILL, f"{ctx}: {err}")
                # Only complete lines: the kill can cut the last one (the
                # writer may be blocked mid-line on a full pipe).
                complete = out.split("\n")[:-1]
                committed = [int(l.split()[1]) for l in complete if l.startswith("committed")]
                if committed:
                    kills_mid_write += 1
                acked = max(committed, default=int(line.split()[1]))

                conn = connect(path)
                try:
                    version = one(conn, "SELECT crsql_db_version()")
                    self.assertGreaterEqual(version, last_version[journal], f"{ctx}: db_version went backwards")
                    self.assertGreaterEqual(version, acked, f"{ctx}: a committed version was lost")
                    last_version[journal] = version
                    self.check_consistent(conn, ctx)
                    self.check_full_sync_reproduces(conn, ctx)
                    # The database is still writable after the crash.
                    conn.execute("INSERT OR REPLACE INTO items (id, name) VALUES (1000, 'after crash')")
                    self.assertGreater(one(conn, "SELECT crsql_db_version()"), version)
                    last_version[journal] = one(conn, "SELECT crsql_db_version()")
                finally:
                    conn.close()
            # The kills must have hit a running write loop most of the time.
            self.assertGreater(kills_mid_write, self.ROUNDS // 2)
            for journal, v in last_version.items():
                self.assertGreater(v, 0, journal)


if __name__ == "__main__":
    unittest.main()
