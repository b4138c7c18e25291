-- crsql_package_info(package): the header of a package (binary or JSON) as
-- JSON text: format, bytes, sender, stream_id, stream, since, cursor, part,
-- changes, tables (name, schema_hash, columns) and sites. The stream_id is
-- random, so it is removed before printing.
.bail off
.mode list
.nullvalue NULL
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, done INTEGER);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('notes');
CREATE VIRTUAL TABLE o USING crsql_OutboundStream;
CREATE VIRTUAL TABLE o_json USING crsql_OutboundStream(encoding = 'json');
CREATE VIRTUAL TABLE o_split USING crsql_OutboundStream(max_changes = 2);
INSERT INTO todos VALUES (1, 'one', 0);
INSERT INTO notes VALUES (1, 'note');
INSERT INTO crsql_changes VALUES ('todos', crsql_pack_columns(2), 'title', 'from b', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
DELETE FROM todos WHERE id = 1;
SELECT json_remove(crsql_package_info(package), '$.stream_id') FROM o;
SELECT json_remove(crsql_package_info(package), '$.stream_id') FROM o_json;
SELECT length(json_extract(crsql_package_info(package), '$.stream_id')) FROM o;
SELECT json_extract(crsql_package_info(package), '$.bytes') = bytes FROM o;
SELECT json_remove(crsql_package_info(package), '$.stream_id', '$.tables', '$.sites') FROM o_split;
-- Errors.
SELECT crsql_package_info(NULL);
SELECT crsql_package_info(42);
SELECT crsql_package_info(4.5);
SELECT crsql_package_info('not a package');
SELECT crsql_package_info(X'');
SELECT crsql_package_info(X'4352535001');
SELECT crsql_package_info(zeroblob(100));
SELECT crsql_package_info();
SELECT crsql_package_info(X'00', X'00');
