-- crsql_compact(): deleted rows' tombstones (sentinel clock row and pks
-- row) at or below the horizon, and below the newest version, become one
-- compacted record each in crsql_tombstones; live rows, versions and
-- positions do not change; a peer that has not acknowledged holds them back.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT);
SELECT crsql_as_crr('t');
INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');
DELETE FROM t WHERE id = 1;
DELETE FROM t WHERE id = 2;
UPDATE t SET v = 'c2' WHERE id = 3;
CREATE VIRTUAL TABLE to_p USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10');
-- The peer acknowledged nothing yet: nothing may go.
SELECT crsql_compact();
INSERT INTO to_p(last_sent) VALUES ('[2,0]');
-- Row 1's delete (at [2,0]) is acknowledged, row 2's (at [3,0]) is not.
SELECT crsql_compact();
SELECT key, col_name, col_version, db_version FROM t__crsql_clock ORDER BY key, col_name;
SELECT * FROM t__crsql_pks ORDER BY 1;
SELECT tbl, hex(pk), cl FROM crsql_tombstones;
SELECT crsql_db_version();
-- A change of row 1 older than its delete is still ignored; an insert wins.
INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(1), 'v', 'stale', 5, 1, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT count(*) FROM t WHERE id = 1;
INSERT INTO t VALUES (1, 'again');
SELECT cid, val, cl FROM crsql_changes WHERE pk = crsql_pack_columns(1) ORDER BY cid;
SELECT count(*) FROM crsql_tombstones;
SELECT crsql_compact(1);
