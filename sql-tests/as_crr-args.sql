-- Argument errors of crsql_as_crr (spec §4).
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT crsql_as_crr();
SELECT crsql_as_crr('main', 'foo', 'extra');
SELECT crsql_as_crr(1);
SELECT crsql_as_crr(NULL);
SELECT crsql_as_crr('');
