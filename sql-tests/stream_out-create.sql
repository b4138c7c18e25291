-- crsql_OutboundStream CREATE arguments (docs/streams.md "crsql_OutboundStream"):
-- every argument is optional; an unknown argument, a malformed value or a
-- table in tables that is not a CRR is an error at CREATE time that names
-- the argument, and a refused CREATE leaves no table and no stream behind.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
CREATE TABLE plain(id INTEGER PRIMARY KEY NOT NULL, x);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('notes');
-- Defaults: no argument list, and an empty one.
CREATE VIRTUAL TABLE o_default USING crsql_OutboundStream;
CREATE VIRTUAL TABLE o_empty USING crsql_OutboundStream();
-- Every argument (names are case-insensitive, values may be quoted or not).
CREATE VIRTUAL TABLE o_all USING crsql_OutboundStream(
  since         = '[0,0]',
  exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b, 0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c',
  local_only    = 0,
  tables        = 'todos,notes',
  max_changes   = 1000,
  max_bytes     = 1048576,
  encoding      = 'binary'
);
CREATE VIRTUAL TABLE o_json USING crsql_OutboundStream(encoding = json, LOCAL_ONLY = 1, Max_Changes = 5, since = "[7,2]");
CREATE VIRTUAL TABLE o_peer USING crsql_OutboundStream(exclude_sites = '0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B', tables = notes);
SELECT name, direction, peer, last_sent, last_retrieved, last_applied FROM crsql_streams ORDER BY name;
-- No change yet: no package.
SELECT count(*) FROM o_default;
-- The declared columns; last_sent and last_retrieved are HIDDEN.
SELECT name, type, hidden FROM pragma_table_xinfo('o_all') ORDER BY cid;
SELECT name, type, hidden FROM pragma_table_xinfo('o_json') ORDER BY cid;
-- Unknown argument.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(sinse = '[0,0]');
-- Argument without '='.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(local_only);
-- Malformed since.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(since = 'x');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(since = '[1]');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(since = '[1,2,3]');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(since = '[-1,0]');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(since = 12);
-- Bad exclude_sites hex.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(exclude_sites = 'zz');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b,0c0c');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(exclude_sites = 'zz0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
-- tables naming a non-CRR, a missing table, or nothing.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(tables = 'todos,plain');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(tables = 'missing');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(tables = '');
-- max_changes: 0, negative, not a number, too large.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_changes = 0);
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_changes = -5);
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_changes = 'many');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_changes = 1.5);
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_changes = 10000001);
-- max_bytes: 0, not a number, too large.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_bytes = 0);
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_bytes = '1MB');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(max_bytes = 1073741825);
-- encoding other than binary / json.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(encoding = 'cbor');
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(encoding = 'JSON');
-- local_only other than 0 / 1.
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(local_only = 2);
CREATE VIRTUAL TABLE bad USING crsql_OutboundStream(local_only = 'yes');
-- Stream tables live in the main database.
ATTACH 'other.db' AS other;
CREATE VIRTUAL TABLE other.bad USING crsql_OutboundStream;
-- None of the refused CREATEs left a table or a stream behind.
SELECT name FROM sqlite_master WHERE name = 'bad';
SELECT name FROM other.sqlite_master WHERE name = 'bad';
SELECT name FROM crsql_streams ORDER BY name;
-- DROP TABLE removes the stream; a new table of the same name is a new
-- stream that starts from its own since.
INSERT INTO todos VALUES (1, 'one');
INSERT INTO o_default(last_sent) VALUES ('[1,0]');
SELECT name, last_sent FROM crsql_streams WHERE name = 'o_default';
DROP TABLE o_default;
DROP TABLE o_empty;
SELECT name FROM crsql_streams ORDER BY name;
SELECT name FROM sqlite_master WHERE name IN ('o_default', 'o_empty') ORDER BY name;
CREATE VIRTUAL TABLE o_default USING crsql_OutboundStream;
SELECT name, last_sent FROM crsql_streams WHERE name = 'o_default';
SELECT cursor, since, changes FROM o_default;
