-- Dropping a column between begin and commit alter removes its clock rows
-- (compaction, spec §11.2); tombstones of deleted rows are kept.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'b1', 'c1'), (2, 'b2', 'c2'), (3, 'b3', 'c3');
DELETE FROM foo WHERE a = 3;
SELECT hex(pk), cid, val, col_version, db_version, cl FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_begin_alter('foo');
ALTER TABLE foo DROP COLUMN c;
SELECT crsql_commit_alter('foo');
SELECT hex(pk), cid, val, col_version, db_version, cl FROM crsql_changes ORDER BY db_version, seq;
SELECT DISTINCT col_name FROM foo__crsql_clock ORDER BY col_name;
-- The trigger no longer passes the dropped column.
UPDATE foo SET b = 'b1 new' WHERE a = 1;
SELECT hex(pk), cid, val, col_version, db_version FROM crsql_changes WHERE cid = 'b' ORDER BY db_version, seq;
SELECT crsql_db_version();
-- A change for the dropped column is now refused.
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'c', 'x', 9, 9, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
