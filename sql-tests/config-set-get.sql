-- crsql_config_set/crsql_config_get (spec §4, §15 Q6 fixed): only
-- 'merge-equal-values' exists; set accepts the INTEGER 0 or 1, returns what
-- it stored, persists it in crsql_master, and refuses anything else.
.bail off
.mode list
.nullvalue NULL
.load EXT
.open c.db
.load EXT
SELECT crsql_config_get('merge-equal-values');
SELECT crsql_config_set('merge-equal-values', 1);
SELECT crsql_config_get('merge-equal-values');
SELECT key, value, typeof(value) FROM crsql_master WHERE key LIKE 'config.%' ORDER BY key;
SELECT crsql_config_set('merge-equal-values', 0);
SELECT crsql_config_get('merge-equal-values');
SELECT crsql_config_set('merge-equal-values', 1);
-- Refused values leave the setting unchanged.
SELECT crsql_config_set('merge-equal-values', 'yes');
SELECT crsql_config_set('merge-equal-values', '1');
SELECT crsql_config_set('merge-equal-values', 2);
SELECT crsql_config_set('merge-equal-values', -1);
SELECT crsql_config_set('merge-equal-values', 1.0);
SELECT crsql_config_set('merge-equal-values', NULL);
SELECT crsql_config_set('merge-equal-values', X'01');
SELECT crsql_config_get('merge-equal-values');
SELECT key, value, typeof(value) FROM crsql_master WHERE key LIKE 'config.%' ORDER BY key;
-- Unknown names.
SELECT crsql_config_set('merge-equal-value', 1);
SELECT crsql_config_get('nope');
SELECT crsql_config_get(NULL);
SELECT crsql_config_set(1, 1);
SELECT crsql_config_get();
SELECT crsql_config_set('merge-equal-values');
-- The stored value is read back when the database is opened again.
.open c.db
.load EXT
SELECT 'reopened', crsql_config_get('merge-equal-values');
