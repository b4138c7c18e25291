-- Invalid changes are refused with a message and change nothing (spec
-- §7.6, §8.4, §15 Q21 fixed).
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
-- Unknown table (names are case-sensitive).
INSERT INTO crsql_changes VALUES ('nope', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('FOO', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES (NULL, X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
-- Unknown column, and a primary-key column as cid.
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'nope', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'a', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', NULL, 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
-- Names longer than 2048 bytes, site ids longer than 16 bytes.
INSERT INTO crsql_changes VALUES (replace(hex(zeroblob(1025)), '00', 'tt'), X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', replace(hex(zeroblob(1025)), '00', 'cc'), 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1, 'site', 1, 0);
-- A missing or zero cl (spec §15 Q21: cr-sqlite dropped it silently).
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', NULL, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 0, 0);
-- Non-integer clocks.
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 'one', 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1.5, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'x', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, X'00');
SELECT * FROM state;
-- A STRICT type mismatch in the base table is SQLite's own error.
CREATE TABLE s(a INTEGER PRIMARY KEY NOT NULL, n INTEGER) STRICT;
SELECT crsql_as_crr('s');
INSERT INTO crsql_changes VALUES ('s', X'010901', 'n', 'not a number', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT 's', count(*) FROM s;
SELECT 's clocks', count(*) FROM s__crsql_clock;
SELECT * FROM state;
