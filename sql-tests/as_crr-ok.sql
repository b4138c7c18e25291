-- crsql_as_crr turns a table into a CRR: returns 'OK' and creates the clock
-- and pks tables, their indexes and the three triggers (spec §2.2, §5.1).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
SELECT type, name, tbl_name FROM sqlite_master WHERE name LIKE 'foo%' ORDER BY type, name;
-- The schema argument is accepted and ignored.
CREATE TABLE bar(id INTEGER PRIMARY KEY NOT NULL, v TEXT);
SELECT crsql_as_crr('main', 'bar');
SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'bar' ORDER BY name;
-- Tracking works: one insert gives one clock row per non-PK column.
INSERT INTO foo VALUES (1, 'x', 'y');
SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
-- Accepted table shapes (spec §5.2): WITHOUT ROWID, CHECK, plain indexes,
-- generated columns, composite keys, PK-only tables.
CREATE TABLE w(a NOT NULL, b NOT NULL, c CHECK (c > 0), PRIMARY KEY (b, a)) WITHOUT ROWID;
CREATE INDEX w_c ON w(c);
SELECT crsql_as_crr('w');
CREATE TABLE g(id INTEGER PRIMARY KEY NOT NULL, x, y AS (x * 2));
SELECT crsql_as_crr('g');
CREATE TABLE pkonly(a NOT NULL, b NOT NULL, PRIMARY KEY (a, b));
SELECT crsql_as_crr('pkonly');
-- PK columns are listed in PRIMARY KEY order, not declaration order.
SELECT name FROM pragma_table_info('w__crsql_pks') ORDER BY cid;
-- Generated columns are not tracked.
INSERT INTO g (id, x) VALUES (1, 21);
SELECT cid, val FROM crsql_changes WHERE "table" = 'g' ORDER BY seq;
