-- crsql_site_id() is this database's 16-byte id, a UUID v4 stored at ordinal
-- 0 of crsql_site_id, and it survives a reopen (spec §3.1).
.bail off
.mode list
.nullvalue NULL
.load EXT
.open s.db
.load EXT
SELECT typeof(crsql_site_id()), length(crsql_site_id());
SELECT 'version nibble', substr(hex(crsql_site_id()), 13, 1);
SELECT 'variant', substr(hex(crsql_site_id()), 17, 1) IN ('8', '9', 'A', 'B');
SELECT 'stored', site_id = crsql_site_id() FROM crsql_site_id WHERE ordinal = 0;
SELECT 'rows', count(*) FROM crsql_site_id;
CREATE TABLE keep(id INTEGER PRIMARY KEY, sid BLOB);
INSERT INTO keep VALUES (1, crsql_site_id());
-- Local changes carry it.
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 2);
SELECT 'changes', site_id = crsql_site_id() FROM crsql_changes ORDER BY db_version, seq;
.open s.db
.load EXT
SELECT 'same after reopen', crsql_site_id() = (SELECT sid FROM keep WHERE id = 1);
SELECT 'rows', count(*) FROM crsql_site_id;
-- Another database gets another id.
.open other.db
.load EXT
ATTACH 's.db' AS s;
SELECT 'different', crsql_site_id() != (SELECT sid FROM s.keep WHERE id = 1);
SELECT crsql_site_id(1);
