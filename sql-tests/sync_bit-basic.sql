-- crsql_internal_sync_bit() reads and crsql_internal_sync_bit(n) sets the
-- connection's sync bit (spec §4). The CRR triggers fire only while it is 0,
-- and merges set it to 1 around their writes, which user triggers can test.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT crsql_internal_sync_bit();
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
SELECT crsql_internal_sync_bit(1);
SELECT crsql_internal_sync_bit();
INSERT INTO foo VALUES (1, 'untracked');
SELECT 'changes while set', count(*) FROM crsql_changes;
SELECT crsql_internal_sync_bit(0);
INSERT INTO foo VALUES (2, 'tracked');
SELECT hex(pk), cid, val FROM crsql_changes ORDER BY db_version, seq;
-- A user trigger sees 1 during a merge and 0 for a local write.
CREATE TABLE log(id INTEGER PRIMARY KEY, a, bit);
CREATE TRIGGER foo_log AFTER INSERT ON foo BEGIN INSERT INTO log (a, bit) VALUES (NEW.a, crsql_internal_sync_bit()); END;
INSERT INTO foo VALUES (3, 'local');
INSERT INTO crsql_changes VALUES ('foo', X'010904', 'b', 'merged', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT a, bit FROM log ORDER BY id;
SELECT 'after merge', crsql_internal_sync_bit();
-- Errors.
SELECT crsql_internal_sync_bit('1');
SELECT crsql_internal_sync_bit(1, 2);
SELECT crsql_internal_sync_bit();
