-- crsql_unpack_columns(packed) is an eponymous table-valued function with one
-- row per packed value, rowid = index, cell = the value with its type
-- (spec §10).
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT rowid, quote(cell), typeof(cell) FROM crsql_unpack_columns(crsql_pack_columns(1, 'two', 3.5, X'04', NULL, -7, '')) ORDER BY rowid;
SELECT rowid, cell FROM crsql_unpack_columns WHERE package = X'0209010B0161' ORDER BY rowid;
SELECT 'count 0', count(*) FROM crsql_unpack_columns(X'00');
SELECT 'zero-extended', cell FROM crsql_unpack_columns(X'0109C8') ORDER BY rowid;
SELECT 'int min', cell FROM crsql_unpack_columns(X'01418000000000000000') ORDER BY rowid;
-- Bytes after the declared values are ignored (spec §9).
SELECT 'trailing', cell FROM crsql_unpack_columns(X'010901FFFF') ORDER BY rowid;
-- Round trip through a pk from crsql_changes.
CREATE TABLE foo(a NOT NULL, b NOT NULL, c, PRIMARY KEY (a, b));
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (-3, 'é', 1);
SELECT u.rowid, u.cell, typeof(u.cell) FROM crsql_changes AS c, crsql_unpack_columns(c.pk) AS u ORDER BY u.rowid;
-- Errors: malformed input is an error, never a crash (spec §15 Q8 fixed).
SELECT 'empty', cell FROM crsql_unpack_columns(X'');
SELECT 'truncated int', cell FROM crsql_unpack_columns(X'0111FF');
SELECT 'truncated count', cell FROM crsql_unpack_columns(X'020901');
SELECT 'truncated text', cell FROM crsql_unpack_columns(X'010B0561');
SELECT 'type 0', cell FROM crsql_unpack_columns(X'0100');
SELECT 'type 6', cell FROM crsql_unpack_columns(X'0106');
SELECT 'type 7', cell FROM crsql_unpack_columns(X'0107');
SELECT 'int width 9', cell FROM crsql_unpack_columns(X'014901020304050607080900');
SELECT 'text width 5', cell FROM crsql_unpack_columns(X'012B0000000001');
SELECT 'bad utf-8', cell FROM crsql_unpack_columns(X'010B02FFFE');
SELECT 'text arg', cell FROM crsql_unpack_columns('abc');
SELECT 'null arg', cell FROM crsql_unpack_columns(NULL);
SELECT 'no arg', cell FROM crsql_unpack_columns;
SELECT 'other constraint', cell FROM crsql_unpack_columns WHERE cell = 1;
-- It is eponymous-only.
CREATE VIRTUAL TABLE u USING crsql_unpack_columns;
