-- crsql_streams.lag_changes (docs/sql.md "crsql_streams", DECISIONS D33):
-- the changes after last_sent that an outbound stream carries, exact,
-- with its tables / exclude_sites / local_only filters; for an inbound
-- stream, the changes of its staged parts (0 here: nothing staged). The
-- counts behind it live in crsql_change_counts; the internal table
-- crsql_change_counter, whose COMMIT counts a transaction's changes,
-- stores nothing.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, done INTEGER);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('notes');
CREATE VIRTUAL TABLE to_all USING crsql_OutboundStream(max_changes = 3);
CREATE VIRTUAL TABLE to_notes USING crsql_OutboundStream(tables = 'notes');
CREATE VIRTUAL TABLE to_local USING crsql_OutboundStream(local_only = 1);
CREATE VIRTUAL TABLE from_b USING crsql_InboundStream;
-- Three rows of two cells each in one transaction, one note in another.
INSERT INTO todos VALUES (1, 'a', 0), (2, 'b', 0), (3, 'c', 0);
INSERT INTO notes VALUES (1, 'n');
SELECT name, lag_versions, lag_changes FROM crsql_streams ORDER BY name;
-- A cell written again moves to a newer version: still one change.
UPDATE todos SET done = 1 WHERE id = 1;
SELECT name, lag_changes FROM crsql_streams WHERE name = 'to_all';
-- A delete: the row's cells go, its sentinel comes.
DELETE FROM todos WHERE id = 2;
SELECT name, lag_changes, (SELECT count(*) FROM crsql_changes) AS changes FROM crsql_streams WHERE name = 'to_all';
-- A change merged from another site counts for every stream but local_only.
INSERT INTO crsql_changes ("table", pk, cid, val, col_version, db_version, site_id, cl, seq)
  VALUES ('notes', crsql_pack_columns(2), 'body', 'remote', 1, 1, x'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT name, lag_changes FROM crsql_streams ORDER BY name;
-- Acknowledged after the first package (the 3 changes left at version 1).
INSERT INTO to_all(last_sent) SELECT cursor FROM to_all LIMIT 1;
SELECT last_sent, lag_changes FROM crsql_streams WHERE name = 'to_all';
SELECT count(*) FROM crsql_changes WHERE db_version > 1 OR (db_version = 1 AND seq > 5);
-- Acknowledged to the end: nothing left.
INSERT INTO to_all(last_sent) SELECT max(cursor) FROM (SELECT cursor FROM to_all);
SELECT last_sent, lag_changes FROM crsql_streams WHERE name = 'to_all';
-- crsql_change_counter stores nothing; its rows are never there.
SELECT count(*) FROM crsql_change_counter;
INSERT INTO crsql_change_counter VALUES (1);
SELECT count(*) FROM crsql_change_counter;
-- Rolled back: the counts go back with the clocks.
BEGIN;
INSERT INTO todos VALUES (10, 'x', 0);
ROLLBACK;
SELECT lag_changes FROM crsql_streams WHERE name = 'to_all';
