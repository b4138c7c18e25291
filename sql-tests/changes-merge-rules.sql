-- INSERT INTO crsql_changes merges by the rules of spec §8: higher
-- col_version wins; equal versions fall back to the value order; causal
-- lengths decide deletes and resurrections. Merged clocks keep the sender's
-- col_version and site, take a local db_version >= the sender's, and a fresh
-- local seq (DECISIONS D4, §15 Q17).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'local');
SELECT '-- unknown row: inserted, no sentinel';
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'remote', 1, 5, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 7);
SELECT hex(pk), cid, val, col_version, db_version, cl, seq, site_id = crsql_site_id() FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_db_version();
SELECT '-- lower col_version loses';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'zzz', 0, 9, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT * FROM foo ORDER BY a;
SELECT '-- equal col_version, smaller value loses';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'aaa', 1, 9, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT * FROM foo ORDER BY a;
SELECT '-- equal col_version, greater value wins';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'zzz', 1, 3, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT * FROM foo ORDER BY a;
SELECT hex(pk), cid, val, col_version, db_version, seq FROM crsql_changes WHERE pk = X'010901' ORDER BY db_version, seq;
SELECT '-- storage class order: an integer beats any text (spec §8.5)';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 3, 1, 3, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT a, b, typeof(b) FROM foo ORDER BY a;
SELECT '-- higher col_version wins';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'v5', 5, 1, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT * FROM foo ORDER BY a;
SELECT '-- delete (even cl) beats the live row';
INSERT INTO crsql_changes VALUES ('foo', X'010901', '-1', NULL, 2, 8, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 2, 0);
SELECT * FROM foo ORDER BY a;
SELECT hex(pk), cid, col_version, db_version, cl FROM crsql_changes WHERE pk = X'010901' ORDER BY db_version, seq;
SELECT '-- a cell change with the same cl as the tombstone does nothing';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'ghost', 9, 8, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 2, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'ghost', 9, 8, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
SELECT * FROM foo ORDER BY a;
SELECT '-- resurrection (odd cl > local) brings it back';
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'alive', 1, 9, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 3, 0);
SELECT * FROM foo ORDER BY a;
SELECT hex(pk), cid, val, col_version, db_version, cl FROM crsql_changes WHERE pk = X'010901' ORDER BY db_version, seq;
SELECT '-- the stored cl of a delete is the change''s cl (spec §15 Q13 fixed)';
INSERT INTO crsql_changes VALUES ('foo', X'010902', '-1', NULL, 5, 10, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 2, 0);
SELECT hex(pk), cid, col_version, cl FROM crsql_changes WHERE pk = X'010902' ORDER BY db_version, seq;
SELECT * FROM foo ORDER BY a;
SELECT '-- re-applying a change is a no-op and uses no version';
SELECT crsql_db_version();
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'alive', 1, 9, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 3, 0);
SELECT crsql_db_version();
SELECT '-- merged seqs are fresh and unique per version';
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010905', 'b', 'p', 1, 20, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010906', 'b', 'q', 1, 20, X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a', 1, 0);
INSERT INTO foo VALUES (7, 'local in same tx');
COMMIT;
SELECT hex(pk), db_version, seq FROM crsql_changes WHERE db_version >= 20 ORDER BY db_version, seq;
SELECT '-- merges do not fire the CRR triggers';
SELECT count(*) FROM crsql_changes WHERE site_id = crsql_site_id() AND pk IN (X'010905', X'010906');
