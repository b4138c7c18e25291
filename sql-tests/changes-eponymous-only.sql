-- crsql_changes is eponymous-only (spec §4): it exists on every connection
-- that loaded the extension, and CREATE VIRTUAL TABLE ... USING crsql_changes
-- fails.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE VIRTUAL TABLE x USING crsql_changes;
CREATE VIRTUAL TABLE IF NOT EXISTS y USING crsql_changes;
CREATE VIRTUAL TABLE temp.z USING crsql_changes;
SELECT 'created', count(*) FROM sqlite_master WHERE name IN ('x', 'y', 'z');
SELECT 'in temp', count(*) FROM sqlite_temp_master WHERE name = 'z';
SELECT 'module registered', count(*) FROM pragma_module_list WHERE name = 'crsql_changes';
SELECT 'usable', count(*) FROM crsql_changes;
SELECT 'main schema', count(*) FROM main.crsql_changes;
DROP TABLE crsql_changes;
SELECT 'still there', count(*) FROM crsql_changes;
