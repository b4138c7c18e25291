-- encoding = 'json' (docs/streams.md): the package column is TEXT, a JSON
-- object {"body":...,"crc":"..."}; the receiver applies it like a binary
-- package; types are kept exactly (a REAL stays a REAL, 64-bit integers are
-- exact, blobs round-trip); the checksum covers the body.
.bail off
.mode list
.nullvalue NULL
.open b.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
CREATE TABLE vals(id INTEGER PRIMARY KEY NOT NULL, v);
SELECT crsql_as_crr('vals');
CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(encoding = 'json');
CREATE VIRTUAL TABLE to_b_bin USING crsql_OutboundStream;
UPDATE crsql_stream_state SET stream_id = X'a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1' WHERE name = 'to_b';
SELECT crsql_finalize();
.open a.db
.load EXT
INSERT INTO vals VALUES
  (1, 2.0), (2, 9223372036854775807), (3, -9223372036854775808), (4, X'00FF7B22'),
  (5, ''), (6, NULL), (7, 'é "quoted" \ {json}'), (8, 0.1), (9, 1e308), (10, -0.0), (11, 2);
SELECT id, typeof(v), quote(v) FROM vals ORDER BY id;
SELECT typeof(package), substr(package, 1, 8), json_valid(package), package ->> '$.crc' IS NOT NULL, bytes = length(CAST(package AS BLOB)), changes, cursor FROM to_b;
SELECT package -> '$.body.since', package -> '$.body.cursor', package ->> '$.body.stream', json_array_length(package -> '$.body.changes') FROM to_b;
-- crsql_package_info and crsql_package_changes read JSON packages too.
SELECT json_extract(crsql_package_info(package), '$.changes'), json_extract(crsql_package_info(package), '$.tables[0].name') FROM to_b;
SELECT c.pk = b.pk AND c.cid = b.cid AND c.val IS b.val AND typeof(c.val) = typeof(b.val)
  FROM to_b AS p, crsql_package_changes(p.package) AS c
  JOIN (SELECT x.* FROM to_b_bin AS q, crsql_package_changes(q.package) AS x) AS b ON b.seq = c.seq
  ORDER BY c.seq;
ATTACH 'wire.db' AS wire;
CREATE TABLE wire.packets(name TEXT PRIMARY KEY, package);
INSERT INTO wire.packets SELECT 'json', package FROM to_b;
-- On b: corrupted JSON packages are refused, the intact one applies.
.open b.db
.load EXT
CREATE TABLE vals(id INTEGER PRIMARY KEY NOT NULL, v);
SELECT crsql_as_crr('vals');
CREATE VIRTUAL TABLE from_a USING crsql_InboundStream;
ATTACH 'wire.db' AS wire;
SELECT typeof(package) FROM wire.packets;
INSERT INTO from_a(package) SELECT replace(package, '"stream":"to_b"', '"stream":"to_c"') FROM wire.packets;
INSERT INTO from_a(package) SELECT substr(package, 1, length(package) - 1) FROM wire.packets;
INSERT INTO from_a(package) SELECT package || ' ' FROM wire.packets;
INSERT INTO from_a(package) SELECT replace(package, '"crc":"', '"crc":"x') FROM wire.packets;
INSERT INTO from_a(package) SELECT '{"body":{"sender":1},"crc":"0000000000000000"}';
SELECT last_applied FROM from_a;
SELECT count(*) FROM vals;
-- The JSON package as a BLOB holds the same bytes: it applies.
INSERT INTO from_a(package) SELECT CAST(package AS BLOB) FROM wire.packets;
SELECT last_applied FROM from_a;
SELECT id, typeof(v), quote(v) FROM vals ORDER BY id;
