-- Rows that exist before crsql_as_crr get clocks (spec §5.3): every non-PK
-- column at col_version 1, one new db_version, consecutive seqs; a PK-only
-- table gets sentinels.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c DEFAULT 5);
INSERT INTO foo VALUES (1, 'x', 5), (2, NULL, 6);
CREATE TABLE pko(a NOT NULL, b NOT NULL, PRIMARY KEY (a, b));
INSERT INTO pko VALUES (1, 2), (3, 4);
SELECT crsql_db_version();
SELECT crsql_as_crr('foo');
SELECT crsql_db_version();
SELECT crsql_as_crr('pko');
SELECT crsql_db_version();
SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
SELECT * FROM foo__crsql_pks ORDER BY __crsql_key;
-- Two tables converted in one transaction share one version.
CREATE TABLE x1(a PRIMARY KEY NOT NULL, b);
CREATE TABLE x2(a PRIMARY KEY NOT NULL, b);
INSERT INTO x1 VALUES (1, 1);
INSERT INTO x2 VALUES (1, 1);
BEGIN;
SELECT crsql_as_crr('x1');
SELECT crsql_as_crr('x2');
COMMIT;
SELECT "table", cid, db_version, seq FROM crsql_changes WHERE "table" IN ('x1', 'x2') ORDER BY db_version, seq;
SELECT crsql_db_version();
