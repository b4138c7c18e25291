-- crsql_new_site_id(): a fresh site id for a restored or copied database.
-- Earlier changes keep the old id, later ones carry the new one; positions
-- do not move; it refuses to run inside a transaction.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v);
SELECT crsql_as_crr('t');
INSERT INTO t VALUES ('a', 1), ('c', 3);
CREATE TEMP TABLE ids (what TEXT, id BLOB);
INSERT INTO ids VALUES ('old', crsql_site_id());
BEGIN;
SELECT crsql_new_site_id();
ROLLBACK;
SELECT crsql_site_id() = (SELECT id FROM ids WHERE what = 'old');
-- A peer's old acknowledgements stay valid: positions do not move.
SELECT db_version, seq FROM crsql_changes ORDER BY 1, 2;
SELECT length(crsql_new_site_id());
INSERT INTO ids VALUES ('new', crsql_site_id());
SELECT (SELECT id FROM ids WHERE what = 'old') != (SELECT id FROM ids WHERE what = 'new');
-- UUIDv4 bits.
SELECT substr(hex(crsql_site_id()), 13, 1), substr(hex(crsql_site_id()), 17, 1) IN ('8', '9', 'A', 'B');
INSERT INTO t VALUES ('b', 2);
UPDATE t SET v = 10 WHERE id = 'a';
SELECT t.id, c.cid, i.what, c.db_version, c.seq
FROM crsql_changes AS c JOIN t ON c.pk = crsql_pack_columns(t.id) JOIN ids AS i ON i.id = c.site_id
ORDER BY c.db_version, c.seq;
-- The old id is an ordinary site now.
SELECT count(*) FROM crsql_site_id;
SELECT crsql_new_site_id(1);
