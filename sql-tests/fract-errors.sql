-- crsql_fract_as_ordered and crsql_fract_fix_conflict_return_old_key
-- refuse bad arguments with SQL errors, and change nothing then.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE todo (id PRIMARY KEY NOT NULL, list, position);
CREATE TABLE nopk (list, position);
SELECT crsql_fract_as_ordered('todo');
SELECT crsql_fract_as_ordered('nosuch', 'position');
SELECT crsql_fract_as_ordered('todo', 'nosuch');
SELECT crsql_fract_as_ordered('todo', 'position', 'list', 'nosuch');
SELECT crsql_fract_as_ordered('todo', 'id');
SELECT crsql_fract_as_ordered('nopk', 'position', 'list');
SELECT crsql_fract_as_ordered('todo', 2);
SELECT 'nothing created', count(*) FROM sqlite_master WHERE name LIKE '%fractindex%';
-- DIRECTONLY, as in cr-sqlite: not from a trigger or a view.
CREATE VIEW v AS SELECT crsql_fract_as_ordered('todo', 'position') AS x;
SELECT * FROM v;
-- The conflict fixer's arguments.
INSERT INTO todo VALUES (1, 'a', 'a0');
SELECT crsql_fract_fix_conflict_return_old_key('todo', 'position', 'list');
SELECT crsql_fract_fix_conflict_return_old_key('todo', 'position', 'list', 'id');
SELECT crsql_fract_fix_conflict_return_old_key('todo', 'position', 'list', -1, 'id');
SELECT crsql_fract_fix_conflict_return_old_key('todo', 'position', 'list', -1, 'id', 2);
UPDATE todo SET position = 7 WHERE id = 1;
SELECT crsql_fract_fix_conflict_return_old_key('todo', 'position', 'list', -1, 'id', 1);
SELECT 'unchanged', id, list, position FROM todo;
-- A non-key order value in the collection is an error, as in cr-sqlite.
SELECT crsql_fract_as_ordered('todo', 'position', 'list');
INSERT INTO todo VALUES (2, 'a', 1);
SELECT 'rows', count(*) FROM todo;
