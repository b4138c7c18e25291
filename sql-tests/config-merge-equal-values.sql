-- With merge-equal-values on, an equal value with an equal col_version is
-- won by the greater site id (spec §8.2 step 3); off (the default), equal
-- values never win.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE foo(a PRIMARY KEY NOT NULL, b);
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (1, 'same');
-- Off: no-op.
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'same', 1, 7, X'ffffffffffffffffffffffffffffffff', 1, 0);
SELECT 'off', crsql_rows_impacted();
COMMIT;
SELECT 'off', cid, site_id = crsql_site_id(), db_version FROM crsql_changes ORDER BY db_version, seq;
SELECT crsql_config_set('merge-equal-values', 1);
-- On: a smaller site id still loses; X'00..' is below any UUID v4.
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'same', 1, 7, X'00000000000000000000000000000000', 1, 0);
SELECT 'on, smaller site', crsql_rows_impacted();
COMMIT;
BEGIN;
INSERT INTO crsql_changes VALUES ('foo', X'010901', 'b', 'same', 1, 7, X'ffffffffffffffffffffffffffffffff', 1, 0);
SELECT 'on, greater site', crsql_rows_impacted();
COMMIT;
SELECT 'on', cid, hex(site_id), col_version, db_version FROM crsql_changes ORDER BY db_version, seq;
