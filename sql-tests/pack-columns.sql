-- crsql_pack_columns(v, ...) encodes values in the packed format of pk
-- blobs (spec §9). Every worked example of §9, as hex.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT 'int 1', hex(crsql_pack_columns(1));
SELECT 'int 0', hex(crsql_pack_columns(0));
SELECT 'int 200', hex(crsql_pack_columns(200));
SELECT 'int 256', hex(crsql_pack_columns(256));
SELECT 'int 65536', hex(crsql_pack_columns(65536));
SELECT 'int 2147483648', hex(crsql_pack_columns(2147483648));
SELECT 'int -1', hex(crsql_pack_columns(-1));
SELECT 'int -2147483648', hex(crsql_pack_columns(-2147483648));
SELECT 'text one', hex(crsql_pack_columns('one'));
SELECT 'text empty', hex(crsql_pack_columns(''));
SELECT 'text héllo', hex(crsql_pack_columns('héllo'));
SELECT 'text 300 a', length(crsql_pack_columns(replace(hex(zeroblob(300)), '00', 'a'))), substr(hex(crsql_pack_columns(replace(hex(zeroblob(300)), '00', 'a'))), 1, 14);
SELECT 'blob 0102', hex(crsql_pack_columns(X'0102'));
SELECT 'blob empty', hex(crsql_pack_columns(X''));
SELECT 'null', hex(crsql_pack_columns(NULL));
SELECT 'real 1.5', hex(crsql_pack_columns(1.5));
SELECT 'real -0.0', hex(crsql_pack_columns(-0.0));
SELECT 'composite 1, a', hex(crsql_pack_columns(1, 'a'));
SELECT 'composite 5, x', hex(crsql_pack_columns(5, 'x'));
SELECT 'composite 1, 2', hex(crsql_pack_columns(1, 2));
SELECT 'no args', hex(crsql_pack_columns());
-- Extremes.
SELECT 'int max', hex(crsql_pack_columns(9223372036854775807));
SELECT 'int min', hex(crsql_pack_columns(-9223372036854775808));
SELECT 'int 255', hex(crsql_pack_columns(255));
SELECT 'int 4294967296', hex(crsql_pack_columns(4294967296));
-- The type of a value is kept: 1, 1.0 and '1' pack differently.
SELECT 'types', hex(crsql_pack_columns(1, 1.0, '1', X'31'));
-- 127 values (the most a SQLite 3.40 function call can take).
SELECT 'many', length(crsql_pack_columns(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)), substr(hex(crsql_pack_columns(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)), 1, 8);
-- A packed pk is what crsql_changes reports.
CREATE TABLE foo(a NOT NULL, b NOT NULL, c, PRIMARY KEY (a, b));
SELECT crsql_as_crr('foo');
INSERT INTO foo VALUES (5, 'x', 1);
SELECT 'changes pk', pk = crsql_pack_columns(5, 'x') FROM crsql_changes ORDER BY db_version, seq;
