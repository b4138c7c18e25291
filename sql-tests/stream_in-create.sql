-- crsql_InboundStream CREATE arguments (docs/streams.md "crsql_InboundStream"):
-- from, since and tables are optional; before the first package last_applied
-- is since ('[0,0]' by default); bad arguments are refused at CREATE time
-- with an error naming the argument, leaving nothing behind; the table has
-- one row, and UPDATE / DELETE are refused.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
CREATE TABLE plain(id INTEGER PRIMARY KEY NOT NULL, x);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('notes');
CREATE VIRTUAL TABLE i_default USING crsql_InboundStream;
CREATE VIRTUAL TABLE i_empty USING crsql_InboundStream();
CREATE VIRTUAL TABLE i_all USING crsql_InboundStream(
  from   = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b',
  since  = '[12,3]',
  tables = 'todos,notes'
);
CREATE VIRTUAL TABLE i_upper USING crsql_InboundStream(FROM = '0C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0C', Tables = notes);
SELECT 'i_default', last_applied FROM i_default;
SELECT 'i_empty', last_applied FROM i_empty;
SELECT 'i_all', last_applied FROM i_all;
SELECT 'i_upper', * FROM i_upper;
SELECT name, direction, peer, last_sent, last_retrieved, last_applied, lag_versions FROM crsql_streams ORDER BY name;
-- The declared columns: package (and sender) are HIDDEN.
SELECT name, type, hidden FROM pragma_table_xinfo('i_all') ORDER BY cid;
-- Errors.
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(form = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(since);
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(since = '[1;2]');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(since = '');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(from = '0b0b');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(from = 'xx0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(from = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b,0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(from = '');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(tables = 'todos,plain');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(tables = 'missing');
CREATE VIRTUAL TABLE bad USING crsql_InboundStream(tables = ' , ');
ATTACH 'other.db' AS other;
CREATE VIRTUAL TABLE other.bad USING crsql_InboundStream;
SELECT name FROM sqlite_master WHERE name = 'bad';
SELECT name FROM other.sqlite_master WHERE name = 'bad';
SELECT name FROM crsql_streams ORDER BY name;
-- Writes other than INSERT of a package are refused.
INSERT INTO i_default(last_applied) VALUES ('[5,0]');
INSERT INTO i_default DEFAULT VALUES;
UPDATE i_default SET last_applied = '[5,0]';
DELETE FROM i_default;
SELECT last_applied FROM i_default;
-- DROP TABLE removes the stream.
DROP TABLE i_empty;
SELECT name FROM crsql_streams ORDER BY name;
