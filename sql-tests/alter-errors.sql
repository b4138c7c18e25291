-- Error cases of the alter protocol (spec §11).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one');
-- commit without begin: an error, and nothing is changed.
SELECT crsql_commit_alter('foo');
SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name;
SELECT cid, val, db_version FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_db_version();
-- begin on a table that is not a CRR.
CREATE TABLE plain(a PRIMARY KEY NOT NULL);
SELECT crsql_begin_alter('plain');
SELECT crsql_begin_alter('missing');
-- Argument errors.
SELECT crsql_begin_alter();
SELECT crsql_commit_alter();
SELECT crsql_begin_alter(1);
SELECT crsql_commit_alter('a', 'b', 'c');
-- A failed commit_alter leaves the alter_crr savepoint open, so the user can
-- fix the schema and retry, or roll back (DECISIONS D9).
SELECT crsql_begin_alter('foo');
ALTER TABLE foo RENAME TO foo2;
SELECT crsql_commit_alter('foo');
ALTER TABLE foo2 RENAME TO foo;
SELECT crsql_commit_alter('foo');
SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name;
UPDATE foo SET b = 'tracked' WHERE a = 1;
SELECT cid, val, col_version FROM crsql_changes ORDER BY db_version, seq;
