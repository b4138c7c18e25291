-- crsql_streams (docs/streams.md "Observability"): every stream of the
-- database with its name, direction, peer site id, last_sent /
-- last_retrieved / last_applied, and lag_versions = local db_version minus
-- the acknowledged one (outbound streams).
.bail off
.mode list
.nullvalue NULL
.load EXT
-- The columns.
SELECT name, type FROM pragma_table_xinfo('crsql_streams') ORDER BY cid;
-- No stream yet: no row.
SELECT count(*) FROM crsql_streams;
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE out_one_peer USING crsql_OutboundStream(exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
CREATE VIRTUAL TABLE out_two_peers USING crsql_OutboundStream(exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b,0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c');
CREATE VIRTUAL TABLE out_ahead USING crsql_OutboundStream(since = '[7,2]');
CREATE VIRTUAL TABLE in_pinned USING crsql_InboundStream(from = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', since = '[3,1]');
CREATE VIRTUAL TABLE in_open USING crsql_InboundStream;
SELECT * FROM crsql_streams ORDER BY name;
-- Local writes raise the lag of every outbound stream.
INSERT INTO todos VALUES (1, 'one');
INSERT INTO todos VALUES (2, 'two');
INSERT INTO todos VALUES (3, 'three');
SELECT crsql_db_version();
SELECT name, lag_versions FROM crsql_streams ORDER BY name;
-- Reading moves last_retrieved, not last_sent nor the lag.
SELECT count(*) FROM out_one_peer;
SELECT cursor FROM out_two_peers LIMIT 1;
SELECT name, last_sent, last_retrieved, lag_versions FROM crsql_streams ORDER BY name;
-- Acknowledging lowers the lag.
INSERT INTO out_one_peer(last_sent) VALUES ('[2,0]');
INSERT INTO out_two_peers(last_sent) VALUES ('[3,0]');
SELECT name, last_sent, last_retrieved, lag_versions FROM crsql_streams ORDER BY name;
-- Filtering by column works as on any table.
SELECT name FROM crsql_streams WHERE direction = 'outbound' AND lag_versions > 0 ORDER BY name;
SELECT name FROM crsql_streams WHERE peer = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' ORDER BY name;
-- WHERE name = … reads that stream alone (names compare without case, as
-- table names do); SQLite checks the constraint again under its collation.
SELECT name, lag_versions FROM crsql_streams WHERE name = 'OUT_ONE_PEER';
SELECT count(*) FROM crsql_streams WHERE name = 'OUT_ONE_PEER' COLLATE BINARY;
SELECT count(*) FROM crsql_streams WHERE name = 'no_such_stream';
SELECT count(*) FROM crsql_streams WHERE name = 5;
EXPLAIN QUERY PLAN SELECT * FROM crsql_streams WHERE name = 'x';
-- crsql_streams is read-only.
INSERT INTO crsql_streams(name) VALUES ('x');
DELETE FROM crsql_streams;
SELECT count(*) FROM crsql_streams;
