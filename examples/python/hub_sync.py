#!/usr/bin/env python3
"""Sync a SQLite file with a crsql-sync hub (docs/server.md), in Python.

    crsql-sync serve --data hub/data --schema-dir hub/schema --listen 127.0.0.1:8080 &
    python examples/python/hub_sync.py --db a.db --url ws://127.0.0.1:8080/acme --insert t1='buy milk'
    python examples/python/hub_sync.py --db b.db --url ws://127.0.0.1:8080/acme     # prints t1

Needs the crsql-stream wheel with its `hub` extra (pip install
'crsql-stream[hub]'). The database gets the `todos` table of the hub's schema
file (hub/schema/acme.sql in docs/server.md); each run pushes its own
changes, pulls everyone else's, prints the table and exits (`--watch`: stays
connected until Ctrl-C). Exit code 2 on a refusal of the hub (wrong token,
other schema, …), 1 on other errors.
"""

import argparse
import sys
import time

import crsql_stream
from crsql_stream import hub

SCHEMA = """
CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);
SELECT crsql_as_crr('todos');
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True)
    p.add_argument("--url", required=True, help="ws://HOST:PORT/<tenant>")
    p.add_argument("--token")
    p.add_argument("--insert", action="append", default=[], metavar="ID=TITLE")
    p.add_argument("--watch", action="store_true", help="stay connected (Ctrl-C to stop)")
    p.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()

    conn = crsql_stream.connect(args.db)
    conn.executescript(SCHEMA)
    for item in args.insert:
        id_, _, title = item.partition("=")
        conn.execute("INSERT OR REPLACE INTO todos (id, title) VALUES (?, ?)", (id_, title))
    conn.commit()  # only committed changes are pushed

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} changes", end="", file=sys.stderr, flush=True)

    try:
        if args.watch:
            with hub.Syncer(args.db, args.url, token=args.token, on_error=lambda e: print(e, file=sys.stderr)):
                while True:
                    time.sleep(1)
        moved = hub.sync(conn, args.url, token=args.token, progress=progress, timeout=args.timeout)
    except KeyboardInterrupt:
        return 0
    except hub.HubError as e:
        print(f"\nhub_sync: {type(e).__name__}: {e}", file=sys.stderr)
        return 2 if e.fatal else 1
    print(f"\npushed {moved.pushed}, pulled {moved.pulled} changes", file=sys.stderr)
    for id_, title in conn.execute("SELECT id, title FROM todos ORDER BY id"):
        print(f"{id_}\t{title}")
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
