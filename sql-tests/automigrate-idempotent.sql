-- Running crsql_automigrate again with the schema already in place changes
-- nothing: no DDL, no new db_version, no clock.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY NOT NULL, title TEXT, qty INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_title ON items (title);
SELECT crsql_as_crr(''items'');
');
INSERT INTO items VALUES ('a', 'apple', 3), ('b', 'bread', 1);
SELECT crsql_db_version();
CREATE TEMP TABLE before AS SELECT type, name, sql FROM sqlite_master;
CREATE TEMP TABLE clocks AS SELECT * FROM items__crsql_clock;
PRAGMA schema_version;
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY NOT NULL, title TEXT, qty INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_title ON items (title);
SELECT crsql_as_crr(''items'');
');
SELECT crsql_automigrate('
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY NOT NULL, title TEXT, qty INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_title ON items (title);
SELECT crsql_as_crr(''items'');
');
PRAGMA schema_version;
SELECT crsql_db_version();
SELECT count(*) FROM (SELECT type, name, sql FROM sqlite_master EXCEPT SELECT * FROM temp.before);
SELECT count(*) FROM (SELECT * FROM items__crsql_clock EXCEPT SELECT * FROM temp.clocks);
