-- A transaction split into parts (docs/streams.md "crsql_OutboundStream"):
-- each part is a package in the chain, staged durably by the receiver, whose
-- last_applied moves to the part's cursor, but none of the transaction's
-- changes become visible before the last part is in; then all apply at once.
.bail off
.mode list
.nullvalue NULL
.open b.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(max_changes = 2);
INSERT INTO todos VALUES (1, 'one');
INSERT INTO todos VALUES (2, 'two'), (3, 'three'), (4, 'four'), (5, 'five'), (6, 'six');
INSERT INTO todos VALUES (7, 'seven');
ATTACH 'wire.db' AS wire;
CREATE TABLE wire.packets(n INTEGER PRIMARY KEY, package, since TEXT, cursor TEXT, part TEXT);
INSERT INTO wire.packets SELECT row_number() OVER (), package, since, cursor, crsql_package_info(package) ->> '$.part' FROM to_b;
SELECT n, since, cursor, part FROM wire.packets ORDER BY n;
.open b.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE from_a USING crsql_InboundStream;
ATTACH 'wire.db' AS wire;
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 1;
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- First part: last_applied moves, nothing visible.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 2;
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- A duplicate part is a no-op; skipping a part is a gap.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 2;
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 4;
SELECT last_applied FROM from_a;
-- Second part.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 3;
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- Staged parts survive a reopen.
.open b.db
.load EXT
ATTACH 'wire.db' AS wire;
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- The last part in a transaction that rolls back: nothing of it stays.
BEGIN;
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 4;
SELECT last_applied FROM from_a;
SELECT count(*) FROM todos;
ROLLBACK;
SELECT last_applied FROM from_a;
SELECT count(*) FROM todos;
-- The last part: the whole transaction becomes visible at once.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 4;
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
SELECT db_version, count(*), hex(site_id) FROM crsql_changes GROUP BY db_version ORDER BY db_version;
-- And the next package after it.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE n = 5;
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
