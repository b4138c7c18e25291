-- crsql_as_table turns a CRR back into a plain table: the clock and pks
-- tables and the triggers go, the data stays, and it returns NULL (spec §4).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one'), (2, 'two');
SELECT crsql_db_version();
SELECT crsql_as_table('foo');
SELECT type, name FROM sqlite_master WHERE name LIKE 'foo%' ORDER BY type, name;
SELECT * FROM foo ORDER BY a;
SELECT 'changes', count(*) FROM crsql_changes;
-- Writes are no longer tracked.
INSERT INTO foo VALUES (3, 'three');
SELECT 'changes', count(*) FROM crsql_changes;
-- db_version does not go backwards once the clocks are gone.
SELECT crsql_db_version();
-- Merging into it is refused now.
INSERT INTO crsql_changes VALUES ('foo', X'010904', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
-- It can become a CRR again; existing rows are backfilled.
SELECT crsql_as_crr('foo');
SELECT cid, val, db_version FROM crsql_changes ORDER BY db_version, seq;
-- On a plain table and on a missing table it is a no-op.
CREATE TABLE plain(a PRIMARY KEY NOT NULL);
SELECT crsql_as_table('plain');
SELECT crsql_as_table('missing');
SELECT name FROM sqlite_master WHERE name = 'plain';
-- Arguments.
SELECT crsql_as_table();
SELECT crsql_as_table(1);
SELECT crsql_as_table('a', 'b');
