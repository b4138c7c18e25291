-- crsql_begin_alter / crsql_commit_alter around ALTER TABLE ADD COLUMN
-- (spec §11): the triggers are re-created for the new column; existing rows
-- whose new cell holds the default get no clock; the backfill takes a new
-- db_version (DECISIONS D4, spec §15 Q22 fixed).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one');
INSERT INTO foo VALUES (2, 'two');
SELECT crsql_db_version();
SELECT crsql_begin_alter('foo');
-- The CRR triggers are gone while the alteration runs.
SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name;
ALTER TABLE foo ADD COLUMN c TEXT DEFAULT 'dflt';
UPDATE foo SET c = 'set' WHERE a = 2;
SELECT crsql_commit_alter('foo');
SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name;
SELECT crsql_db_version();
SELECT hex(pk), cid, val, col_version, db_version FROM crsql_changes ORDER BY db_version, seq;
-- Writes to the new column are tracked.
UPDATE foo SET c = 'later' WHERE a = 1;
SELECT hex(pk), cid, val, col_version, db_version FROM crsql_changes WHERE cid = 'c' ORDER BY db_version, seq;
-- And merges can target it.
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'c', 'merged', 5, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT * FROM foo ORDER BY a;
-- The schema argument is accepted and ignored.
SELECT crsql_begin_alter('main', 'foo');
ALTER TABLE foo ADD COLUMN d INTEGER;
SELECT crsql_commit_alter('main', 'foo');
INSERT INTO foo VALUES (3, 'three', 'c3', 33);
SELECT cid, val FROM crsql_changes WHERE pk = crsql_pack_columns(3) ORDER BY seq;
