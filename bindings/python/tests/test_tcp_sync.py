"""The TCP example (examples/python/tcp_sync.py) as two real processes on
127.0.0.1: the connection is cut in the middle of a package frame, the
cutting process exits and is started again, and both databases must end
identical, every package applied exactly once, in one unbroken chain.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from typing import List, Optional

import crsql_stream

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.abspath(os.path.join(HERE, "..", "..", "..", "examples", "python", "tcp_sync.py"))
EXIT_CUT = 3
TIMEOUT = 40  # seconds, per process; the whole test takes a few

ROWS = 60  # per side, 5 per transaction
MAX_CHANGES = 4  # small packages: many frames to cut between


class Proc:
    def __init__(self, d: str, name: str, *args: str) -> None:
        self.name = name
        self.log_path = os.path.join(d, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(
            [sys.executable, EXAMPLE, *args, "--timeout", str(TIMEOUT), "--max-changes", str(MAX_CHANGES)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self) -> int:
        try:
            return self.p.wait(timeout=TIMEOUT + 10)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            self.log.close()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()

    def events(self) -> List[dict]:
        out = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append({"event": "text", "line": line.rstrip()})
        return out

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def wait_for_file(path: str, proc: Proc) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        if proc.p.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"{proc.name} did not start listening:\n{proc.output()}")


def crdt_state(path: str) -> list:
    conn = crsql_stream.connect(path)
    try:
        return conn.execute(
            'SELECT "table", pk, cid, val, col_version, site_id, cl FROM crsql_changes ORDER BY "table", pk, cid'
        ).fetchall()
    finally:
        conn.close()


def items(path: str) -> list:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, label, n, note FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


class TcpSync(unittest.TestCase):
    procs: List[Proc]

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.d = self.dir.name
        self.a = os.path.join(self.d, "a.db")
        self.b = os.path.join(self.d, "b.db")
        self.port_file = os.path.join(self.d, "port")
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            p.kill()
        self.dir.cleanup()

    def start(self, name: str, *args: str) -> Proc:
        p = Proc(self.d, name, *args)
        self.procs.append(p)
        return p

    def assert_exit(self, proc: Proc, code: int) -> None:
        rc = proc.wait()
        self.assertEqual(rc, code, f"{proc.name} exited with {rc}:\n{proc.output()}")

    def assert_converged_exactly_once(self, receivers: List[List[Proc]]) -> None:
        """Both files identical; each side's applied packages form one
        unbroken chain from [0,0], with no package applied twice."""
        a_items, b_items = items(self.a), items(self.b)
        self.assertEqual(len(a_items), 2 * ROWS + 1)  # both sides' rows + the shared one
        self.assertEqual(a_items, b_items)
        self.assertEqual(crdt_state(self.a), crdt_state(self.b))
        for runs in receivers:
            events = [e for p in runs for e in p.events()]
            applied = [e for e in events if e["event"] == "applied"]
            self.assertEqual([e for e in events if e["event"] == "duplicate"], [])
            self.assertTrue(applied)
            self.assertEqual(applied[0]["since"], "[0,0]")
            for prev, cur in zip(applied, applied[1:]):
                self.assertEqual(cur["since"], prev["cursor"], f"not one chain: {prev} then {cur}")
            sent_by_peer = sum(e["changes"] for e in applied)
            self.assertGreaterEqual(sent_by_peer, ROWS)

    def lost_mid_frame(self, proc: Proc) -> bool:
        return any(e["event"] == "lost" and "mid-payload" in e["reason"] for e in proc.events())

    def test_client_cut_mid_package_and_restarted(self):
        server = self.start("server", "serve", "--db", self.a, "--port-file", self.port_file, "--insert", str(ROWS))
        port = wait_for_file(self.port_file, server)
        client1 = self.start(
            "client1", "connect", "--db", self.b, "--port", port, "--insert", str(ROWS), "--cut-after-packages", "3"
        )
        self.assert_exit(client1, EXIT_CUT)
        self.assertTrue(any(e["event"] == "cut" for e in client1.events()), client1.output())
        # The server noticed the half frame and is accepting again; restart the client.
        client2 = self.start("client2", "connect", "--db", self.b, "--port", port)
        self.assert_exit(client2, 0)
        self.assert_exit(server, 0)
        self.assertTrue(self.lost_mid_frame(server), server.output())
        # The restarted client resumed where the server stopped: after the 3 packages.
        sent1 = [e for e in client1.events() if e["event"] == "sent"]
        sent2 = [e for e in client2.events() if e["event"] == "sent"]
        self.assertEqual(len(sent1), 3)
        self.assertEqual(sent2[0]["since"], sent1[-1]["cursor"])
        self.assert_converged_exactly_once([[server], [client1, client2]])

    def test_server_cut_mid_package_and_restarted(self):
        server1 = self.start(
            "server1", "serve", "--db", self.a, "--port-file", self.port_file,
            "--insert", str(ROWS), "--cut-after-packages", "2",
        )
        port = wait_for_file(self.port_file, server1)
        client = self.start("client", "connect", "--db", self.b, "--port", port, "--insert", str(ROWS))
        self.assert_exit(server1, EXIT_CUT)
        # The client survives the cut and keeps reconnecting; restart the server on the same port.
        server2 = self.start("server2", "serve", "--db", self.a, "--port", port)
        self.assert_exit(server2, 0)
        self.assert_exit(client, 0)
        self.assertTrue(self.lost_mid_frame(client), client.output())
        self.assertGreaterEqual(len([e for e in client.events() if e["event"] == "connected"]), 2)
        self.assert_converged_exactly_once([[server1, server2], [client]])


if __name__ == "__main__":
    unittest.main()
