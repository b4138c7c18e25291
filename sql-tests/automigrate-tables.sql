-- crsql_automigrate adds tables (the schema creates them and makes them
-- CRRs) and drops the tables the schema no longer has: a CRR with its clock
-- tables. Internal tables, and virtual tables such as the streams, are
-- never dropped.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE a (id INTEGER PRIMARY KEY NOT NULL, v TEXT);
SELECT crsql_as_crr('a');
CREATE TABLE scratch (x);
INSERT INTO a VALUES (1, 'one');
CREATE VIRTUAL TABLE to_peer USING crsql_OutboundStream();
SELECT crsql_db_version();
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS a (id INTEGER PRIMARY KEY NOT NULL, v TEXT);
SELECT crsql_as_crr(''a'');
CREATE TABLE IF NOT EXISTS b (id TEXT PRIMARY KEY NOT NULL, n INTEGER DEFAULT 0);
SELECT crsql_as_crr(''b'');
');
SELECT type, name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'crsql%' ORDER BY name;
INSERT INTO b VALUES ('k', 5);
SELECT "table", cid, val FROM crsql_changes ORDER BY db_version, seq;
-- Dropping CRR `a`: its clock tables go with it, and crsql_db_version()
-- does not go back.
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS b (id TEXT PRIMARY KEY NOT NULL, n INTEGER DEFAULT 0);
SELECT crsql_as_crr(''b'');
');
SELECT type, name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'crsql%' ORDER BY name;
SELECT crsql_db_version();
SELECT "table", cid, val FROM crsql_changes ORDER BY db_version, seq;
-- The stream kept working.
SELECT count(*) FROM to_peer;
-- A line holding both a CREATE TABLE and crsql_as_crr keeps its table (cr-sqlite
-- strips the whole line from the target, so it would drop `b`).
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS b (id TEXT PRIMARY KEY NOT NULL, n INTEGER DEFAULT 0); SELECT crsql_as_crr(''b'');');
SELECT name FROM sqlite_master WHERE name = 'b';
