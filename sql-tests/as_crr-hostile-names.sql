-- Table and column names with quotes, spaces and other characters work
-- everywhere: as_crr, triggers, crsql_changes and merges (spec §15 Q10 fixed).
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE "my tbl"("i""d" PRIMARY KEY NOT NULL, "it's" TEXT, "sp ace" INTEGER DEFAULT 0);
SELECT crsql_as_crr('my tbl');
CREATE TABLE "q'uote""d"(k NOT NULL, "[x]" TEXT, "-1x" TEXT, PRIMARY KEY (k));
SELECT crsql_as_crr('q''uote"d');
CREATE TABLE "select"("from" PRIMARY KEY NOT NULL, "where");
SELECT crsql_as_crr('select');
SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name;
INSERT INTO "my tbl" VALUES ('a"b', 'o''k', 7);
UPDATE "my tbl" SET "sp ace" = 8 WHERE "i""d" = 'a"b';
INSERT INTO "q'uote""d" VALUES (1, 'br[ack]et', 'neg');
INSERT INTO "select" VALUES ('f', 'w');
DELETE FROM "select";
SELECT "table", hex(pk), cid, val, col_version, db_version, cl, seq FROM crsql_changes ORDER BY db_version, seq;
-- Merge into the hostile tables.
INSERT INTO crsql_changes VALUES ('my tbl', crsql_pack_columns('z'), 'it''s', 'merged', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
INSERT INTO crsql_changes VALUES ('q''uote"d', crsql_pack_columns(2), '-1x', 'm', 1, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
SELECT * FROM "my tbl" ORDER BY 1;
SELECT * FROM "q'uote""d" ORDER BY 1;
-- Names are case-sensitive: a CRR named with other letter case is not found.
INSERT INTO crsql_changes VALUES ('MY TBL', crsql_pack_columns('z'), 'it''s', 'x', 9, 1, X'0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b', 1, 0);
-- Downgrade works too.
SELECT crsql_as_table('my tbl');
SELECT count(*) FROM sqlite_master WHERE name LIKE 'my tbl\_\_%' ESCAPE '\';
