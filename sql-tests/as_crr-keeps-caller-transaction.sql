-- A failing crsql_as_crr rolls back only its own work: the caller's open
-- transaction and earlier writes survive (spec §15 Q9 fixed).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t(a PRIMARY KEY NOT NULL, b);
CREATE TABLE bad(a, b);
BEGIN;
INSERT INTO t VALUES (1, 'kept');
SELECT crsql_as_crr('bad');
SELECT * FROM t ORDER BY a;
SELECT crsql_as_crr('t');
-- COMMIT succeeds: the transaction is still open.
COMMIT;
SELECT * FROM t ORDER BY a;
SELECT cid, val, db_version FROM crsql_changes ORDER BY db_version, seq;
-- Inside a user savepoint as well.
SAVEPOINT mine;
CREATE TABLE bad2(a PRIMARY KEY NOT NULL, b UNIQUE);
SELECT crsql_as_crr('bad2');
INSERT INTO t VALUES (2, 'also kept');
RELEASE mine;
SELECT * FROM t ORDER BY a;
-- The write before the failure really belongs to the caller's transaction:
-- rolling it back removes it.
BEGIN;
INSERT INTO t VALUES (3, 'rolled back');
SELECT crsql_as_crr('bad');
ROLLBACK;
SELECT * FROM t ORDER BY a;
SELECT cid, val, db_version FROM crsql_changes ORDER BY db_version, seq;
