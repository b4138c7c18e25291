-- crsql_get_seq() returns the connection's seq counter and
-- crsql_increment_and_get_seq() returns it and adds 1 (spec §3.2, §4). Each
-- local clock write takes one seq; the counter is reset at commit/rollback.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT crsql_get_seq();
CREATE TABLE plain(x);
BEGIN;
SELECT crsql_increment_and_get_seq();
SELECT crsql_increment_and_get_seq();
SELECT crsql_get_seq();
INSERT INTO plain VALUES (1);
COMMIT;
SELECT 'after commit', crsql_get_seq();
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c, d);
SELECT crsql_as_crr('foo');
-- Three rows of three columns in one transaction: seqs 0..8.
BEGIN;
INSERT INTO foo VALUES (1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3);
SELECT 'in transaction', crsql_get_seq();
COMMIT;
SELECT hex(pk), cid, db_version, seq FROM crsql_changes ORDER BY db_version, seq;
-- Two columns of three rows: 0..5; three deletes: 0..2.
UPDATE foo SET b = b + 10, c = c + 10;
SELECT cid, db_version, seq FROM crsql_changes WHERE db_version = 2 ORDER BY seq;
DELETE FROM foo;
SELECT cid, db_version, seq FROM crsql_changes WHERE db_version = 3 ORDER BY seq;
-- Re-insert after delete: sentinel seq 0, columns 1..3.
INSERT INTO foo VALUES (1, 0, 0, 0);
SELECT cid, col_version, db_version, cl, seq FROM crsql_changes WHERE db_version = 4 ORDER BY seq;
-- Rollback resets the counter.
BEGIN;
SELECT crsql_increment_and_get_seq();
ROLLBACK;
SELECT 'after rollback', crsql_get_seq();
SELECT crsql_get_seq(1);
SELECT crsql_increment_and_get_seq(1);
