-- A malformed pk in INSERT INTO crsql_changes is an error, never a crash
-- (spec §15 Q8 fixed), and the database is unchanged: no base row, no pks
-- row, no clock row, no new db_version.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'one');
CREATE VIEW state AS SELECT
  (SELECT count(*) FROM foo) AS base,
  (SELECT count(*) FROM foo__crsql_pks) AS pks,
  (SELECT count(*) FROM foo__crsql_clock) AS clocks,
  (SELECT count(*) FROM crsql_site_id) AS sites,
  crsql_db_version() AS dbv;
SELECT * FROM state;
INSERT INTO crsql_changes VALUES ('foo', NULL, 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'0111FF', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'01', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'0106', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'0100', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'014901020304050607080900', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010B02FFFE', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', 'text', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', 1, 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
-- Wrong number of values for the table's primary key.
INSERT INTO crsql_changes VALUES ('foo', X'00', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'0209010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT * FROM state;
-- Inside a transaction the error does not abort the transaction.
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'good', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'0111FF', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
COMMIT;
SELECT * FROM state;
SELECT * FROM foo ORDER BY a;
