-- Calling crsql_as_crr on a CRR again returns 'OK' and changes nothing (spec §5.1).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
INSERT INTO foo VALUES (1, 'one');
SELECT crsql_as_crr('foo');
SELECT crsql_db_version();
SELECT 'objects', count(*) FROM sqlite_master WHERE name LIKE 'foo%';
SELECT crsql_as_crr('foo');
SELECT crsql_as_crr('main', 'foo');
SELECT 'objects', count(*) FROM sqlite_master WHERE name LIKE 'foo%';
-- No second backfill, no new version.
SELECT crsql_db_version();
SELECT cid, col_version, db_version, seq FROM crsql_changes ORDER BY db_version, seq;
