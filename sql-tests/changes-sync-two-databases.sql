-- Two databases converge by exchanging crsql_changes rows both ways (spec
-- §7.8). Each side's changes are copied into a plain table, the other side
-- attaches that file and inserts them into its own crsql_changes.
.bail off
.mode list
.nullvalue NULL
.load EXT
.open a.db
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'a1', 'a1'), (2, 'a2', 'a2');
UPDATE foo SET b = 'a1 again' WHERE a = 1;
CREATE TABLE outbox AS SELECT "table", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes WHERE db_version > 0 ORDER BY db_version, seq;
CREATE TABLE meta(k PRIMARY KEY, v);
INSERT INTO meta VALUES ('site', crsql_site_id());
.open b.db
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (2, 'b2', 'b2'), (3, 'b3', 'b3');
DELETE FROM foo WHERE a = 3;
ATTACH 'a.db' AS a;
-- Pull from A.
BEGIN;
INSERT INTO crsql_changes SELECT * FROM a.outbox ORDER BY db_version, seq;
SELECT 'b impacted', crsql_rows_impacted();
COMMIT;
SELECT 'b', * FROM foo ORDER BY a;
-- B's outbox for A: everything A has not authored.
CREATE TABLE outbox AS SELECT "table", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes WHERE db_version > 0 AND site_id IS NOT (SELECT v FROM a.meta WHERE k = 'site') ORDER BY db_version, seq;
SELECT 'b sends', count(*) FROM outbox;
DETACH a;
.open a.db
.load EXT
ATTACH 'b.db' AS b;
INSERT INTO crsql_changes SELECT * FROM b.outbox ORDER BY db_version, seq;
SELECT 'a', * FROM foo ORDER BY a;
-- Both sides now hold the same rows and the same clocks (apart from the
-- local db_version and seq).
SELECT 'same rows', (SELECT group_concat(a || '=' || b || '/' || c, ';') FROM (SELECT * FROM main.foo ORDER BY a)) = (SELECT group_concat(a || '=' || b || '/' || c, ';') FROM (SELECT * FROM b.foo ORDER BY a));
SELECT 'a clocks', hex(pk), cid, col_version, cl FROM crsql_changes ORDER BY pk, cid;
