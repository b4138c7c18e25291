-- Reading crsql_OutboundStream (docs/streams.md "crsql_OutboundStream"):
-- packages after last_sent in increasing position order, each row's since is
-- the previous row's cursor, a package holds whole transactions, LIMIT 1
-- builds one package, WHERE cursor > ? starts after the given position, and
-- last_retrieved advances to the largest cursor returned.
.bail off
.mode list
.nullvalue NULL
-- A database with a fixed site id, so that the output is stable.
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
SELECT hex(crsql_site_id());
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 4);
-- Nothing to send yet.
SELECT count(*) FROM o;
-- db_version 1: 3 changes; 2: 2 changes; 3: 1 change; 4: 1 change.
INSERT INTO todos VALUES (1, 'a'), (2, 'b'), (3, 'c');
INSERT INTO todos VALUES (4, 'd'), (5, 'e');
INSERT INTO todos VALUES (6, 'f');
INSERT INTO todos VALUES (7, 'g');
SELECT db_version, seq, val FROM crsql_changes ORDER BY db_version, seq;
-- Before any SELECT: last_retrieved is unknown.
SELECT name, last_sent, last_retrieved FROM crsql_streams ORDER BY name;
-- LIMIT 1 builds one package: last_retrieved is its cursor.
SELECT typeof(package), cursor, since, changes FROM o LIMIT 1;
SELECT name, last_sent, last_retrieved FROM crsql_streams ORDER BY name;
-- All packages, in order; since = previous cursor; whole transactions only
-- (db_version 2 does not fit after 1, so it starts the next package).
SELECT typeof(package), cursor, since, changes, bytes = length(package), last_sent, last_retrieved FROM o;
SELECT name, last_sent, last_retrieved FROM crsql_streams ORDER BY name;
-- ORDER BY cursor is the natural order.
SELECT cursor FROM o ORDER BY cursor;
-- Each package's changes, as positions.
SELECT p.cursor, c.db_version, c.seq FROM o AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
-- WHERE cursor > ? starts after the given position instead of last_sent.
SELECT cursor, since, changes FROM o WHERE cursor > '[1,2]';
SELECT cursor, since, changes FROM o WHERE cursor > '[2,1]';
SELECT cursor, since, changes FROM o WHERE cursor > '[1,2]' LIMIT 1;
SELECT cursor, since, changes FROM o WHERE cursor > '[4,0]';
SELECT cursor, since, changes FROM o WHERE cursor > '[0,0]' ORDER BY cursor;
-- A bad position in WHERE cursor > ?.
SELECT cursor FROM o WHERE cursor > 'nope';
SELECT cursor FROM o WHERE cursor > 5;
SELECT cursor FROM o WHERE cursor > NULL;
-- last_sent has not moved: reading is not acknowledging.
SELECT name, last_sent, last_retrieved, lag_versions FROM crsql_streams ORDER BY name;
-- Changes of this connection's open transaction have no position yet: they
-- are not read (nor acknowledgeable) before COMMIT.
BEGIN;
INSERT INTO todos VALUES (8, 'h');
SELECT cursor, since, changes FROM o WHERE cursor > '[4,0]';
INSERT INTO o(last_sent) VALUES ('[5,0]');
COMMIT;
SELECT cursor, since, changes FROM o WHERE cursor > '[4,0]';
SELECT name, last_sent, last_retrieved, lag_versions FROM crsql_streams ORDER BY name;
