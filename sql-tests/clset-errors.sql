-- clset errors: the name must end in _schema, the table must be a valid CRR
-- (cr-sqlite's messages); a failed CREATE leaves nothing behind, also inside
-- a transaction.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE VIRTUAL TABLE bar USING clset(a primary key not null);
CREATE VIRTUAL TABLE _schema USING clset(a primary key not null);
CREATE VIRTUAL TABLE baz_schema USING clset(a, b);
CREATE VIRTUAL TABLE e_schema USING clset();
CREATE TABLE taken (x);
CREATE VIRTUAL TABLE taken_schema USING clset(a primary key not null);
CREATE VIRTUAL TABLE temp.tmp_schema USING clset(a primary key not null);
SELECT 'left', name FROM sqlite_master WHERE name NOT LIKE 'crsql%' AND name NOT LIKE 'sqlite%' ORDER BY name;
BEGIN;
CREATE VIRTUAL TABLE ok_schema USING clset(id PRIMARY KEY NOT NULL, v);
CREATE VIRTUAL TABLE bad_schema USING clset(id, v);
SELECT 'in tx', name FROM sqlite_master WHERE name IN ('ok', 'ok_schema', 'bad', 'bad_schema') ORDER BY name;
ROLLBACK;
SELECT 'rolled back', count(*) FROM sqlite_master WHERE name LIKE 'ok%';
