-- Precondition 3 (spec §5.2): every column of a composite key is NOT NULL.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE c(a NOT NULL, b, v, PRIMARY KEY (a, b));
SELECT crsql_as_crr('c');
SELECT count(*) FROM sqlite_master WHERE name LIKE 'c\_\_%' ESCAPE '\';
CREATE TABLE ok(a NOT NULL, b NOT NULL, v, PRIMARY KEY (a, b));
SELECT crsql_as_crr('ok');
