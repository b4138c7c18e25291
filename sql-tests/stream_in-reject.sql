-- Packages an inbound stream refuses (docs/streams.md "crsql_InboundStream"):
-- corrupted (checksum over all bytes: flipped, missing or extra byte),
-- malformed or foreign, not a package at all, from this database itself,
-- from another sender or another stream than the one the table follows, or
-- naming a table that is not allowed. Each is refused with a clear error and
-- nothing changes. A table that is not a CRR here, or a column we do not
-- have, is no refusal: those changes wait in crsql_pending_changes
-- (docs/schema-evolution.md) and the rest applies.
-- Site ids and stream ids are fixed (stream ids through crsql_stream_state,
-- then a reopen) so that checksums in the errors are stable.
.bail off
.mode list
.nullvalue NULL
-- Database c (site 0c0c...): one stream, one change.
.open c.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c' WHERE ordinal = 0;
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream;
UPDATE crsql_stream_state SET stream_id = X'c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1' WHERE name = 'to_b';
SELECT crsql_finalize();
.open c.db
.load EXT
INSERT INTO todos VALUES (100, 'from c');
ATTACH 'wire.db' AS wire;
CREATE TABLE wire.packets(name TEXT PRIMARY KEY, package);
INSERT INTO wire.packets SELECT 'c', package FROM to_b;
-- Database a (site 0a0a...): one stream per table, and a second todos stream.
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
CREATE TABLE shape(id INTEGER PRIMARY KEY NOT NULL, x, y);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('notes');
SELECT crsql_as_crr('shape');
CREATE VIRTUAL TABLE s_todos USING crsql_OutboundStream(tables = 'todos', max_changes = 1);
CREATE VIRTUAL TABLE s_todos2 USING crsql_OutboundStream(tables = 'todos', max_changes = 1);
CREATE VIRTUAL TABLE s_notes USING crsql_OutboundStream(tables = 'notes');
CREATE VIRTUAL TABLE s_shape USING crsql_OutboundStream(tables = 'shape');
UPDATE crsql_stream_state SET stream_id = X'a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1' WHERE name = 's_todos';
UPDATE crsql_stream_state SET stream_id = X'a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2' WHERE name = 's_todos2';
UPDATE crsql_stream_state SET stream_id = X'a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3' WHERE name = 's_notes';
UPDATE crsql_stream_state SET stream_id = X'a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4' WHERE name = 's_shape';
SELECT crsql_finalize();
.open a.db
.load EXT
INSERT INTO todos VALUES (1, 'one');
INSERT INTO todos VALUES (2, 'two');
INSERT INTO notes VALUES (1, 'note');
INSERT INTO shape VALUES (1, 'x', 'y');
ATTACH 'wire.db' AS wire;
INSERT INTO wire.packets SELECT 't1', package FROM s_todos LIMIT 1;
INSERT INTO wire.packets SELECT 't2', package FROM s_todos WHERE cursor > '[1,0]' LIMIT 1;
INSERT INTO wire.packets SELECT 'other_stream', package FROM s_todos2 LIMIT 1;
INSERT INTO wire.packets SELECT 'notes', package FROM s_notes LIMIT 1;
INSERT INTO wire.packets SELECT 'shape', package FROM s_shape LIMIT 1;
SELECT name, crsql_package_info(package) ->> '$.stream', crsql_package_info(package) ->> '$.since', crsql_package_info(package) ->> '$.cursor', crsql_package_info(package) ->> '$.bytes' FROM wire.packets ORDER BY name;
-- A package produced by this database is refused by its own inbound stream.
CREATE VIRTUAL TABLE loop USING crsql_InboundStream;
INSERT INTO loop(package) SELECT package FROM wire.packets WHERE name = 't1';
SELECT last_applied FROM loop;
-- Database b (site 0b0b...): todos as on a, notes not a CRR, shape with
-- another column.
.open b.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' WHERE ordinal = 0;
SELECT crsql_finalize();
.open b.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
CREATE TABLE shape(id INTEGER PRIMARY KEY NOT NULL, x, z);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('shape');
ATTACH 'wire.db' AS wire;
CREATE VIRTUAL TABLE from_a USING crsql_InboundStream(from = '0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a');
CREATE VIRTUAL TABLE pinned USING crsql_InboundStream;
CREATE VIRTUAL TABLE only_shape USING crsql_InboundStream(tables = 'shape');
CREATE VIRTUAL TABLE from_a_notes USING crsql_InboundStream;
CREATE VIRTUAL TABLE from_a_shape USING crsql_InboundStream;
-- Not a package at all.
INSERT INTO from_a(package) VALUES (42);
INSERT INTO from_a(package) VALUES (4.2);
INSERT INTO from_a(package) VALUES (NULL);
INSERT INTO from_a(package) VALUES ('hello, this is not a package');
INSERT INTO from_a(package) VALUES (X'');
INSERT INTO from_a(package) VALUES (X'435253');
INSERT INTO from_a(package) VALUES (zeroblob(40));
INSERT INTO from_a(package) VALUES ('{"body":{}}');
-- Corrupted: one byte flipped in the middle, in the header, in the checksum;
-- the last byte missing; one byte too many; the magic bytes changed.
INSERT INTO from_a(package) SELECT substr(package, 1, 59) || (CASE WHEN substr(package, 60, 1) = X'00' THEN X'01' ELSE X'00' END) || substr(package, 61) FROM wire.packets WHERE name = 't1';
INSERT INTO from_a(package) SELECT substr(package, 1, 4) || X'07' || substr(package, 6) FROM wire.packets WHERE name = 't1';
INSERT INTO from_a(package) SELECT substr(package, 1, length(package) - 1) || X'00' FROM wire.packets WHERE name = 't1';
INSERT INTO from_a(package) SELECT substr(package, 1, length(package) - 1) FROM wire.packets WHERE name = 't1';
INSERT INTO from_a(package) SELECT package || X'00' FROM wire.packets WHERE name = 't1';
INSERT INTO from_a(package) SELECT X'58' || substr(package, 2) FROM wire.packets WHERE name = 't1';
SELECT last_applied FROM from_a;
-- From another sender than from =.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'c';
-- A table without from = is pinned by its first package: another sender
-- and another stream of the same sender are then refused.
INSERT INTO pinned(package) SELECT package FROM wire.packets WHERE name = 't1';
INSERT INTO pinned(package) SELECT package FROM wire.packets WHERE name = 'c';
INSERT INTO pinned(package) SELECT package FROM wire.packets WHERE name = 'other_stream';
SELECT last_applied FROM pinned;
-- Another stream of the right sender, once from_a follows s_todos.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 't1';
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 'other_stream';
SELECT last_applied FROM from_a;
-- A table not in tables =.
INSERT INTO only_shape(package) SELECT package FROM wire.packets WHERE name = 't1';
SELECT last_applied FROM only_shape;
-- A table that is not a CRR here: its changes wait.
INSERT INTO from_a_notes(package) SELECT package FROM wire.packets WHERE name = 'notes';
SELECT last_applied FROM from_a_notes;
-- A table whose columns differ: x applies, y waits.
INSERT INTO from_a_shape(package) SELECT package FROM wire.packets WHERE name = 'shape';
SELECT last_applied FROM from_a_shape;
SELECT "table", "column", changes, reason FROM crsql_pending_schema ORDER BY 1, 2;
-- Nothing changed but the todos package applied (twice: from_a and pinned),
-- and what b has a place for of notes and shape.
SELECT name, peer, last_applied FROM crsql_streams ORDER BY name;
SELECT id, title FROM todos ORDER BY id;
SELECT count(*) FROM notes;
SELECT count(*) FROM shape;
SELECT "table", val, hex(site_id) FROM crsql_changes ORDER BY db_version, seq;
-- The right next package still applies.
INSERT INTO from_a(package) SELECT package FROM wire.packets WHERE name = 't2';
SELECT last_applied FROM from_a;
SELECT id, title FROM todos ORDER BY id;
