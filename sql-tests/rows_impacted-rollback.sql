-- crsql_rows_impacted() is reset by ROLLBACK, so the next transaction starts
-- from 0 (spec §15 Q5 fixed).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT 'before rollback', crsql_rows_impacted();
ROLLBACK;
SELECT 'after rollback', crsql_rows_impacted();
SELECT 'rows', count(*) FROM foo;
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'y', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT 'next transaction', crsql_rows_impacted();
COMMIT;
SELECT * FROM foo ORDER BY a;
