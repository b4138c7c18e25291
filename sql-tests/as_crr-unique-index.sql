-- Precondition 1 (spec §5.2): no unique index besides the primary key.
-- Both UNIQUE constraints and CREATE UNIQUE INDEX are refused. (The missing
-- space in "besidesthe" is cr-sqlite's text.)
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE u1(a PRIMARY KEY NOT NULL, b UNIQUE);
SELECT crsql_as_crr('u1');
CREATE TABLE u2(a PRIMARY KEY NOT NULL, b);
CREATE UNIQUE INDEX u2_b ON u2(b);
SELECT crsql_as_crr('u2');
-- Nothing was created.
SELECT 'crsql objects', count(*) FROM sqlite_master WHERE name LIKE '%\_\_crsql\_%' ESCAPE '\';
-- A non-unique index is fine.
CREATE TABLE u3(a PRIMARY KEY NOT NULL, b);
CREATE INDEX u3_b ON u3(b);
SELECT crsql_as_crr('u3');
-- Checks run in order: unique index (1) is reported before the nullable PK (2).
CREATE TABLE u4(a PRIMARY KEY, b UNIQUE);
SELECT crsql_as_crr('u4');
