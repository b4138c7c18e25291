-- Acknowledging an outbound stream (docs/streams.md "crsql_OutboundStream"):
-- INSERT INTO t(last_sent) VALUES (?) moves last_sent; acknowledgements are
-- idempotent and order-insensitive (the maximum is kept); a position beyond
-- what exists is an error; an unacknowledged package is produced again;
-- last_sent is durable and part of the caller's transaction; every other
-- write is refused.
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
CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2);
CREATE VIRTUAL TABLE o2 USING crsql_OutboundStream(max_changes = 2);
INSERT INTO todos VALUES (1, 'a'), (2, 'b');
INSERT INTO todos VALUES (3, 'c');
INSERT INTO todos VALUES (4, 'd');
INSERT INTO todos VALUES (5, 'e');
SELECT crsql_db_version();
SELECT cursor, since, last_sent FROM o;
-- Two tables with the same arguments are two different streams.
SELECT json_extract(crsql_package_info(a.package), '$.stream_id') = json_extract(crsql_package_info(b.package), '$.stream_id')
  FROM o AS a, o2 AS b WHERE a.cursor = '[1,1]' AND b.cursor = '[1,1]';
SELECT json_extract(crsql_package_info(package), '$.stream') FROM o2 LIMIT 1;
-- An unacknowledged package is produced again by the next plain SELECT.
SELECT cursor, since FROM o LIMIT 1;
SELECT cursor, since FROM o LIMIT 1;
-- Acknowledge the first package: the next SELECT starts after it.
INSERT INTO o(last_sent) VALUES ('[1,1]');
SELECT cursor, since, last_sent FROM o;
SELECT name, last_sent, lag_versions FROM crsql_streams ORDER BY name;
-- Idempotent: the same acknowledgement again changes nothing.
INSERT INTO o(last_sent) VALUES ('[1,1]');
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
-- Order-insensitive: a newer one, then an older one; the maximum is kept.
INSERT INTO o(last_sent) VALUES ('[3,0]');
INSERT INTO o(last_sent) VALUES ('[2,0]');
INSERT INTO o(last_sent) VALUES ('[0,0]');
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
SELECT cursor, since FROM o;
-- Several acknowledgements in one statement.
INSERT INTO o2(last_sent) VALUES ('[2,0]'), ('[1,1]'), ('[3,0]');
SELECT name, last_sent FROM crsql_streams ORDER BY name;
-- Beyond the newest change ([4,0]): an error, nothing changes.
INSERT INTO o(last_sent) VALUES ('[4,1]');
INSERT INTO o(last_sent) VALUES ('[5,0]');
INSERT INTO o(last_sent) VALUES ('[99,0]');
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
-- Malformed or mistyped acknowledgements.
INSERT INTO o(last_sent) VALUES ('3,0');
INSERT INTO o(last_sent) VALUES ('[3,-1]');
INSERT INTO o(last_sent) VALUES (3);
INSERT INTO o(last_sent) VALUES (X'5b332c305d');
INSERT INTO o(last_sent) VALUES (NULL);
-- Any other column, alone or with last_sent, is refused.
INSERT INTO o(package) VALUES (X'00');
INSERT INTO o(cursor) VALUES ('[4,0]');
INSERT INTO o(last_retrieved) VALUES ('[4,0]');
INSERT INTO o(last_sent, cursor) VALUES ('[4,0]', '[4,0]');
INSERT INTO o(last_sent, changes) VALUES ('[4,0]', 1);
INSERT INTO o DEFAULT VALUES;
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
-- UPDATE and DELETE are refused (there is a pending package to update).
UPDATE o SET last_sent = '[4,0]';
UPDATE o SET cursor = '[4,0]';
DELETE FROM o;
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
-- An acknowledgement is part of the caller's transaction.
BEGIN;
INSERT INTO o(last_sent) VALUES ('[4,0]');
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
ROLLBACK;
SELECT name, last_sent FROM crsql_streams WHERE name = 'o';
SELECT cursor, since FROM o;
BEGIN;
INSERT INTO o(last_sent) VALUES ('[4,0]');
COMMIT;
SELECT count(*) FROM o;
-- last_sent is durable: it survives closing and reopening the database;
-- last_retrieved is not stored.
.open a.db
.load EXT
SELECT name, last_sent, last_retrieved, lag_versions FROM crsql_streams ORDER BY name;
SELECT count(*) FROM o;
SELECT cursor, since FROM o2;
-- New changes after the acknowledged position are sent.
INSERT INTO todos VALUES (6, 'f');
SELECT cursor, since, changes, last_sent FROM o;
INSERT INTO o(last_sent) VALUES ('[5,0]');
SELECT name, last_sent, lag_versions FROM crsql_streams ORDER BY name;
