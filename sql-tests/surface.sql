-- The registered surface: every crsql% function and module, and clset. Compare with the
-- checked-in list below; run.sh also fails when a name listed here is not
-- mentioned in any other test.
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT 'function', name FROM pragma_function_list WHERE name LIKE 'crsql%' GROUP BY name ORDER BY name;
SELECT 'module', name FROM pragma_module_list WHERE name LIKE 'crsql%' OR name = 'clset' ORDER BY name;
