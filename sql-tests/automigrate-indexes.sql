-- crsql_automigrate and indexes: new ones are created by the schema, gone
-- ones are dropped, and one whose definition changed (its columns, its
-- uniqueness, its WHERE) is dropped and created again. cr-sqlite never
-- detects a change of an index's columns (spec §15 Q18).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b TEXT, c TEXT);
CREATE INDEX t_a ON t (a);
CREATE INDEX t_gone ON t (c);
SELECT crsql_as_crr('t');
CREATE TABLE p (k INTEGER PRIMARY KEY, x, y);
CREATE INDEX p_x ON p (x);
CREATE INDEX p_part ON p (y) WHERE y > 0;
-- t_a now covers (a, b) [Q18]; t_gone is gone; t_new is new; p_x becomes
-- UNIQUE; p_part gets another WHERE.
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b TEXT, c TEXT);
CREATE INDEX IF NOT EXISTS t_a ON t (a, b);
CREATE INDEX IF NOT EXISTS t_new ON t (c DESC);
SELECT crsql_as_crr(''t'');
CREATE TABLE IF NOT EXISTS p (k INTEGER PRIMARY KEY, x, y);
CREATE UNIQUE INDEX IF NOT EXISTS p_x ON p (x);
CREATE INDEX IF NOT EXISTS p_part ON p (y) WHERE y > 10;
');
SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name;
SELECT name, "unique", partial FROM pragma_index_list('p') ORDER BY name;
SELECT name FROM pragma_index_info('t_a') ORDER BY seqno;
-- Changing an index is not a data change: no new db_version.
SELECT crsql_db_version();
-- A UNIQUE index on a CRR is refused, as crsql_as_crr refuses it, and
-- nothing changes.
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b TEXT, c TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS t_a ON t (a, b);
SELECT crsql_as_crr(''t'');
CREATE TABLE IF NOT EXISTS p (k INTEGER PRIMARY KEY, x, y);
');
SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name;
SELECT name, "unique" FROM pragma_index_list('t') ORDER BY name;
