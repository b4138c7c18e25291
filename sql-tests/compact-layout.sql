-- The compact CRR layout (docs/compact-layout.md): crr-layout = 'compact'
-- makes crsql_as_crr create a row clock table (one row per key: causal
-- length, the run's version, site and last seq, and its per-column versions
-- packed in `vers`) and a cells table for clocks outside the run. The
-- changes are those of the default layout. Unsupported operations refuse.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT crsql_config_set('crr-layout', 'compact');
SELECT crsql_config_get('crr-layout');
CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a, b, c);
SELECT crsql_as_crr('t');
SELECT sql FROM sqlite_master WHERE name LIKE 't\_\_crsql\_%' ESCAPE '\' ORDER BY name;
-- An insert: one row clock, no cell (its run: slots 0..2 at seqs 0..2).
INSERT INTO t VALUES (1, 'x', 2, 3.5), (2, 'y', NULL, x'00');
SELECT id, cl, db_version, site_id, seq, quote(vers), crsql_internal_run_seq(vers, seq, 0),
       crsql_internal_run_version(vers, 1), crsql_internal_run_version(vers, -1),
       crsql_internal_run_count(vers) FROM t__crsql_rows;
SELECT count(*) FROM t__crsql_cells;
-- An update of one column moves its clock to the cells table.
UPDATE t SET b = 9 WHERE id = 1;
SELECT id, quote(vers) FROM t__crsql_rows WHERE id = 1;
SELECT id, col_name, col_version, db_version, seq FROM t__crsql_cells;
-- A delete: the sentinel alone, in the run; the cells go.
DELETE FROM t WHERE id = 1;
SELECT id, cl, db_version, seq, quote(vers) FROM t__crsql_rows WHERE id = 1;
SELECT count(*) FROM t__crsql_cells;
SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes;
-- Refused until built.
SELECT crsql_internal_compact_unsupported('t', 'something');
SELECT crsql_compact_after_insert('nope', 1);
SELECT crsql_compact_after_update('t', 1);
SELECT crsql_compact_after_delete('t');
SELECT crsql_internal_run_version(x'0000', 0);
SELECT crsql_config_set('crr-layout', 1);
-- crsql_convert_layout keeps every clock at its position, both ways.
SELECT crsql_convert_layout('t', 'crsqlite');
SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 't\_\_%' ESCAPE '\' ORDER BY name;
SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes;
SELECT crsql_convert_layout('t', 'compact');
SELECT id, cl, db_version, seq, quote(vers) FROM t__crsql_rows;
SELECT crsql_convert_layout('t', 'sideways');
-- `vers` is an INTEGER (bit 0: the sentinel, bit 1 + i: slot i) while every
-- version in the run is 1, else a BLOB; an update of every column makes a
-- new run at version 2.
UPDATE t SET a = 'z', b = 'z', c = 'z' WHERE id = 2;
SELECT id, seq, quote(vers), crsql_internal_run_version(vers, 1), crsql_internal_run_count(vers) FROM t__crsql_rows WHERE id = 2;
SELECT cid, col_version, seq FROM crsql_changes WHERE pk = crsql_pack_columns(2);
-- Clocks merged at consecutive seqs whatever their slots (a and c of a
-- remote row, b elsewhere) stay one run, each at its own seq: a BLOB whose
-- first byte is 2 (then per clock in seq order (slot + 1) << 2).
BEGIN;
INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(3), 'a', 'p', 1, 7, x'11111111111111111111111111111111', 1, 0);
INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(3), 'c', 'q', 1, 7, x'11111111111111111111111111111111', 1, 2);
COMMIT;
SELECT id, seq, quote(vers), crsql_internal_run_seq(vers, seq, 0), crsql_internal_run_seq(vers, seq, 2),
       crsql_internal_run_seq(vers, seq, 1), crsql_internal_run_count(vers) FROM t__crsql_rows WHERE id = 3;
SELECT count(*) FROM t__crsql_cells WHERE id = 3;
SELECT cid, col_version, db_version, seq FROM crsql_changes WHERE pk = crsql_pack_columns(3);
SELECT crsql_internal_run_seq(x'0204', 9, 0);
SELECT crsql_internal_run_seq(x'020405', 9, 0);
-- Alterations run on the cr-sqlite layout and convert back.
SELECT crsql_begin_alter('t');
ALTER TABLE t ADD COLUMN d DEFAULT 1;
SELECT crsql_commit_alter('t');
SELECT col_name FROM crsql_compact_slots WHERE tbl = 't' ORDER BY slot;
-- crsql_as_table drops the compact tables.
SELECT crsql_as_table('t');
SELECT name FROM sqlite_master WHERE name LIKE 't\_\_%' ESCAPE '\';
