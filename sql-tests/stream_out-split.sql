-- Splitting (docs/streams.md "crsql_OutboundStream"): a package holds whole
-- transactions; only a single db_version larger than max_changes / max_bytes
-- is split, and its parts are marked (crsql_package_info's "part": the
-- db_version and whether this is the last part). A single change larger than
-- max_bytes still travels, alone.
.bail off
.mode list
.nullvalue NULL
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE by_count USING crsql_OutboundStream(max_changes = 2);
CREATE VIRTUAL TABLE by_bytes USING crsql_OutboundStream(max_bytes = 1);
CREATE VIRTUAL TABLE roomy USING crsql_OutboundStream;
-- db_version 1: one change; 2: five changes; 3: two changes; 4: one change.
INSERT INTO todos VALUES (1, 'a');
INSERT INTO todos VALUES (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f');
INSERT INTO todos VALUES (7, 'g'), (8, 'h');
INSERT INTO todos VALUES (9, zeroblob(5000));
-- max_changes = 2: db_version 2 travels in three parts, the others whole.
SELECT cursor, since, changes, json_extract(crsql_package_info(package), '$.part') FROM by_count;
SELECT cursor, json_extract(crsql_package_info(package), '$.part.db_version'), json_extract(crsql_package_info(package), '$.part.last') FROM by_count WHERE crsql_package_info(package) ->> '$.part' IS NOT NULL;
-- Acknowledging the middle of a split transaction resumes with the next part.
INSERT INTO by_count(last_sent) VALUES ('[2,1]');
SELECT cursor, since, changes, json_extract(crsql_package_info(package), '$.part') FROM by_count LIMIT 2;
-- max_bytes = 1: one change per package; multi-change transactions are split.
SELECT cursor, since, changes, json_extract(crsql_package_info(package), '$.part') FROM by_bytes;
-- The default limits: everything in one package, no part.
SELECT cursor, since, changes, json_extract(crsql_package_info(package), '$.part'), bytes > 5000 FROM roomy;
-- max_bytes bounds the whole package (header included), in either encoding;
-- only a package of a single change may exceed it.
CREATE TABLE many(id INTEGER PRIMARY KEY NOT NULL, v TEXT);
SELECT crsql_as_crr('many');
CREATE VIRTUAL TABLE small_bin USING crsql_OutboundStream(max_bytes = 1000, tables = 'many');
CREATE VIRTUAL TABLE small_json USING crsql_OutboundStream(max_bytes = 1000, tables = 'many', encoding = 'json');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
INSERT INTO many SELECT i, printf('value %03d', i) FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
INSERT INTO many SELECT 1000 + i, printf('%.2000c', 'x') FROM n;
SELECT 'small_bin', count(*) > 2, sum(changes), sum(bytes > 1000 AND changes > 1), sum(bytes > 1000 AND changes = 1) FROM small_bin;
SELECT cursor, since, changes, bytes, crsql_package_info(package) ->> '$.part' FROM small_bin;
SELECT 'small_json', count(*) > 2, sum(changes), sum(bytes > 1000 AND changes > 1), sum(bytes > 1000 AND changes = 1) FROM small_json;
SELECT 'small_bin', count(*) FROM small_bin AS a JOIN small_bin AS b ON b.since = a.cursor;
