-- Precondition 5 (spec §5.2): no checked foreign keys.
.bail off
.mode list
.nullvalue NULL
.load EXT
CREATE TABLE parent(id PRIMARY KEY NOT NULL);
CREATE TABLE child(id PRIMARY KEY NOT NULL, p REFERENCES parent(id));
SELECT crsql_as_crr('child');
CREATE TABLE child2(id PRIMARY KEY NOT NULL, p, FOREIGN KEY (p) REFERENCES parent(id));
SELECT crsql_as_crr('child2');
SELECT count(*) FROM sqlite_master WHERE name LIKE 'child%crsql%';
-- The parent itself has no foreign keys and is fine.
SELECT crsql_as_crr('parent');
