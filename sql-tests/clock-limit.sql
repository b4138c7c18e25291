-- Clock values stop at 2^62 (DECISIONS D20): an incoming change above it is
-- refused; a local write that would raise a clock stored at the bound past
-- it is refused with nothing changed (crsql_internal_clock_limit is what the
-- clock SQL calls there); deleting and re-inserting the row restarts it.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v);
SELECT crsql_as_crr('t');
INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns('a'), 'v', 'big', 4611686018427387905, 1, X'0102030405060708090a0b0c0d0e0f10', 1, 0);
INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns('a'), 'v', 'big', 4611686018427387904, 1, X'0102030405060708090a0b0c0d0e0f10', 1, 0);
SELECT v FROM t;
UPDATE t SET v = 'local' WHERE id = 'a';
SELECT v FROM t;
DELETE FROM t WHERE id = 'a';
INSERT INTO t VALUES ('a', 'fresh');
SELECT cid, val, col_version, cl FROM crsql_changes ORDER BY cid;
SELECT crsql_internal_clock_limit(7);
SELECT crsql_next_db_version(4611686018427387905);
