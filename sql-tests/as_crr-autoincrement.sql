-- Precondition 4 (spec §5.2): no AUTOINCREMENT (matched case-insensitively).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE ai(id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, v);
SELECT crsql_as_crr('ai');
CREATE TABLE ai2(id INTEGER NOT NULL PRIMARY KEY AutoIncrement, v);
SELECT crsql_as_crr('ai2');
SELECT count(*) FROM sqlite_master WHERE name LIKE 'ai%crsql%';
