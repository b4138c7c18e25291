-- SELECT from crsql_changes: one row per clock row of every CRR, with the
-- nine columns of spec §7.1; without ORDER BY rows come in (db_version, seq)
-- order across tables (spec §7.2, §7.4).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
CREATE TABLE bar(x NOT NULL, y NOT NULL, z, PRIMARY KEY (x, y));
SELECT crsql_as_crr('foo');
SELECT crsql_as_crr('bar');
SELECT 'empty', count(*) FROM crsql_changes;
SELECT name, type FROM pragma_table_info('crsql_changes') ORDER BY cid;
INSERT INTO foo VALUES (1, 'b1', 'c1');
INSERT INTO bar VALUES (1, 'one', 'z1');
BEGIN;
INSERT INTO bar VALUES (2, 'two', 'z2');
INSERT INTO foo VALUES (2, 'b2', NULL);
UPDATE foo SET c = 'c1 new' WHERE a = 1;
COMMIT;
DELETE FROM bar WHERE x = 1;
-- No ORDER BY: (db_version, seq) order.
SELECT "table", hex(pk), cid, val, col_version, db_version, site_id = crsql_site_id(), cl, seq FROM crsql_changes;
-- SELECT * gives the same nine columns.
SELECT count(*) FROM (SELECT * FROM crsql_changes);
SELECT typeof("table"), typeof(pk), typeof(cid), typeof(col_version), typeof(db_version), typeof(site_id), typeof(cl), typeof(seq) FROM crsql_changes ORDER BY db_version, seq LIMIT 1;
-- LIMIT / OFFSET.
SELECT "table", cid, db_version, seq FROM crsql_changes LIMIT 2 OFFSET 2;
-- Filters that SQLite applies itself.
SELECT "table", cid, val FROM crsql_changes WHERE "table" = 'bar' ORDER BY db_version, seq;
SELECT "table", cid, val FROM crsql_changes WHERE pk = crsql_pack_columns(2) ORDER BY db_version, seq;
SELECT "table", cid, val FROM crsql_changes WHERE cid = 'c' AND val IS NOT NULL ORDER BY db_version, seq;
SELECT "table", cid, val FROM crsql_changes WHERE cl = 2 ORDER BY db_version, seq;
-- Uncommitted writes are visible with the pending version.
BEGIN;
INSERT INTO foo VALUES (3, 'b3', 'c3');
SELECT "table", hex(pk), cid, db_version FROM crsql_changes WHERE db_version > 3 ORDER BY db_version, seq;
ROLLBACK;
SELECT 'after rollback', count(*) FROM crsql_changes WHERE db_version > 3;
