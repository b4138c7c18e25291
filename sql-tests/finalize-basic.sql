-- crsql_finalize() finalizes the cached statements and returns 'finalized';
-- the extension keeps working afterwards (spec §1, §4).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'a');
SELECT crsql_finalize();
SELECT crsql_finalize();
INSERT INTO foo VALUES (2, 'b');
UPDATE foo SET b = 'c' WHERE a = 1;
INSERT INTO crsql_changes VALUES ('foo', X'010903', 'b', 'm', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT hex(pk), cid, val, col_version, db_version FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_db_version();
-- Any number of arguments is accepted and ignored.
SELECT crsql_finalize(1, 2);
-- Closing without crsql_finalize() works (DECISIONS D6): .open closes the
-- connection, and the shell would print an error if sqlite3_close failed.
.open f.db
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'a');
UPDATE foo SET b = 'b';
SELECT count(*) FROM crsql_changes;
.open f.db
.load EXT
SELECT * FROM foo ORDER BY a;
SELECT hex(pk), cid, val FROM crsql_changes ORDER BY db_version, seq;
