-- crsql_rows_impacted() counts the winning merge operations of the current
-- transaction (spec §7.7): a winning cell 1, a delete 1, a resurrection by a
-- cell change 2, losing and repeated changes 0; reset on COMMIT.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
SELECT crsql_rows_impacted();
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT 'one cell', crsql_rows_impacted();
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'c', 'y', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 1);
SELECT 'two cells', crsql_rows_impacted();
-- The same change again loses: no count.
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'c', 'y', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 1);
SELECT 'repeat', crsql_rows_impacted();
-- A lower col_version loses.
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'c', 'z', 0, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 1);
SELECT 'loser', crsql_rows_impacted();
COMMIT;
SELECT 'after commit', crsql_rows_impacted();
-- In autocommit mode the counter is back at 0 right after the INSERT.
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT 'autocommit', crsql_rows_impacted();
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010901', '-1', NULL, 2, 2, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 2, 0);
SELECT 'delete', crsql_rows_impacted();
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'back', 1, 3, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 3, 0);
SELECT 'resurrect by cell', crsql_rows_impacted();
COMMIT;
SELECT * FROM foo ORDER BY a;
SELECT crsql_rows_impacted(1);
