'use strict';
// The CRR layout the binding suites run on, as the harness does (DECISIONS
// D42): $CRSQL_TEST_LAYOUT is 'crsqlite' (the default) or 'compact'. Every
// database the suites open through connect() gets it as its `crr-layout`
// setting, so their crsql_as_crr calls create that layout. (node --test
// runs this file too: it has no tests.)

const crsql = require('crsql-stream');

const LAYOUT = process.env.CRSQL_TEST_LAYOUT || 'crsqlite';
if (!['crsqlite', 'compact'].includes(LAYOUT)) {
  throw new Error(`CRSQL_TEST_LAYOUT must be 'crsqlite' or 'compact', got ${JSON.stringify(LAYOUT)}`);
}

/** crsql.connect(), then the suites' layout (nothing is written for the
 * default, or when the database already has the setting). */
function connect(file) {
  const db = crsql.connect(file);
  if (LAYOUT !== 'crsqlite' && db.prepare("SELECT crsql_config_get('crr-layout')").pluck().get() !== LAYOUT) {
    db.prepare("SELECT crsql_config_set('crr-layout', ?)").get(LAYOUT);
  }
  return db;
}

module.exports = { LAYOUT, connect };
