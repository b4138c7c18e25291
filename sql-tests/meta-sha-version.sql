-- crsql_sha() is the git commit the library was built from and
-- crsql_version() our version (both fixed at build time); crsql_master
-- records the cr-sqlite 0.16.3 layout version 160300 (spec §4, §14.1).
.bail off
.mode list
.nullvalue NULL
.load EXT
SELECT typeof(crsql_sha()), length(crsql_sha()) > 0;
SELECT typeof(crsql_version()), crsql_version() GLOB '[0-9]*.[0-9]*.[0-9]*';
SELECT crsql_sha() = crsql_sha(), crsql_version() = crsql_version();
SELECT key, value, typeof(value) FROM crsql_master ORDER BY key;
SELECT crsql_sha(1);
SELECT crsql_version(1);
