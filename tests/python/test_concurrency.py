"""The stream guarantees under concurrent writers on one database file.

Several processes write the same WAL database at once (a pool of writer
connections, as real applications have), one of them is killed mid-run, and
a sync loop on its own connection reads the outbound stream, applies every
package on a replica's inbound stream and acknowledges the replica's
last_applied. Checked: nothing is skipped (every change reaches the replica
or a newer change of the same cell does), exactly-once effect (duplicates are
no-ops, the chain of packages has no holes and no overlap), positions are
unique and a committing writer never lands at or behind a position the
stream has already acknowledged.

Run with Debian's Python (SQLite 3.40.1), which can load extensions:

    /usr/bin/python3 -m unittest tests/python/test_concurrency.py -v

Environment: CRSQL_CONC_SEED (default: $CRSQL_TEST_SEED, else 7) seeds the
run (the writers' seeds derive from it and are printed on failure);
CRSQL_CONC_TXNS (default 3000) is the number of transactions per writer.
"""

import json
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

SCHEMA = [
    "CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty, data BLOB)",
    "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v, n INTEGER NOT NULL DEFAULT 0)",
]
TABLES = {"items": "id", "kv": "k"}
WRITERS = 3
BUSY_MS = 10000

# One writer: random short transactions on the shared source file. After
# each COMMIT it writes "c <version> <t_before_commit> <t_after_commit>" to
# its log (version -1 when the transaction wrote no clock row); the times are
# time.monotonic(), which is system-wide on Linux.
# argv: extension, database, seed, transactions, log path.
WRITER = textwrap.dedent(
    r"""
    import random, sqlite3, sys, time
    ext, path, seed, n, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_MS / 1000)
    conn.enable_load_extension(True)
    conn.load_extension(ext)
    conn.execute("PRAGMA busy_timeout = %d" % BUSY_MS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    if rnd.random() < 0.5:
        conn.execute("PRAGMA temp_store = MEMORY")
    out = open(log, "w", buffering=1)
    out.write("ready\n")

    def value():
        return rnd.choice([
            None, rnd.randint(-5, 5), rnd.randint(1 << 40, 1 << 50), rnd.random() * 100, 2.0,
            "t%d" % rnd.randint(0, 20), "", rnd.randbytes(rnd.randint(0, 24)), "7",
        ])

    def item():
        return rnd.randint(1, 40)

    def key():
        return "k%d" % rnd.randint(0, 29)

    deleted_items, deleted_keys = [], []

    def statement():
        op = rnd.random()
        if op < 0.12:
            conn.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", (item(), value(), value(), value()))
        elif op < 0.20:
            conn.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET qty = excluded.qty", (item(), value(), value()))
        elif op < 0.38:
            cols = rnd.sample(["name", "qty", "data"], rnd.randint(1, 3))
            conn.execute("UPDATE items SET " + ", ".join(c + " = ?" for c in cols) + " WHERE id = ?",
                         [value() for _ in cols] + [item()])
        elif op < 0.45:
            i = item()
            if conn.execute("DELETE FROM items WHERE id = ?", (i,)).rowcount:
                deleted_items.append(i)
        elif op < 0.50:
            i = deleted_items.pop(rnd.randrange(len(deleted_items))) if deleted_items else item()
            conn.execute("INSERT OR IGNORE INTO items (id, name) VALUES (?, ?)", (i, value()))
        elif op < 0.53:
            # A primary-key change (fails when the new id is taken).
            conn.execute("UPDATE items SET id = ? WHERE id = ?", (rnd.randint(1, 60), item()))
        elif op < 0.60:
            conn.execute("UPDATE items SET qty = coalesce(qty, 0) + 1 WHERE id IN "
                         "(SELECT id FROM items ORDER BY random() LIMIT 2)")
        elif op < 0.72:
            conn.execute("INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                         (key(), value(), rnd.randint(0, 9)))
        elif op < 0.82:
            conn.execute("UPDATE kv SET n = n + 1 WHERE k = ?", (key(),))
        elif op < 0.90:
            k = key()
            if conn.execute("DELETE FROM kv WHERE k = ?", (k,)).rowcount:
                deleted_keys.append(k)
        elif op < 0.96:
            k = deleted_keys.pop(rnd.randrange(len(deleted_keys))) if deleted_keys else key()
            conn.execute("INSERT OR IGNORE INTO kv (k, v) VALUES (?, ?)", (k, value()))
        else:
            # Same values again (a no-op update of an existing row).
            conn.execute("UPDATE kv SET v = v WHERE k = ?", (key(),))

    def my_version():
        # Inside the write transaction: the version this transaction writes at
        # is above the committed one iff it wrote a clock row.
        committed = conn.execute("SELECT crsql_db_version()").fetchone()[0]
        mine = conn.execute(
            "SELECT max(v) FROM (SELECT max(db_version) AS v FROM items__crsql_clock "
            "UNION ALL SELECT max(db_version) FROM kv__crsql_clock)").fetchone()[0]
        return mine if mine is not None and mine > committed else -1

    done = 0
    while done < n:
        style = rnd.random()
        try:
            if style < 0.15:
                # Autocommit: one statement is one transaction.
                t0 = time.monotonic()
                try:
                    statement()
                except sqlite3.IntegrityError:
                    pass
                out.write("a %.9f %.9f\n" % (t0, time.monotonic()))
                done += 1
                continue
            if style < 0.55:
                conn.execute("BEGIN IMMEDIATE")
            else:
                # Deferred, and sometimes reading first: the upgrade to a
                # writer can then fail with SQLITE_BUSY (stale snapshot).
                conn.execute("BEGIN")
                if rnd.random() < 0.5:
                    conn.execute("SELECT count(*) FROM items").fetchone()
            for _ in range(rnd.randint(1, 6)):
                try:
                    statement()
                except sqlite3.IntegrityError:
                    pass
            if rnd.random() < 0.05:
                conn.execute("ROLLBACK")
                out.write("r\n")
                done += 1
                continue
            v = my_version()
            t0 = time.monotonic()
            conn.execute("COMMIT")
            out.write("c %d %.9f %.9f\n" % (v, t0, time.monotonic()))
            done += 1
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            out.write("b\n")
        if rnd.random() < 0.3:
            time.sleep(rnd.random() * 0.003)
    out.write("done\n")
    """
).replace("BUSY_MS", str(BUSY_MS))


def connect(path):
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_MS / 1000)
    conn.enable_load_extension(True)
    conn.load_extension(EXT)
    conn.enable_load_extension(False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    return conn


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def pos(text):
    v, s = json.loads(text)
    return (v, s)


def typed_rows(conn, sql, params=()):
    return [tuple((type(v).__name__, v) for v in row) for row in conn.execute(sql, params).fetchall()]


def make_db(path):
    conn = connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for sql in SCHEMA:
        conn.execute(sql)
    for t in TABLES:
        conn.execute("SELECT crsql_as_crr(?)", (t,))
    return conn


def clocks(conn):
    """Per cell: value, version, author, causal length (positions are local
    and differ). As in test_extension.py, a live row's causal length 1 may be
    an explicit sentinel at cl 1 on one side and implicit on the other (a
    replica that created the row from its cells ignores a later cl-1
    sentinel, merge-rules.md row 4; a primary-key change writes one after
    the moved cells), so such sentinels of rows with cells are dropped."""
    rows = typed_rows(
        conn,
        'SELECT "table", pk, cid, val, col_version, site_id, cl FROM crsql_changes ORDER BY "table", pk, cid',
    )
    with_cells = {(r[0], r[1]) for r in rows if r[2] != ("str", "-1")}
    return [r for r in rows if not (r[2] == ("str", "-1") and r[6] == ("int", 1) and (r[0], r[1]) in with_cells)]


@unittest.skipIf(SKIP, SKIP_REASON)
class ConcurrentWritersTest(unittest.TestCase):
    SEED = int(os.environ.get("CRSQL_CONC_SEED") or os.environ.get("CRSQL_TEST_SEED") or "7")
    TXNS = int(os.environ.get("CRSQL_CONC_TXNS", "3000"))

    def test_stream_under_concurrent_writers_skips_nothing_and_applies_once(self):
        rnd = random.Random(self.SEED)
        seeds = [rnd.randrange(1 << 30) for _ in range(WRITERS)]
        victim = rnd.randrange(WRITERS)
        kill_after = rnd.randint(self.TXNS // 4, self.TXNS * 3 // 4)  # log lines
        max_changes = rnd.choice([2, 3, 5, 8])
        ctx = (f"CRSQL_CONC_SEED={self.SEED} CRSQL_CONC_TXNS={self.TXNS}: writer seeds {seeds}, "
               f"writer {victim} killed after {kill_after} transactions, max_changes {max_changes}")

        with tempfile.TemporaryDirectory() as d:
            src_path, rep_path = os.path.join(d, "source.db"), os.path.join(d, "replica.db")
            setup = make_db(src_path)
            setup.execute(f"CREATE VIRTUAL TABLE out USING crsql_OutboundStream(max_changes = {max_changes})")
            setup.close()
            rep = make_db(rep_path)
            rep.execute("CREATE VIRTUAL TABLE inb USING crsql_InboundStream()")
            src = connect(src_path)

            logs = [os.path.join(d, f"writer{i}.log") for i in range(WRITERS)]
            errs = [open(os.path.join(d, f"writer{i}.err"), "w+") for i in range(WRITERS)]
            for e in errs:
                self.addCleanup(e.close)
            children = [
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, EXT, src_path, str(seeds[i]), str(self.TXNS), logs[i]],
                    stdout=subprocess.DEVNULL, stderr=errs[i],
                )
                for i in range(WRITERS)
            ]

            def read_log(i):
                try:
                    with open(logs[i]) as f:
                        text = f.read()
                except FileNotFoundError:
                    return []
                return text.split("\n")[:-1]  # complete lines only

            def child_err(i):
                errs[i].seek(0)
                return errs[i].read()

            # Everything the sync loop saw.
            chain = []        # (since, cursor, changes) of every package applied, in order
            delivered = []    # (table, pk, cid, db_version, seq) of every change received
            delivered_set = set()
            acks = []         # (acknowledged position, time.monotonic() after the ack committed)
            versions_seen = []  # crsql_db_version() of the source at each round
            caught_up = []    # rounds that read to the end of the stream
            duplicates = 0
            prev_cursor = (0, 0)
            killed = False

            def sync_round(limit):
                nonlocal prev_cursor, duplicates
                versions_seen.append(one(src, "SELECT crsql_db_version()"))
                if rnd.random() < 0.5:
                    rows = src.execute("SELECT package, since, cursor, changes FROM out LIMIT ?", (limit,)).fetchall()
                else:
                    rows = src.execute(
                        "SELECT package, since, cursor, changes FROM out WHERE cursor > ? LIMIT ?",
                        (json.dumps(list(prev_cursor)), limit),
                    ).fetchall()
                if len(rows) < limit:
                    caught_up.append(versions_seen[-1])
                in_tx = rows and rnd.random() < 0.3
                if in_tx:
                    rep.execute("BEGIN")
                for package, since, cursor, changes in rows:
                    since, cursor = pos(since), pos(cursor)
                    self.assertEqual(since, prev_cursor, f"{ctx}: package does not chain (packages so far: {chain[-5:]})")
                    self.assertLess(since, cursor, f"{ctx}: empty package range")
                    got = rep.execute(
                        'SELECT "table", pk, cid, db_version, seq FROM crsql_package_changes(?)', (package,)
                    ).fetchall()
                    self.assertEqual(len(got), changes, ctx)
                    for c in got:
                        self.assertTrue(since < (c[3], c[4]) <= cursor, f"{ctx}: change {c} outside {since}..{cursor}")
                    delivered.extend(got)
                    delivered_set.update(got)
                    rep.execute("INSERT INTO inb(package) VALUES (?)", (package,))
                    self.assertEqual(pos(one(rep, "SELECT last_applied FROM inb")), cursor, ctx)
                    chain.append((since, cursor, changes))
                    prev_cursor = cursor
                    if rnd.random() < 0.1:
                        # Delivered twice: the second time is a no-op.
                        before = (one(rep, "SELECT crsql_db_version()"), one(rep, "SELECT count(*) FROM crsql_changes"))
                        rep.execute("INSERT INTO inb(package) VALUES (?)", (package,))
                        after = (one(rep, "SELECT crsql_db_version()"), one(rep, "SELECT count(*) FROM crsql_changes"))
                        self.assertEqual(before, after, f"{ctx}: a duplicate package changed the replica")
                        self.assertEqual(pos(one(rep, "SELECT last_applied FROM inb")), cursor, ctx)
                        duplicates += 1
                if in_tx:
                    rep.execute("COMMIT")
                last_applied = one(rep, "SELECT last_applied FROM inb")
                src.execute("INSERT INTO out(last_sent) VALUES (?)", (last_applied,))
                acked = pos(last_applied)
                acks.append((acked, time.monotonic()))
                # Nothing skipped, checked live: every change the source holds
                # now at or below the acknowledged position was delivered (a
                # newer change of the same cell would be above it; a writer
                # committing behind it would show up here).
                behind = [
                    c for c in src.execute(
                        'SELECT "table", pk, cid, db_version, seq FROM crsql_changes WHERE db_version <= ?', (acked[0],)
                    ).fetchall()
                    if (c[3], c[4]) <= acked and c not in delivered_set
                ]
                self.assertEqual(behind, [], f"{ctx}: changes at or below acknowledged {acked} never sent")
                return len(rows)

            try:
                for i in range(WRITERS):
                    deadline = time.monotonic() + 20
                    while not read_log(i)[:1]:
                        if children[i].poll() is not None or time.monotonic() > deadline:
                            self.fail(f"{ctx}: writer {i} did not start: {child_err(i)}")
                        time.sleep(0.01)
                rounds = 0
                while any(c.poll() is None for c in children):
                    if not killed and len(read_log(victim)) > kill_after:
                        children[victim].send_signal(signal.SIGKILL)
                        killed = True
                    sync_round(rnd.choice([1, 2, 4, 8, 100]))
                    rounds += 1
                    if rnd.random() < 0.05:
                        # The sync process restarts.
                        src.close()
                        src = connect(src_path)
                    time.sleep(rnd.random() * 0.002)
                for c in children:
                    c.wait(timeout=60)
                # Pump until nothing moves.
                deadline = time.monotonic() + 120
                while sync_round(50):
                    self.assertLess(time.monotonic(), deadline, f"{ctx}: the stream never runs dry")
            finally:
                for c in children:
                    if c.poll() is None:
                        c.kill()
                        c.wait()

            # The writers ran to the end, except the one killed.
            logs_lines = [read_log(i) for i in range(WRITERS)]
            for i, c in enumerate(children):
                if i == victim and killed:
                    self.assertEqual(c.returncode, -signal.SIGKILL, f"{ctx}: writer {i}: {child_err(i)}")
                else:
                    self.assertEqual(c.returncode, 0, f"{ctx}: writer {i} (seed {seeds[i]}) failed: {child_err(i)}")
                    self.assertEqual(logs_lines[i][-1], "done", f"{ctx}: writer {i}")
            commits = []  # (version, t_before_commit, t_after_commit, writer)
            for i, lines in enumerate(logs_lines):
                mine = [(int(v), float(t0), float(t1), i) for l in lines if l.startswith("c ") for _, v, t0, t1 in [l.split()]]
                written = [c[0] for c in mine if c[0] >= 0]
                self.assertEqual(written, sorted(set(written)), f"{ctx}: writer {i}'s versions do not increase")
                commits.extend(mine)
            written = [c[0] for c in commits if c[0] >= 0]
            busy = sum(l == "b" for lines in logs_lines for l in lines)
            self.assertGreater(len(written), WRITERS * self.TXNS // 4, f"{ctx}: too few writing transactions")
            self.assertEqual(len(written), len(set(written)), f"{ctx}: two transactions committed the same db_version")
            self.assertEqual(versions_seen, sorted(versions_seen), f"{ctx}: crsql_db_version() went backwards")

            # No writer commits at or behind an acknowledged position: an ack
            # that finished before a COMMIT started must be below its version.
            for v, t0, _t1, w in commits:
                if v < 0:
                    continue
                behind = [a for a, t in acks if t < t0 and a[0] >= v]
                self.assertEqual(behind, [], f"{ctx}: writer {w} committed db_version {v} after {behind[:1]} was acknowledged")

            # The chain: no hole, no overlap, every change once, in position order.
            self.assertGreater(len(chain), 10, ctx)
            for (_, c0, _), (s1, _, _) in zip(chain, chain[1:]):
                self.assertEqual(c0, s1, ctx)
            positions = [(c[3], c[4]) for c in delivered]
            self.assertEqual(positions, sorted(set(positions)), f"{ctx}: a position was delivered twice or out of order")
            self.assertEqual(acks[-1][0], chain[-1][1], ctx)
            self.assertEqual(
                src.execute("SELECT last_sent, lag_versions FROM crsql_streams WHERE name = 'out'").fetchone(),
                (json.dumps(list(chain[-1][1]), separators=(",", ":")), 0),
                f"{ctx}: the stream did not catch up",
            )

            for conn, what in ((src, "source"), (rep, "replica")):
                self.assertEqual(one(conn, "PRAGMA integrity_check"), "ok", f"{ctx}: {what}")
                dups = conn.execute(
                    "SELECT db_version, seq, count(*) FROM crsql_changes GROUP BY db_version, seq HAVING count(*) > 1"
                ).fetchall()
                self.assertEqual(dups, [], f"{ctx}: {what}: duplicate (db_version, seq) positions")

            # Nothing skipped: every change the source holds now (the newest
            # of each cell) was delivered, at the position it has now.
            final = src.execute(
                'SELECT "table", pk, cid, db_version, seq FROM crsql_changes ORDER BY db_version, seq'
            ).fetchall()
            missing = sorted(set(final) - set(delivered), key=lambda c: (c[3], c[4]))
            self.assertEqual(missing, [], f"{ctx}: {len(missing)} changes never sent (acks: {acks[-3:]})")

            # And the replica is the source, values and types.
            for t, pk in TABLES.items():
                sql = f"SELECT * FROM {t} ORDER BY {pk}"
                self.assertEqual(typed_rows(rep, sql), typed_rows(src, sql), f"{ctx}: table {t} differs")
            self.assertEqual(clocks(rep), clocks(src), f"{ctx}: crsql_changes differ")
            self.assertGreater(one(src, "SELECT count(*) FROM items") + one(src, "SELECT count(*) FROM kv"), 0, ctx)

            if os.environ.get("CRSQL_CONC_VERBOSE"):
                print(f"\n{ctx}: {len(written)} writing commits, {len(chain)} packages "
                      f"({sum(1 for c in chain if c[2] == 0)} empty), {len(delivered)} changes, "
                      f"{busy} busy retries, {rounds} rounds ({len(caught_up)} to the end), {len(acks)} acks, "
                      f"{duplicates} duplicates, final db_version {versions_seen[-1]}",
                      file=sys.stderr)
            src.close()
            rep.close()


if __name__ == "__main__":
    unittest.main()
