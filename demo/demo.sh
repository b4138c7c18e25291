#!/usr/bin/env bash
# Two databases edit the same table independently, then sync both ways
# through crsql_OutboundStream / crsql_InboundStream, in the stock sqlite3
# shell. Packages travel through a third "wire" database attached by both
# sides; any transport that moves a blob would do.
set -euo pipefail
cd "$(dirname "$0")/.."
EXT="${CRSQL_STREAM_EXT:-$PWD/dist/libcrsql_stream.so}"
EXT="${EXT%.so}"
SQLITE3="${SQLITE3:-sqlite3}"
DIR="${DEMO_DIR:-$(mktemp -d)}"
cd "$DIR"
rm -f a.db b.db wire.db

sql() { # sql DB <<SQL
  "$SQLITE3" -batch -init /dev/null "$1" -cmd ".load $EXT" -cmd ".mode box" -cmd ".nullvalue NULL"
}

echo "== set up: the same schema on both sides, different edits"
for db in a b; do
  sql $db.db <<'SQL' >/dev/null
CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);
SELECT crsql_as_crr('todos');
SQL
done
sql a.db <<'SQL'
INSERT INTO todos VALUES ('t1', 'buy milk', 0), ('t2', 'write the report', 0);
UPDATE todos SET done = 1 WHERE id = 't1';
SQL
sql b.db <<'SQL'
INSERT INTO todos VALUES ('t3', 'call mum', 0);
INSERT INTO todos VALUES ('t2', 'write the REPORT', 1);  -- a concurrent insert of the same row
SQL
A_SITE=$(sql a.db <<<"SELECT hex(crsql_site_id());" | tr -dc '0-9A-F' | head -c 32)
B_SITE=$(sql b.db <<<"SELECT hex(crsql_site_id());" | tr -dc '0-9A-F' | head -c 32)
echo "site A = $A_SITE"
echo "site B = $B_SITE"

sql wire.db <<'SQL'
CREATE TABLE packages (n INTEGER PRIMARY KEY, link TEXT, package BLOB, cursor TEXT);
CREATE TABLE acks (link TEXT PRIMARY KEY, position TEXT);
SQL

echo; echo "== before sync"
echo "-- A"; sql a.db <<<"SELECT * FROM todos ORDER BY id;"
echo "-- B"; sql b.db <<<"SELECT * FROM todos ORDER BY id;"

# Each side: one outbound stream to the peer (not echoing the peer's own
# changes back) and one inbound stream from it.
sql a.db <<SQL
CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(exclude_sites = '$B_SITE', max_changes = 2);
CREATE VIRTUAL TABLE from_b USING crsql_InboundStream(from = '$B_SITE');
SQL
sql b.db <<SQL
CREATE VIRTUAL TABLE to_a USING crsql_OutboundStream(exclude_sites = '$A_SITE', max_changes = 2);
CREATE VIRTUAL TABLE from_a USING crsql_InboundStream(from = '$A_SITE');
SQL

send() { # send DB OUTBOUND LINK: put every pending package on the wire
  sql "$1" <<SQL
ATTACH 'wire.db' AS wire;
INSERT INTO wire.packages (link, package, cursor) SELECT '$3', package, cursor FROM $2;
SELECT '$3' AS link, count(*) AS packages_sent FROM wire.packages WHERE link = '$3';
SQL
}
receive() { # receive DB INBOUND LINK: apply the link's packages in order, report last_applied
  sql "$1" <<SQL
ATTACH 'wire.db' AS wire;
BEGIN;
INSERT INTO $2 (package) SELECT package FROM wire.packages WHERE link = '$3' ORDER BY n;
DELETE FROM wire.packages WHERE link = '$3';
INSERT OR REPLACE INTO wire.acks VALUES ('$3', (SELECT last_applied FROM $2));
COMMIT;
SQL
}
ack() { # ack DB OUTBOUND LINK: the sender records what the receiver applied
  sql "$1" <<SQL
ATTACH 'wire.db' AS wire;
INSERT INTO $2 (last_sent) SELECT position FROM wire.acks WHERE link = '$3';
SQL
}

sync_round() {
  send a.db to_b a_to_b
  send b.db to_a b_to_a
  receive b.db from_a a_to_b
  receive a.db from_b b_to_a
  ack a.db to_b a_to_b
  ack b.db to_a b_to_a
}
echo; echo "== sync A -> B and B -> A"
sync_round
# A second round carries the position past what each side merged from the
# other (those changes are filtered out, so the packages are empty).
echo; echo "== second round: nothing new to send, positions catch up"
sync_round

echo; echo "== after sync (identical on both sides)"
echo "-- A"; sql a.db <<<"SELECT * FROM todos ORDER BY id;"
echo "-- B"; sql b.db <<<"SELECT * FROM todos ORDER BY id;"
echo; echo "== stream positions"
echo "-- A"; sql a.db <<<"SELECT name, direction, last_sent, last_applied, lag_versions, lag_changes FROM crsql_streams;"
echo "-- B"; sql b.db <<<"SELECT name, direction, last_sent, last_applied, lag_versions, lag_changes FROM crsql_streams;"

if [ "$(sql a.db <<<"SELECT group_concat(id||title||done, '|') FROM (SELECT * FROM todos ORDER BY id);")" \
   != "$(sql b.db <<<"SELECT group_concat(id||title||done, '|') FROM (SELECT * FROM todos ORDER BY id);")" ]; then
  echo "demo: the databases differ after sync" >&2
  exit 1
fi
echo; echo "demo: both databases converged (files in $DIR)"
