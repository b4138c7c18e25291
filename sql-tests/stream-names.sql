-- Stream table names: SQLite compares table names without ASCII case, and so
-- does crsql_streams.name; names the extension needs for itself (its
-- eponymous tables, its state tables, a CRR's clock and pks tables) are
-- refused at CREATE with an error naming the stream, leaving nothing behind.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE "To_Peer" USING crsql_OutboundStream();
CREATE VIRTUAL TABLE "From_Peer" USING crsql_InboundStream();
-- The stored name keeps its case; lookups in any case find it.
SELECT name, direction FROM crsql_streams WHERE name = 'to_peer';
SELECT name, direction FROM crsql_streams WHERE name = 'FROM_PEER';
INSERT INTO todos VALUES (1, 'a');
SELECT cursor FROM to_peer;
INSERT INTO TO_PEER(last_sent) VALUES ('[1,0]');
SELECT last_sent FROM crsql_streams WHERE name = 'TO_PEER';
-- Reserved names, in any case.
CREATE VIRTUAL TABLE crsql_changes USING crsql_OutboundStream();
CREATE VIRTUAL TABLE CRSQL_STREAMS USING crsql_InboundStream();
CREATE VIRTUAL TABLE crsql_package_changes USING crsql_OutboundStream();
CREATE VIRTUAL TABLE crsql_stream_state USING crsql_InboundStream();
CREATE VIRTUAL TABLE crsql_OutboundStream USING crsql_OutboundStream();
CREATE VIRTUAL TABLE gone__crsql_clock USING crsql_OutboundStream();
CREATE VIRTUAL TABLE Gone__CRSQL_PKS USING crsql_InboundStream();
-- Nothing was created, and crsql_changes still reads the extension's rows.
SELECT name FROM sqlite_master WHERE sql LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name;
SELECT count(*) FROM crsql_streams;
SELECT "table", cid FROM crsql_changes ORDER BY cid;
-- A name that merely starts with crsql_ is the user's to take (sync helpers use crsql_sync_to_…).
CREATE VIRTUAL TABLE crsql_sync_to_x USING crsql_OutboundStream();
SELECT name FROM crsql_streams ORDER BY name;
-- In a database without any stream yet, the state tables' names are refused
-- too (rather than taken by a stream table that would then hide them).
.open :memory:
.load EXT
CREATE VIRTUAL TABLE crsql_stream_state USING crsql_OutboundStream();
CREATE VIRTUAL TABLE Crsql_Stream_Staging USING crsql_InboundStream();
SELECT count(*) FROM sqlite_master WHERE name LIKE 'crsql_stream%';
