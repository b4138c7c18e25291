-- crsql_next_db_version([floor]) hands out the version the current
-- transaction will commit at (spec §3.3): committed + 1, at least any
-- pending version and the floor; it becomes pending.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'a');
SELECT crsql_db_version();
BEGIN;
SELECT crsql_next_db_version();
SELECT crsql_next_db_version();
INSERT INTO foo VALUES (2, 'b');
SELECT crsql_next_db_version(10);
SELECT crsql_next_db_version(3);
SELECT crsql_next_db_version(NULL);
INSERT INTO foo VALUES (3, 'c');
COMMIT;
SELECT crsql_db_version();
SELECT hex(pk), db_version FROM crsql_changes ORDER BY db_version, seq;
-- Outside a transaction (autocommit), each call commits its version, and
-- the handed-out version is never handed out again (spec §15 Q14/Q16).
SELECT crsql_next_db_version();
SELECT crsql_db_version();
SELECT crsql_next_db_version();
-- Errors.
SELECT crsql_next_db_version('5');
SELECT crsql_next_db_version(1.5);
SELECT crsql_next_db_version(1, 2);
SELECT crsql_db_version();
