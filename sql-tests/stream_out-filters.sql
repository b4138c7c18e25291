-- Outbound filters (docs/streams.md "crsql_OutboundStream"): exclude_sites,
-- local_only and tables skip changes but never create gaps: each package's
-- since is the previous package's cursor, and a cursor covers the skipped
-- changes too, so acknowledging it never re-sends them.
.bail off
.mode list
.nullvalue NULL
.open a.db
.load EXT
UPDATE crsql_site_id SET site_id = X'0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a' WHERE ordinal = 0;
SELECT crsql_finalize();
.open a.db
.load EXT
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT);
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body TEXT);
SELECT crsql_as_crr('todos');
SELECT crsql_as_crr('notes');
CREATE VIRTUAL TABLE o_all USING crsql_OutboundStream(max_changes = 2);
CREATE VIRTUAL TABLE o_not_b USING crsql_OutboundStream(max_changes = 2, exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
CREATE VIRTUAL TABLE o_not_bc USING crsql_OutboundStream(max_changes = 2, exclude_sites = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b,0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c');
CREATE VIRTUAL TABLE o_local USING crsql_OutboundStream(max_changes = 2, local_only = 1);
CREATE VIRTUAL TABLE o_notes USING crsql_OutboundStream(max_changes = 2, tables = 'notes');
CREATE VIRTUAL TABLE o_todos USING crsql_OutboundStream(max_changes = 2, tables = 'todos');
CREATE VIRTUAL TABLE o_mix USING crsql_OutboundStream(max_changes = 2, tables = 'todos', exclude_sites = '0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c');
-- db_version 1: local; 2: merged from site 0b; 3: merged from site 0c;
-- 4: local notes; 5: local todo and a change merged from 0b.
INSERT INTO todos VALUES (1, 'local 1');
INSERT INTO crsql_changes VALUES ('todos', crsql_pack_columns(2), 'title', 'from b', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('todos', crsql_pack_columns(3), 'title', 'from c', 1, 1, X'0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c', 1, 0);
INSERT INTO notes VALUES (1, 'note 1'), (2, 'note 2');
BEGIN;
INSERT INTO todos VALUES (5, 'local 5');
INSERT INTO crsql_changes VALUES ('notes', crsql_pack_columns(3), 'body', 'note from b', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
COMMIT;
SELECT db_version, seq, "table", val, hex(site_id) FROM crsql_changes ORDER BY db_version, seq;
-- Every stream's packages: positions stay contiguous whatever is skipped.
SELECT 'o_all', cursor, since, changes FROM o_all;
SELECT 'o_not_b', cursor, since, changes FROM o_not_b;
SELECT 'o_not_bc', cursor, since, changes FROM o_not_bc;
SELECT 'o_local', cursor, since, changes FROM o_local;
SELECT 'o_notes', cursor, since, changes FROM o_notes;
SELECT 'o_todos', cursor, since, changes FROM o_todos;
SELECT 'o_mix', cursor, since, changes FROM o_mix;
-- What each stream carries.
SELECT 'o_all', c."table", c.val, hex(c.site_id) FROM o_all AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
SELECT 'o_not_b', c."table", c.val, hex(c.site_id) FROM o_not_b AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
SELECT 'o_not_bc', c."table", c.val, hex(c.site_id) FROM o_not_bc AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
SELECT 'o_local', c."table", c.val, hex(c.site_id) FROM o_local AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
SELECT 'o_notes', c."table", c.val, hex(c.site_id) FROM o_notes AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
SELECT 'o_todos', c."table", c.val, hex(c.site_id) FROM o_todos AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
SELECT 'o_mix', c."table", c.val, hex(c.site_id) FROM o_mix AS p, crsql_package_changes(p.package) AS c ORDER BY c.db_version, c.seq;
-- A package names only the tables and sites of the changes it carries.
SELECT 'o_not_b', cursor, crsql_package_info(package) -> '$.tables[#-1].name', crsql_package_info(package) -> '$.sites' FROM o_not_b;
-- A filtered stream's cursor covers the skipped changes: after acknowledging
-- it, nothing is pending.
INSERT INTO o_notes(last_sent) SELECT max(cursor) FROM o_notes;
SELECT count(*) FROM o_notes;
SELECT name, last_sent, lag_versions FROM crsql_streams WHERE name = 'o_notes';
-- Later changes to other tables only: the notes stream still moves on.
INSERT INTO todos VALUES (6, 'local 6');
SELECT 'o_notes', cursor, since, changes FROM o_notes;
-- Only changes from an excluded site after the acknowledged position: the
-- package that covers them carries no change but still moves the position on.
INSERT INTO o_not_b(last_sent) SELECT max(cursor) FROM o_not_b;
INSERT INTO crsql_changes VALUES ('todos', crsql_pack_columns(7), 'title', 'from b again', 1, 2, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT 'o_not_b', cursor, since, changes FROM o_not_b;
-- tables = 'todos' keeps following todos; a CRR created later is sent by
-- the streams without tables =.
CREATE TABLE later(id INTEGER PRIMARY KEY NOT NULL, x TEXT);
SELECT crsql_as_crr('later');
INSERT INTO later VALUES (1, 'later 1');
SELECT 'o_all', c."table", c.val FROM o_all AS p, crsql_package_changes(p.package) AS c WHERE c."table" = 'later' ORDER BY c.db_version, c.seq;
SELECT 'o_todos', count(*) FROM o_todos AS p, crsql_package_changes(p.package) AS c WHERE c."table" = 'later';
