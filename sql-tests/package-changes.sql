-- crsql_package_changes(package): the changes of a package (binary or JSON)
-- as rows shaped like crsql_changes, so that
-- INSERT INTO crsql_changes SELECT * FROM crsql_package_changes(?) merges a
-- package by hand. Errors: no package argument, not a package.
.bail off
.mode list
.nullvalue NULL
.open b.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, done INTEGER);
SELECT crsql_as_crr('todos');
CREATE VIRTUAL TABLE o USING crsql_OutboundStream;
CREATE VIRTUAL TABLE o_json USING crsql_OutboundStream(encoding = 'json');
INSERT INTO todos VALUES (1, 'one', 0), (2, 'two', 1);
INSERT INTO crsql_changes VALUES ('todos', crsql_pack_columns(3), 'title', 'from c', 1, 1, X'0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c', 1, 0);
DELETE FROM todos WHERE id = 2;
UPDATE todos SET done = 1.5 WHERE id = 1;
-- The columns (package is HIDDEN).
SELECT name, type, hidden FROM pragma_table_xinfo('crsql_package_changes') ORDER BY cid;
-- The rows, and crsql_changes for comparison.
SELECT "table", hex(pk), cid, quote(val), col_version, db_version, hex(site_id), cl, seq FROM crsql_package_changes((SELECT package FROM o));
SELECT "table", hex(pk), cid, quote(val), col_version, db_version, hex(coalesce(site_id, crsql_site_id())), cl, seq FROM crsql_changes ORDER BY db_version, seq;
-- JSON packages give the same rows; the package = ? form works too.
SELECT count(*) FROM (
  SELECT * FROM crsql_package_changes((SELECT package FROM o))
  EXCEPT SELECT * FROM crsql_package_changes WHERE package = (SELECT package FROM o_json)
);
SELECT count(*) FROM crsql_package_changes WHERE package = (SELECT package FROM o_json);
ATTACH 'wire.db' AS wire;
CREATE TABLE wire.packets(name TEXT PRIMARY KEY, package);
INSERT INTO wire.packets SELECT 'bin', package FROM o;
-- Errors.
SELECT * FROM crsql_package_changes;
SELECT * FROM crsql_package_changes(NULL);
SELECT * FROM crsql_package_changes(42);
SELECT * FROM crsql_package_changes('not a package');
SELECT * FROM crsql_package_changes(X'00112233445566778899aabbccddeeff');
SELECT * FROM crsql_package_changes WHERE package > X'00';
-- Merging a package by hand on b.
.open b.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, done INTEGER);
SELECT crsql_as_crr('todos');
ATTACH 'wire.db' AS wire;
INSERT INTO crsql_changes SELECT * FROM crsql_package_changes((SELECT package FROM wire.packets WHERE name = 'bin'));
SELECT id, title, quote(done) FROM todos ORDER BY id;
SELECT "table", hex(pk), cid, quote(val), col_version, db_version, hex(site_id), cl, seq FROM crsql_changes ORDER BY db_version, seq;
-- Again: merging is idempotent.
INSERT INTO crsql_changes SELECT * FROM crsql_package_changes((SELECT package FROM wire.packets WHERE name = 'bin'));
SELECT crsql_db_version();
SELECT id, title, quote(done) FROM todos ORDER BY id;
