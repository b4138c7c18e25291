-- ALTER TABLE ADD COLUMN on a CRR without begin/commit leaves the old
-- triggers in place: a later UPDATE fails with "expected N values, got M"
-- (spec §11.3); INSERT keeps working; crsql_as_crr does not repair it, a
-- begin/commit pair does.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one');
ALTER TABLE foo ADD COLUMN c;
INSERT INTO foo VALUES (2, 'two', 'c2');
UPDATE foo SET b = 'uno' WHERE a = 1;
SELECT crsql_as_crr('foo');
UPDATE foo SET b = 'uno' WHERE a = 1;
SELECT crsql_begin_alter('foo');
SELECT crsql_commit_alter('foo');
UPDATE foo SET b = 'uno' WHERE a = 1;
SELECT * FROM foo ORDER BY a;
SELECT hex(pk), cid, val, col_version FROM crsql_changes ORDER BY db_version, seq;
