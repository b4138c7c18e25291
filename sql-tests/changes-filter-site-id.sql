-- site_id constraints on crsql_changes (spec §7.3): local rows carry this
-- database's own site id; merged rows keep their origin's; IS NULL never
-- matches.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'local');
INSERT INTO crsql_changes VALUES ('foo', X'010902', 'b', 'from b', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('foo', X'010903', 'b', 'from c', 1, 1, X'0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c', 1, 0);
SELECT hex(pk), val, db_version, hex(site_id) = hex(crsql_site_id()) FROM crsql_changes ORDER BY db_version, seq;
SELECT 'own', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE site_id = crsql_site_id() ORDER BY db_version, seq);
SELECT 'b', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE site_id = X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' ORDER BY db_version, seq);
SELECT 'not b', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE site_id IS NOT X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' ORDER BY db_version, seq);
SELECT '!= own', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE site_id != crsql_site_id() ORDER BY db_version, seq);
SELECT 'IS c', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE site_id IS X'0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c' ORDER BY db_version, seq);
SELECT 'IN', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE site_id IN (X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', crsql_site_id()) ORDER BY db_version, seq);
SELECT 'unknown', count(*) FROM crsql_changes WHERE site_id = X'0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d';
SELECT 'not unknown', count(*) FROM crsql_changes WHERE site_id != X'0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d';
SELECT 'IS NULL', count(*) FROM crsql_changes WHERE site_id IS NULL;
SELECT 'IS NOT NULL', count(*) FROM crsql_changes WHERE site_id IS NOT NULL;
SELECT '= NULL', count(*) FROM crsql_changes WHERE site_id = NULL;
SELECT 'text', count(*) FROM crsql_changes WHERE site_id = 'abc';
-- The usual pull query: what the peer B has not seen.
SELECT 'pull for b', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version > 0 AND site_id IS NOT X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' ORDER BY db_version, seq);
-- The merged site ids got ordinals 1 and 2.
SELECT ordinal, hex(site_id) FROM crsql_site_id WHERE ordinal > 0 ORDER BY ordinal;
