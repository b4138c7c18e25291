-- db_version constraints on crsql_changes (spec §7.3): every operator gives
-- exactly the matching rows.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'v1');
INSERT INTO foo VALUES (2, 'v2');
INSERT INTO foo VALUES (3, 'v3');
INSERT INTO foo VALUES (4, 'v4');
SELECT '>', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version > 2 ORDER BY db_version, seq);
SELECT '>=', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version >= 2 ORDER BY db_version, seq);
SELECT '=', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version = 2 ORDER BY db_version, seq);
SELECT '<', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version < 2 ORDER BY db_version, seq);
SELECT '<=', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version <= 2 ORDER BY db_version, seq);
SELECT '!=', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version != 2 ORDER BY db_version, seq);
SELECT 'IS', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version IS 3 ORDER BY db_version, seq);
SELECT 'IN', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version IN (1, 4) ORDER BY db_version, seq);
SELECT 'BETWEEN', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version BETWEEN 2 AND 3 ORDER BY db_version, seq);
SELECT 'range', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version > 1 AND db_version < 4 ORDER BY db_version, seq);
SELECT 'empty range', count(*) FROM crsql_changes WHERE db_version > 3 AND db_version < 2;
SELECT 'beyond', count(*) FROM crsql_changes WHERE db_version > 4;
SELECT 'NULL', count(*) FROM crsql_changes WHERE db_version > NULL;
SELECT 'text', count(*) FROM crsql_changes WHERE db_version > '2';
SELECT 'real', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version > 2.5 ORDER BY db_version, seq);
-- A bound parameter, as a sync loop would use it.
.parameter init
.parameter set :since 3
SELECT 'param', group_concat(val, ',') FROM (SELECT val FROM crsql_changes WHERE db_version > :since ORDER BY db_version, seq);
-- A subquery / join, re-evaluated per outer row.
SELECT v.n, (SELECT count(*) FROM crsql_changes WHERE db_version > v.n) FROM (SELECT 0 AS n UNION ALL SELECT 2 UNION ALL SELECT 4) AS v ORDER BY v.n;
-- Combined with seq.
SELECT 'seq', count(*) FROM crsql_changes WHERE db_version >= 1 AND seq = 0;
