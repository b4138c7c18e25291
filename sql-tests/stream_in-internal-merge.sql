-- crsql_internal_merge is how crsql_InboundStream merges a package (one
-- journaled statement, DECISIONS D10 and the batch merge entry); it has
-- no rows and refuses writes from anything else.
.bail off
.load EXT
CREATE TABLE todos (id INTEGER PRIMARY KEY NOT NULL, title TEXT);
SELECT crsql_as_crr('todos');
SELECT count(*) FROM crsql_internal_merge;
INSERT INTO crsql_internal_merge(package) VALUES (x'00');
INSERT INTO crsql_internal_merge(package) SELECT NULL;
SELECT count(*) FROM todos;
SELECT count(*) FROM crsql_changes;
