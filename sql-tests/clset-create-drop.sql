-- CREATE VIRTUAL TABLE foo_schema USING clset(<columns>) creates the table
-- foo with those columns and makes it a CRR, in one statement (cr-sqlite
-- 0.16's clset module); DROP TABLE foo_schema drops foo and its CRR tables.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE VIRTUAL TABLE foo_schema USING CLSet (a primary key not null, b);
INSERT INTO foo VALUES (1, 2);
SELECT 'changes', count(*) FROM crsql_changes;
SELECT type, name FROM sqlite_master WHERE name LIKE 'foo%' ORDER BY type, name;
-- The virtual table has two hidden columns and no rows; it is read-only.
SELECT 'rows', count(*), count(alteration), count(schema) FROM foo_schema;
INSERT INTO foo_schema (alteration) VALUES ('ALTER TABLE foo ADD COLUMN c');
-- IF NOT EXISTS: the second statement does nothing.
CREATE VIRTUAL TABLE IF NOT EXISTS foo_schema USING CLSet (a primary key not null, b);
SELECT 'changes', count(*) FROM crsql_changes;
-- It survives reopening the database (xConnect).
.open clset.db
.load EXT
CREATE VIRTUAL TABLE bar_schema USING clset(id INTEGER PRIMARY KEY NOT NULL, title TEXT DEFAULT 'x');
.open clset.db
.load EXT
INSERT INTO bar (id) VALUES (1);
SELECT 'reopened', id, title FROM bar;
SELECT 'reopened changes', "table", cid FROM crsql_changes ORDER BY cid;
-- DROP removes the table and its CRR tables; the version does not go back.
DROP TABLE bar_schema;
SELECT 'left', count(*) FROM sqlite_master WHERE name LIKE 'bar%';
SELECT 'db_version', crsql_db_version();
