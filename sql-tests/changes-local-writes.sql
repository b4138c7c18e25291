-- What local writes record (spec §2.3, §3.4, §6): inserts write cells
-- without a sentinel, updates only the changed cells, deletes a tombstone,
-- re-inserts resurrect; PK-only tables use sentinels; a PK change tombstones
-- the old key and re-stamps the moved cells with the new version (§15 Q4
-- fixed).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 1, 1);
SELECT '-- insert';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
SELECT * FROM foo__crsql_clock ORDER BY key, col_name;
UPDATE foo SET b = 2 WHERE a = 1;
SELECT '-- update b';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
-- Setting a column to its current value changes no clock (a version is used).
UPDATE foo SET b = 2 WHERE a = 1;
SELECT '-- no-op update', crsql_db_version();
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
-- 1 -> 1.0 is a change of type, so a change (spec §8.5).
UPDATE foo SET c = 1.0 WHERE a = 1;
SELECT '-- int to real';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
DELETE FROM foo WHERE a = 1;
SELECT '-- delete';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
INSERT INTO foo VALUES (1, 'back', NULL);
SELECT '-- resurrect';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
UPDATE foo SET a = 2 WHERE a = 1;
SELECT '-- pk change';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
SELECT * FROM foo ORDER BY a;
-- PK-only table.
CREATE TABLE link(x NOT NULL, y NOT NULL, PRIMARY KEY (x, y));
SELECT crsql_as_crr('link');
INSERT INTO link VALUES (1, 2);
DELETE FROM link;
INSERT INTO link VALUES (1, 2);
SELECT '-- pk-only';
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes WHERE "table" = 'link' ORDER BY db_version, seq;
-- INSERT OR REPLACE on a live row bumps every column (spec §6.4, §15 Q15).
CREATE TABLE r(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('r');
INSERT INTO r VALUES (1, 'x');
INSERT OR REPLACE INTO r VALUES (1, 'x');
SELECT '-- insert or replace';
SELECT hex(pk), cid, val, col_version, db_version, cl FROM crsql_changes WHERE "table" = 'r' ORDER BY db_version, seq;
-- Upsert fires the update trigger only for the changed column.
INSERT INTO r VALUES (1, 'y') ON CONFLICT (a) DO UPDATE SET b = excluded.b;
SELECT '-- upsert';
SELECT hex(pk), cid, val, col_version, db_version, cl FROM crsql_changes WHERE "table" = 'r' ORDER BY db_version, seq;
