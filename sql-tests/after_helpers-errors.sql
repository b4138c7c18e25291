-- The trigger helpers crsql_after_insert/update/delete check their
-- arguments (spec §4): unknown table, no arguments, wrong value count.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
SELECT crsql_after_insert('nope', 1);
SELECT crsql_after_update('nope', 1, 1);
SELECT crsql_after_delete('nope', 1);
SELECT crsql_after_insert();
SELECT crsql_after_update();
SELECT crsql_after_delete();
SELECT crsql_after_insert('foo');
SELECT crsql_after_insert('foo', 1, 2);
SELECT crsql_after_update('foo', 1, 1, 'b');
SELECT crsql_after_update('foo', 1, 1, 'b', 'c', 'b', 'c', 'extra');
SELECT crsql_after_delete('foo', 1, 2);
SELECT crsql_after_insert(1, 1);
-- Names are matched exactly (case-sensitive).
SELECT crsql_after_insert('FOO', 1);
-- Nothing was recorded by the failed calls.
SELECT 'changes', count(*) FROM crsql_changes;
SELECT crsql_db_version();
-- Called directly with the right arguments they record what the triggers
-- would (the triggers are only thin wrappers, spec §2.2). The base-table
-- writes are done with the sync bit set so that the triggers stay out.
SELECT crsql_internal_sync_bit(1);
INSERT INTO foo VALUES (9, 'b9', 'c9');
SELECT crsql_internal_sync_bit(0);
SELECT crsql_after_insert('foo', 9);
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_internal_sync_bit(1);
UPDATE foo SET c = 'c9 new' WHERE a = 9;
SELECT crsql_internal_sync_bit(0);
SELECT crsql_after_update('foo', 9, 9, 'b9', 'c9 new', 'b9', 'c9');
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_internal_sync_bit(1);
DELETE FROM foo WHERE a = 9;
SELECT crsql_internal_sync_bit(0);
SELECT crsql_after_delete('foo', 9);
SELECT hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
