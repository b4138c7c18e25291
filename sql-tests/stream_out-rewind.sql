-- INSERT INTO <outbound>(rewind): move the stream back (a restored peer
-- lost what it acknowledged); refused beyond the newest change; both
-- last_sent and rewind in one row are refused.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v);
SELECT crsql_as_crr('t');
INSERT INTO t VALUES ('a', 1);
INSERT INTO t VALUES ('b', 2);
CREATE VIRTUAL TABLE o USING crsql_OutboundStream();
INSERT INTO o(last_sent) VALUES ('[2,0]');
SELECT count(*) FROM o;
INSERT INTO o(rewind) VALUES ('[1,0]');
SELECT last_sent FROM crsql_streams WHERE name = 'o';
SELECT cursor, since FROM o;
INSERT INTO o(rewind) VALUES ('[0,0]');
SELECT cursor, since FROM o;
INSERT INTO o(rewind) VALUES ('[3,0]');
INSERT INTO o(rewind) VALUES (NULL);
INSERT INTO o(rewind) VALUES ('soon');
INSERT INTO o(last_sent, rewind) VALUES ('[1,0]', '[1,0]');
INSERT INTO o(last_sent) VALUES ('[9,0]');
