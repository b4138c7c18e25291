-- crsql_db_version() never goes backwards (DECISIONS D4, spec §15 Q16),
-- even when a CRR's base table is dropped without crsql_as_table: its clock
-- table still holds the versions already handed out, and a new write must
-- not reuse one of them (a peer that synced up to 2 would never see it).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
CREATE TABLE bar(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('bar');
INSERT INTO bar VALUES (1, 'one');
INSERT INTO bar VALUES (2, 'two');
SELECT 'before drop', crsql_db_version();
DROP TABLE bar;
SELECT 'after drop', crsql_db_version();
INSERT INTO foo VALUES (1, 'new');
SELECT 'new write', crsql_db_version();
SELECT "table", hex(pk), cid, db_version FROM crsql_changes WHERE "table" = 'foo' ORDER BY db_version, seq;
