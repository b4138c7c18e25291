#!/usr/bin/env node
'use strict';
// Sync a SQLite file with a crsql-sync hub (docs/server.md), in Node.
//
//   crsql-sync serve --data hub/data --schema-dir hub/schema --listen 127.0.0.1:8080 &
//   node examples/node/hub_sync.js --db a.db --url ws://127.0.0.1:8080/acme --insert t1='buy milk'
//   node examples/node/hub_sync.js --db b.db --url ws://127.0.0.1:8080/acme     # prints t1
//
// Needs crsql-stream (with its dependency ws) and better-sqlite3 installed.
// The database gets the `todos` table of the hub's schema file; each run
// pushes its own changes, pulls everyone else's, prints the table and exits
// (--watch: stays connected until Ctrl-C). Exit code 2 on a refusal of the
// hub (wrong token, other schema, …), 1 on other errors.

const { parseArgs } = require('util');
const crsql = require('crsql-stream');

const SCHEMA = `
CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);
SELECT crsql_as_crr('todos');
`;

async function main() {
  const { values: args } = parseArgs({
    options: {
      db: { type: 'string' },
      url: { type: 'string' },
      token: { type: 'string' },
      insert: { type: 'string', multiple: true, default: [] },
      watch: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '30' },
    },
  });
  if (!args.db || !args.url) {
    throw new Error('usage: hub_sync.js --db FILE --url ws://HOST:PORT/<tenant> [--token T] [--insert ID=TITLE] [--watch]');
  }
  const db = crsql.connect(args.db);
  db.exec(SCHEMA);
  const insert = db.prepare('INSERT OR REPLACE INTO todos (id, title) VALUES (?, ?)');
  for (const item of args.insert) {
    const at = item.indexOf('=');
    insert.run(item.slice(0, at), item.slice(at + 1));
  }
  try {
    if (args.watch) {
      const syncer = new crsql.hub.Syncer(db, args.url, { token: args.token, onError: (e) => console.error(String(e)) });
      syncer.start();
      await new Promise((resolve) => process.once('SIGINT', resolve));
      await syncer.stop();
      return 0;
    }
    const moved = await crsql.hub.sync(db, args.url, {
      token: args.token,
      timeout: Number(args.timeout) * 1000,
      progress: (done, total) => process.stderr.write(`\r${done}/${total} changes`),
    });
    console.error(`\npushed ${moved.pushed}, pulled ${moved.pulled} changes`);
  } catch (e) {
    if (!(e instanceof crsql.hub.HubError)) throw e;
    console.error(`\nhub_sync: ${e.name}: ${e.message}`);
    return e.fatal ? 2 : 1;
  }
  for (const row of db.prepare('SELECT id, title FROM todos ORDER BY id').all()) console.log(`${row.id}\t${row.title}`);
  db.close();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`hub_sync: ${e.stack || e}`);
    process.exit(1);
  },
);
