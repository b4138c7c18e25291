-- crsql_changes accepts only INSERT and SELECT (spec §7.6): UPDATE and
-- DELETE fail with the cr-sqlite message and change nothing.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one');
UPDATE crsql_changes SET val = 'two';
UPDATE crsql_changes SET db_version = 9 WHERE cid = 'b';
DELETE FROM crsql_changes;
DELETE FROM crsql_changes WHERE db_version = 1;
-- A statement that matches no row has nothing to reject.
DELETE FROM crsql_changes WHERE db_version = 99;
SELECT hex(pk), cid, val, col_version, db_version FROM crsql_changes ORDER BY db_version, seq;
SELECT * FROM foo ORDER BY a;
-- Conflict clauses do not change INSERT (it still merges).
INSERT OR REPLACE INTO crsql_changes VALUES ('foo', X'010902', 'b', 'two', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT OR IGNORE INTO crsql_changes VALUES ('foo', X'010903', 'b', 'three', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT * FROM foo ORDER BY a;
REPLACE INTO crsql_changes VALUES ('foo', X'010904', 'b', 'four', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT * FROM foo ORDER BY a;
