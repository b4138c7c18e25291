-- crsql_commit_alter re-creates the CRR as crsql_as_crr does (spec §11.2
-- step 4 runs §5.1, whose step 2 is the precondition check): a schema that
-- breaks a CRR precondition during the alteration is refused, and the
-- alter_crr savepoint stays open so it can be fixed and committed
-- (DECISIONS D9).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one');
SELECT crsql_begin_alter('foo');
CREATE UNIQUE INDEX foo_b ON foo(b);
SELECT crsql_commit_alter('foo');
DROP INDEX foo_b;
SELECT crsql_commit_alter('foo');
SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name;
UPDATE foo SET b = 'tracked' WHERE a = 1;
SELECT cid, val, col_version FROM crsql_changes ORDER BY db_version, seq;
-- A NOT NULL column without a default, added during the alteration.
SELECT crsql_begin_alter('foo');
CREATE TABLE tmp AS SELECT * FROM foo;
DROP TABLE foo;
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c NOT NULL);
SELECT crsql_commit_alter('foo');
ROLLBACK;
SELECT name FROM sqlite_master WHERE name LIKE 'foo%' OR name = 'tmp' ORDER BY name;
SELECT sql FROM sqlite_master WHERE name = 'foo';
