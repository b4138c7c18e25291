-- crsql_automigrate's errors: arguments, a schema that fails, and changes
-- ALTER TABLE cannot make, each refused with the table and column named.
-- A failure leaves everything as it was, the caller's transaction open.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 0);
SELECT crsql_as_crr('t');
INSERT INTO t VALUES (1, 'one', 1);
-- Arguments (the first message is cr-sqlite's).
SELECT crsql_automigrate();
SELECT crsql_automigrate(1);
SELECT crsql_automigrate('', '', '');
-- The schema fails on the private database: nothing changes.
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT);
CREAT TABLE oops (x);');
SELECT name FROM pragma_table_info('t') ORDER BY cid;
-- Adding a primary key column (SQLITE_MISUSE, as in cr-sqlite, with a message).
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER NOT NULL, id2 INTEGER NOT NULL, name TEXT, n INTEGER DEFAULT 0, PRIMARY KEY (id, id2));');
-- Moving the primary key to an existing column.
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER NOT NULL, name TEXT PRIMARY KEY NOT NULL, n INTEGER DEFAULT 0);');
-- Changing a column's type affinity; a same-affinity spelling is fine.
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name BLOB, n INTEGER DEFAULT 0);');
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name VARCHAR(20), n BIGINT DEFAULT 0);');
-- NOT NULL, DEFAULT, generated columns.
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL DEFAULT '''', n INTEGER DEFAULT 0);');
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 1);');
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 0, g AS (n + 1));');
-- A NOT NULL column without a default cannot be added (SQLite's message).
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 0, m INTEGER NOT NULL);');
-- A schema that is not re-runnable fails on this database after the column
-- was dropped: the drop is undone, the caller's transaction stays open.
BEGIN;
INSERT INTO t VALUES (2, 'two', 2);
SELECT crsql_automigrate('CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, name TEXT);');
SELECT name FROM pragma_table_info('t') ORDER BY cid;
SELECT count(*) FROM sqlite_master WHERE name LIKE 't__crsql_%trig';
COMMIT;
SELECT * FROM t ORDER BY id;
-- cleanup_sql runs on the private database after the comparison: it cannot
-- change the result, but its failure fails the migration.
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 0);', 'DROP TABLE t');
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 0);', 'DROP TABLE nope');
SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY NOT NULL, name TEXT, n INTEGER DEFAULT 0);', NULL);
SELECT * FROM t ORDER BY id;
