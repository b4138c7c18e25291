-- Precondition 2 (spec §5.2): a primary key with a NOT NULL column is required.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE nopk(a, b);
SELECT crsql_as_crr('nopk');
CREATE TABLE nullable(a PRIMARY KEY, b);
SELECT crsql_as_crr('nullable');
-- INTEGER PRIMARY KEY without an explicit NOT NULL is refused too.
CREATE TABLE rowidalias(id INTEGER PRIMARY KEY, b);
SELECT crsql_as_crr('rowidalias');
-- A table that does not exist gets the same message.
SELECT crsql_as_crr('missing');
SELECT 'crsql objects', count(*) FROM sqlite_master WHERE name LIKE '%\_\_crsql\_%' ESCAPE '\';
