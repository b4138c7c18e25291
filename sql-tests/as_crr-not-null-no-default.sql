-- Precondition 6 (spec §5.2): a NOT NULL non-PK column needs a DEFAULT.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE nn(id PRIMARY KEY NOT NULL, v TEXT NOT NULL);
SELECT crsql_as_crr('nn');
SELECT count(*) FROM sqlite_master WHERE name LIKE 'nn%crsql%';
CREATE TABLE nd(id PRIMARY KEY NOT NULL, v TEXT NOT NULL DEFAULT '');
SELECT crsql_as_crr('nd');
