-- crsql_fract_key_between(a, b): a printable key strictly between a and b,
-- NULL = open end; keys byte-identical to cr-sqlite 0.16's. The vectors
-- are cr-sqlite's own (core/rs/fractindex-core/src/fractindex.rs, its
-- `key_between` test), derived by hand from the algorithm too (core/src/fract.rs).
.bail off
.mode list
.nullvalue NULL
.load EXT
-- 1-22: cr-sqlite's vectors; 23-26: integer parts rolling over to the next head.
WITH v(n, a, b) AS (VALUES
  (1, NULL, NULL),
  (2, NULL, 'a0'),
  (3, NULL, 'Zz'),
  (4, 'a0', NULL),
  (5, 'a1', NULL),
  (6, 'a0', 'a1'),
  (7, 'a1', 'a2'),
  (8, 'a0V', 'a1'),
  (9, 'Zz', 'a0'),
  (10, 'Zz', 'a1'),
  (11, NULL, 'Y00'),
  (12, 'bzz', NULL),
  (13, 'a0', 'a0V'),
  (14, 'a0', 'a0G'),
  (15, 'b125', 'b129'),
  (16, 'a0', 'a1V'),
  (17, 'Zz', 'a01'),
  (18, NULL, 'a0V'),
  (19, NULL, 'b999'),
  (20, NULL, 'A000000000000000000000000001'),
  (21, 'zzzzzzzzzzzzzzzzzzzzzzzzzzy', NULL),
  (22, 'zzzzzzzzzzzzzzzzzzzzzzzzzzz', NULL),
  (23, 'az', NULL),
  (24, NULL, 'b00'),
  (25, NULL, 'Z0'),
  (26, 'Yzz', NULL))
SELECT n, quote(a), quote(b), crsql_fract_key_between(a, b) FROM v ORDER BY n;
-- Appending ten times, then prepending ten times, from an empty list.
WITH RECURSIVE up(n, k) AS (SELECT 1, crsql_fract_key_between(NULL, NULL)
  UNION ALL SELECT n + 1, crsql_fract_key_between(k, NULL) FROM up WHERE n < 10)
SELECT group_concat(k, ' ') FROM up;
WITH RECURSIVE down(n, k) AS (SELECT 1, crsql_fract_key_between(NULL, NULL)
  UNION ALL SELECT n + 1, crsql_fract_key_between(NULL, k) FROM down WHERE n < 10)
SELECT group_concat(k, ' ') FROM down;
-- Inserting ten times right after the first key: keys grow one digit at a time.
WITH RECURSIVE mid(n, k) AS (SELECT 1, crsql_fract_key_between('a0', 'a1')
  UNION ALL SELECT n + 1, crsql_fract_key_between('a0', k) FROM mid WHERE n < 10)
SELECT group_concat(k, ' ') FROM mid;
-- Errors: the messages keep cr-sqlite's wording and name the key.
SELECT crsql_fract_key_between('a1', 'a0');
SELECT crsql_fract_key_between('a0', 'a0');
SELECT crsql_fract_key_between(NULL, 'A00000000000000000000000000');
SELECT crsql_fract_key_between('a00', NULL);
SELECT crsql_fract_key_between('0', '1');
SELECT crsql_fract_key_between('b1', NULL);
SELECT crsql_fract_key_between('a!', NULL);
SELECT crsql_fract_key_between('', NULL);
SELECT crsql_fract_key_between('b1é', NULL);
SELECT crsql_fract_key_between(1, NULL);
SELECT crsql_fract_key_between(NULL, X'6130');
SELECT crsql_fract_key_between('a0');
