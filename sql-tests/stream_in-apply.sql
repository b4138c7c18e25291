-- Moving packages from database a to database b (docs/streams.md
-- "crsql_InboundStream"): a package starting at last_applied is applied and
-- last_applied becomes its cursor; a package already covered is a no-op; an
-- overlapping one is applied; one that starts after last_applied is a gap,
-- refused with the expected and received start positions, changing nothing;
-- applying is part of the caller's transaction; merged changes keep their
-- origin site id, so b's stream back to a (exclude_sites = a) echoes nothing.
-- The packages travel through a plain table in the attached file wire.db.
.bail off
.mode list
.nullvalue NULL
-- Database b, site 0b0b...
.open b.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' WHERE ordinal = 0;
SELECT crsql_finalize();
-- Database a, site 0a0a...: 4 transactions of one change each.
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(max_changes = 2, exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
INSERT INTO todos VALUES (1, 'one');
INSERT INTO todos VALUES (2, 'two');
INSERT INTO todos VALUES (3, 'three');
INSERT INTO todos VALUES (4, 'four');
ATTACH 'wire.db' AS wire;
CREATE TABLE wire.packets(name TEXT PRIMARY KEY, package, since TEXT, cursor TEXT);
-- p1 = [0,0]..[2,0], p2 = [2,0]..[4,0]; q overlaps both: [1,0]..[3,0].
INSERT INTO wire.packets SELECT 'p' || (row_number() OVER ()), package, since, cursor FROM to_b;
INSERT INTO wire.packets SELECT 'q', package, since, cursor FROM to_b WHERE cursor > '[1,0]' LIMIT 1;
SELECT name, since, cursor FROM wire.packets ORDER BY name;
-- Switch to b.
.open b.db
.load EXT
SELECT hex(crsql_site_id());
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE from_a USING crsql_InboundStream(from = '0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a');
CREATE VIRTUAL TABLE from_a_unpinned USING crsql_InboundStream;
ATTACH 'wire.db' AS wire;
SELECT last_applied FROM from_a;
-- A gap: p2 starts at [2,0], last_applied is [0,0]. Nothing changes.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'p2';
SELECT last_applied FROM from_a;
SELECT count(*) FROM todos;
-- A package applied in a transaction that rolls back leaves no trace.
BEGIN;
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'p1';
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
ROLLBACK;
SELECT last_applied FROM from_a;
SELECT count(*) FROM todos;
-- p1 applies.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'p1';
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- A duplicate is a no-op, not an error.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'p1';
SELECT last_applied FROM from_a;
-- q overlaps ([1,0]..[3,0] with last_applied [2,0]): applied.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'q';
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- p2 overlaps too ([2,0]..[4,0] with last_applied [3,0]): applied.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'p2';
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
-- Everything again, in one statement: all covered, all no-ops.
INSERT INTO from_a(package) SELECT package FROM wire.packets ORDER BY name;
SELECT last_applied FROM from_a;
-- The merged changes keep their origin site id and get local db_versions.
SELECT hex(pk), cid, val, db_version, hex(site_id) FROM crsql_changes ORDER BY db_version, seq;
-- A stream without from = is pinned to the sender of its first package.
SELECT last_applied, sender FROM from_a_unpinned;
INSERT INTO from_a_unpinned(package) SELECT package FROM wire.packets WHERE name = 'p1';
SELECT last_applied, sender FROM from_a_unpinned;
SELECT name, direction, peer, last_applied FROM crsql_streams ORDER BY name;
-- b's stream back to a, excluding a's changes, carries nothing of a's;
-- only b's own new change.
CREATE VIRTUAL TABLE to_a USING crsql_OutboundStream(exclude_sites = '0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a');
SELECT cursor, since, changes FROM to_a;
UPDATE todos SET title = 'TWO' WHERE id = 2;
SELECT hex(c.pk), c.val, hex(c.site_id) FROM to_a AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
INSERT INTO wire.packets SELECT 'back', package, since, cursor FROM to_a WHERE changes > 0;
-- last_applied survives reopening.
.open b.db
.load EXT
SELECT name, last_applied FROM crsql_streams WHERE direction = 'inbound' ORDER BY name;
-- Back to a: apply b's change; a's stream to b then has nothing of b's.
.open a.db
.load EXT
ATTACH 'wire.db' AS wire;
CREATE VIRTUAL TABLE from_b USING crsql_InboundStream(from = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
INSERT INTO from_b(package) SELECT package FROM wire.packets WHERE name = 'back';
SELECT id, title FROM todos ORDER BY id;
INSERT INTO to_b(last_sent) VALUES ('[4,0]');
SELECT cursor, since, changes FROM to_b;
SELECT name, direction, peer, last_sent, last_applied, lag_versions FROM crsql_streams ORDER BY name;
