-- crsql_db_version() never goes backwards after a reopen, including versions
-- handed out by crsql_next_db_version() without any clock row (spec §15 Q16
-- fixed, DECISIONS D4).
.bail off
.mode list
.nullvalue NULL
.load EXT
.open v.db
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'a');
SELECT crsql_db_version();
BEGIN;
SELECT crsql_next_db_version(10);
COMMIT;
SELECT crsql_db_version();
.open v.db
.load EXT
SELECT 'reopened', crsql_db_version();
INSERT INTO foo VALUES (2, 'b');
SELECT crsql_db_version();
SELECT hex(pk), db_version FROM crsql_changes ORDER BY db_version, seq;
-- A no-op UPDATE uses up a version (spec §3.3); it survives a reopen too.
UPDATE foo SET b = 'b' WHERE a = 2;
SELECT crsql_db_version();
.open v.db
.load EXT
SELECT 'reopened', crsql_db_version();
-- Deleting every clock row (crsql_as_table) does not move it back either.
SELECT crsql_as_table('foo');
.open v.db
.load EXT
SELECT 'reopened', crsql_db_version();
