-- crsql_automigrate adds and drops columns of a CRR inside an alter window
-- (spec §11.4): triggers follow the new columns, the dropped column's clocks
-- go, an index on a dropped column goes first, and the full schema then runs
-- (crsql_as_crr included).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, old TEXT);
CREATE INDEX IF NOT EXISTS notes_old ON notes (old);
SELECT crsql_as_crr('notes');
INSERT INTO notes VALUES (1, 'one', 'x'), (2, 'two', NULL);
SELECT crsql_db_version();
-- Add `color` (NOT NULL with a default), drop `old` and its index.
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, color TEXT NOT NULL DEFAULT ''red'');
SELECT crsql_as_crr(''notes'');
');
SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info('notes') ORDER BY cid;
SELECT name FROM sqlite_master WHERE tbl_name = 'notes' AND type IN ('index', 'trigger') ORDER BY name;
SELECT * FROM notes ORDER BY id;
-- No clock is left for `old`; existing rows' new cells hold the default, so
-- they get no clock either.
SELECT DISTINCT col_name FROM notes__crsql_clock ORDER BY 1;
SELECT crsql_db_version();
-- Writes to the new column are tracked.
UPDATE notes SET color = 'blue' WHERE id = 2;
SELECT hex(pk), cid, val, col_version FROM crsql_changes WHERE cid = 'color';
INSERT INTO notes (id, body) VALUES (3, 'three');
SELECT cid, val FROM crsql_changes WHERE pk = crsql_pack_columns(3) ORDER BY seq;
-- A plain (non-CRR) table is altered without an alter window.
CREATE TABLE plain (k INTEGER PRIMARY KEY, a TEXT);
INSERT INTO plain VALUES (1, 'a');
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, color TEXT NOT NULL DEFAULT ''red'');
SELECT crsql_as_crr(''notes'');
CREATE TABLE IF NOT EXISTS plain (k INTEGER PRIMARY KEY, b INTEGER DEFAULT 7);
');
SELECT * FROM plain;
SELECT count(*) FROM sqlite_master WHERE name LIKE 'plain__crsql%';
-- Column names are compared without case, as SQLite does: nothing to do.
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS notes (ID INTEGER PRIMARY KEY NOT NULL, Body TEXT, COLOR TEXT NOT NULL DEFAULT ''red'');
SELECT crsql_as_crr(''notes'');
CREATE TABLE IF NOT EXISTS plain (k INTEGER PRIMARY KEY, b INTEGER DEFAULT 7);
');
SELECT name FROM pragma_table_info('notes') ORDER BY cid;
