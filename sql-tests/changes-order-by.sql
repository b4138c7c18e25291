-- ORDER BY on crsql_changes is honoured per term, in both directions (spec
-- §7.4, §15 Q2 fixed): db_version DESC is descending, mixed directions work,
-- ORDER BY val works.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'x', 'q');
INSERT INTO foo VALUES (2, 'y', 'p');
INSERT INTO foo VALUES (3, 'z', 'o');
SELECT 'asc', db_version, seq, val FROM crsql_changes ORDER BY db_version, seq;
SELECT 'desc', db_version, val FROM crsql_changes WHERE cid = 'b' ORDER BY db_version DESC;
SELECT 'desc desc', db_version, seq, val FROM crsql_changes ORDER BY db_version DESC, seq DESC;
SELECT 'desc asc', db_version, seq, val FROM crsql_changes ORDER BY db_version DESC, seq ASC;
SELECT 'asc desc', db_version, seq, val FROM crsql_changes ORDER BY db_version ASC, seq DESC;
SELECT 'val', val FROM crsql_changes ORDER BY val;
SELECT 'val desc', val FROM crsql_changes ORDER BY val DESC;
SELECT 'cid, db_version desc', cid, db_version FROM crsql_changes ORDER BY cid, db_version DESC;
SELECT 'filtered desc', db_version, seq FROM crsql_changes WHERE db_version >= 2 ORDER BY db_version DESC, seq DESC;
SELECT 'desc limit', db_version, seq, val FROM crsql_changes ORDER BY db_version DESC, seq DESC LIMIT 2;
SELECT 'max', max(db_version) FROM crsql_changes;
