-- crsql_db_version() is the committed version (spec §3.3): 0 on a new
-- database, +1 per transaction that writes clocks, unchanged by reads,
-- pending writes not included, rolled-back writes not counted.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT crsql_db_version();
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
SELECT crsql_db_version();
INSERT INTO foo VALUES (1, 'a');
SELECT crsql_db_version();
INSERT INTO foo VALUES (2, 'b');
SELECT crsql_db_version();
-- Several writes in one transaction share one version.
BEGIN;
INSERT INTO foo VALUES (3, 'c');
UPDATE foo SET b = 'x' WHERE a = 1;
DELETE FROM foo WHERE a = 2;
SELECT 'inside', crsql_db_version();
SELECT 'pending rows', db_version, count(*) FROM crsql_changes WHERE db_version > 2 GROUP BY db_version ORDER BY db_version;
COMMIT;
SELECT crsql_db_version();
-- A rolled-back transaction does not advance it.
BEGIN;
INSERT INTO foo VALUES (4, 'd');
ROLLBACK;
SELECT crsql_db_version();
INSERT INTO foo VALUES (5, 'e');
SELECT crsql_db_version();
-- Only writes through the triggers count; a write to a plain table does not.
CREATE TABLE plain(a);
INSERT INTO plain VALUES (1);
SELECT crsql_db_version();
-- Arguments.
SELECT crsql_db_version(1);
