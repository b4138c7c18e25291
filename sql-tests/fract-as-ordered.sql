-- crsql_fract_as_ordered(table, order_col, collection_cols...) as in
-- cr-sqlite 0.16: an order value of -1 / 1 written by INSERT or UPDATE
-- becomes the first / last key of the row's collection; the view
-- <table>_fractindex has an after_<pk> column per primary-key column, and
-- writing it places the row right after that row.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE todo (id INTEGER PRIMARY KEY NOT NULL, list TEXT, title TEXT, position);
SELECT crsql_as_crr('todo');
SELECT quote(crsql_fract_as_ordered('todo', 'position', 'list'));
SELECT type, name FROM sqlite_master WHERE name LIKE '%fractindex%' ORDER BY name;
-- Append (1) and prepend (-1), each list on its own; rows of one INSERT in order.
INSERT INTO todo VALUES (1, 'L', 'one', 1), (2, 'L', 'two', 1), (3, 'L', 'zero', -1), (4, 'M', 'm1', 1);
SELECT 'pend', id, list, position FROM todo ORDER BY list, position;
-- Insert after a row through the view: between it and the next key.
INSERT INTO todo_fractindex (id, list, title, after_id) VALUES (5, 'L', 'after one', 1);
SELECT 'after', id, list, position FROM todo ORDER BY list, position;
-- after_id naming no row: prepend.
INSERT INTO todo_fractindex (id, list, title, after_id) VALUES (6, 'L', 'first', NULL);
SELECT 'after NULL', id, position FROM todo WHERE list = 'L' ORDER BY position;
-- Move through the view, and with -1 / 1 on the table.
UPDATE todo_fractindex SET after_id = 2 WHERE id = 3;
SELECT 'move after', id, position FROM todo WHERE list = 'L' ORDER BY position;
UPDATE todo SET position = -1 WHERE id = 2;
UPDATE todo SET position = 1 WHERE id = 6;
SELECT 'move ends', id, position FROM todo WHERE list = 'L' ORDER BY position;
-- As in cr-sqlite, an UPDATE of the view that leaves after_id NULL moves the row first.
UPDATE todo_fractindex SET title = 'renamed' WHERE id = 5;
SELECT 'view update', id, title, position FROM todo WHERE list = 'L' ORDER BY position;
-- Every key the triggers wrote is a tracked change like any other.
SELECT 'changes', count(*) FROM crsql_changes WHERE cid = 'position';
-- A row with no collection value: NULL is a collection of its own.
INSERT INTO todo VALUES (7, NULL, 'n1', 1), (8, NULL, 'n2', 1), (9, NULL, 'n0', -1);
SELECT 'null list', id, position FROM todo WHERE list IS NULL ORDER BY position;

-- cr-sqlite's integration test (tests/fract.rs, sort_no_list_col): no
-- collection column, shared keys; moving 5 after 2 moves 2 down to a key
-- between the previous distinct key and its own, and 5 between the two.
CREATE TABLE t2 (id PRIMARY KEY NOT NULL, position);
SELECT quote(crsql_fract_as_ordered('t2', 'position'));
INSERT INTO t2 VALUES (1, 'Zm'), (2, 'ZmG'), (3, 'ZmG'), (4, 'ZmV'), (5, 'Zn');
UPDATE t2_fractindex SET after_id = 2 WHERE id = 5;
SELECT 't2', id, position FROM t2 ORDER BY position, id;
-- The same conflict through an INSERT into the view, in a collection.
CREATE TABLE t3 (id PRIMARY KEY NOT NULL, list, position);
SELECT quote(crsql_fract_as_ordered('t3', 'position', 'list'));
INSERT INTO t3 VALUES (1, 'a', 'a0'), (2, 'a', 'a0'), (3, 'a', 'a1'), (4, 'b', 'Zz'), (5, 'b', 'a0');
INSERT INTO t3_fractindex (id, list, after_id) VALUES (6, 'a', 1);
SELECT 't3', id, list, position FROM t3 ORDER BY list, position, id;
SELECT 'fix', crsql_fract_fix_conflict_return_old_key('t3', 'position', 'list', -1, 'id', 3);
SELECT 't3 fixed', id, list, position FROM t3 ORDER BY list, position, id;

-- Composite primary key, WITHOUT ROWID, two collection columns, names
-- that need quoting.
CREATE TABLE "my ""list""" ("a id" NOT NULL, b NOT NULL, "g 1", g2, "pos'n", PRIMARY KEY ("a id", b)) WITHOUT ROWID;
SELECT crsql_as_crr('my "list"');
SELECT quote(crsql_fract_as_ordered('my "list"', 'pos''n', 'g 1', 'g2'));
INSERT INTO "my ""list""" VALUES (1, 1, 'x', 'y', 1), (1, 2, 'x', 'y', 1), (2, 1, 'x', 'z', 1);
INSERT INTO "my ""list""_fractindex" ("a id", b, "g 1", g2, "after_a id", after_b) VALUES (3, 3, 'x', 'y', 1, 1);
INSERT INTO "my ""list""" VALUES (4, 4, 'x', 'y', (SELECT "pos'n" FROM "my ""list""" WHERE "a id" = 1 AND b = 2));
INSERT INTO "my ""list""_fractindex" ("a id", b, "g 1", g2, "after_a id", after_b) VALUES (5, 5, 'x', 'y', 1, 2);
SELECT 'composite', "a id", b, "g 1", g2, "pos'n" FROM "my ""list""" ORDER BY "g 1", g2, "pos'n", "a id";

-- Calling it again replaces the triggers and the view (here: no collection).
SELECT quote(crsql_fract_as_ordered('todo', 'position'));
INSERT INTO todo VALUES (10, 'M', 'last of all', 1);
SELECT 'again', id, list, position FROM todo WHERE id = 10;
SELECT 'objects', count(*) FROM sqlite_master WHERE name LIKE '%todo_fractindex%';
