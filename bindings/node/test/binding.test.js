'use strict';
// Tests of the crsql-stream Node package, as installed from its tarball.
//
// `make node-binding-test` packs bindings/node (with the extension in lib/),
// installs the tarball and better-sqlite3 into target/node-test and runs these
// with NODE_PATH pointing there and $CRSQL_STREAM_EXT unset, so only the
// library inside the package can be loaded.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const os = require('os');
const nodePath = require('path');
const Database = require('better-sqlite3');
const crsql = require('crsql-stream');
const layout = require('./layout');

const { SqliteError } = Database;

const SCHEMA =
  'CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0)';

function newDb(file = ':memory:') {
  const db = layout.connect(file);
  db.exec(SCHEMA);
  db.prepare("SELECT crsql_as_crr('todos')").get();
  return db;
}

function rows(db) {
  return db.prepare('SELECT id, title, done FROM todos ORDER BY id').raw().all();
}

/** The CRR metadata that must agree after a sync (db_version and seq are local). */
function crdtState(db) {
  return db
    .prepare('SELECT "table", pk, cid, val, col_version, site_id, cl FROM crsql_changes ORDER BY "table", pk, cid')
    .raw()
    .all();
}

function tempDir(t) {
  const dir = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'crsql-stream-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Record the SQL this database prepares from now on. */
function traced(db) {
  const seen = [];
  const prepare = db.prepare;
  db.prepare = function (sql) {
    seen.push(sql);
    return prepare.call(this, sql);
  };
  return seen;
}

test('path() is the library inside the installed package', () => {
  assert.equal(process.env.CRSQL_STREAM_EXT, undefined);
  const p = crsql.path();
  assert.ok(fs.statSync(p).isFile(), p);
  assert.equal(nodePath.basename(p), 'libcrsql_stream.so');
  const pkgDir = nodePath.dirname(require.resolve('crsql-stream/package.json'));
  assert.equal(p, nodePath.join(pkgDir, 'lib', 'libcrsql_stream.so'));
  // Installed from the tarball into node_modules, not linked to the source tree.
  assert.match(pkgDir, /node_modules[\\/]crsql-stream$/);
  assert.equal(fs.lstatSync(pkgDir).isSymbolicLink(), false);
  const manifest = JSON.parse(fs.readFileSync(nodePath.join(pkgDir, 'package.json'), 'utf8'));
  assert.equal(manifest.version, crsql.version);
  assert.ok(fs.statSync(nodePath.join(pkgDir, 'index.d.ts')).isFile());
});

test('load() into a better-sqlite3 Database', () => {
  const db = new Database(':memory:');
  assert.equal(crsql.load(db), db);
  assert.equal(db.prepare('SELECT crsql_version() AS v').get().v, crsql.version);
  assert.match(crsql.siteId(db), /^[0-9a-f]{32}$/);
  const seen = traced(db);
  crsql.load(db); // already loaded: nothing is loaded again
  assert.deepEqual(seen, ['SELECT crsql_version()']);
  crsql.close(db);
  assert.equal(db.open, false);
});

test('load() refuses what is not a better-sqlite3 Database, naming it', () => {
  for (const bad of [null, {}, { prepare() {} }, 'a.db']) {
    assert.throws(
      () => crsql.load(bad),
      (e) => e instanceof TypeError && /crsql-stream\.load: expected a better-sqlite3 Database/.test(e.message),
    );
  }
});

test('the bundled library wins over $CRSQL_STREAM_EXT', (t) => {
  const fake = nodePath.join(tempDir(t), 'libcrsql_stream.so');
  fs.writeFileSync(fake, 'not a shared library');
  process.env.CRSQL_STREAM_EXT = fake;
  t.after(() => delete process.env.CRSQL_STREAM_EXT);
  assert.notEqual(crsql.path(), fake);
  const db = crsql.load(new Database(':memory:'));
  assert.match(crsql.siteId(db), /^[0-9a-f]{32}$/);
  db.close();
});

test("SQLite refusing the library is the driver's SqliteError, naming the file", () => {
  const db = new Database(':memory:');
  db.loadExtension = () => {
    throw new SqliteError('not authorized', 'SQLITE_ERROR');
  };
  assert.throws(
    () => crsql.load(db),
    (e) =>
      e instanceof SqliteError &&
      e.code === 'SQLITE_ERROR' &&
      e.message === `crsql-stream.load: SQLite could not load ${crsql.path()}: not authorized`,
  );
  db.close();
});

test('connect() loads, and its close() runs crsql_finalize() first', () => {
  const db = newDb();
  assert.ok(db instanceof Database);
  db.prepare("INSERT INTO todos (id, title) VALUES ('t1', 'x')").run();
  Array.from(new crsql.Outbound(db, 'to_x').packages()); // fill the extension's statement cache
  const seen = traced(db);
  db.close();
  assert.deepEqual(seen, ['SELECT crsql_finalize()']);
  assert.equal(db.open, false);
  assert.throws(() => db.prepare('SELECT 1'), TypeError); // "The database connection is not open"
  db.close(); // twice is fine
});

test('close() on any database runs crsql_finalize(), then closes', () => {
  const db = crsql.load(new Database(':memory:'));
  const seen = traced(db);
  crsql.close(db);
  assert.deepEqual(seen, ['SELECT crsql_finalize()']);
  assert.equal(db.open, false);
  crsql.close(db); // twice is fine
});

test('a file database reopens after close()', (t) => {
  const file = nodePath.join(tempDir(t), 'a.db');
  let db = newDb(file);
  db.prepare("INSERT INTO todos (id, title) VALUES ('t1', 'x')").run();
  db.close();
  db = newDb(file);
  assert.deepEqual(rows(db), [['t1', 'x', 0]]);
  assert.equal(db.prepare('SELECT crsql_db_version() AS v').get().v, 1);
  db.close();
});

test('positions parse and compare', () => {
  assert.deepEqual(crsql.parsePosition('[12,3]'), [12, 3]);
  assert.ok(crsql.comparePositions('[2,0]', '[10,0]') < 0);
  assert.ok(crsql.comparePositions('[3,5]', '[3,4]') > 0);
  assert.equal(crsql.comparePositions('[3,4]', '[3,4]'), 0);
  for (const bad of ['', '[1]', '[1,-2]', '{"a":1}', '[1,2.5]', '[1.0,2]', '[1e0,2]', '[9223372036854775808,0]', 12]) {
    assert.throws(() => crsql.parsePosition(bad), TypeError, bad);
  }
  // What the extension accepts: spaces, and numbers up to 2^63 - 1 (compared exactly).
  assert.deepEqual(crsql.parsePosition(' [ 4 , 5 ] '), [4, 5]);
  assert.throws(() => crsql.parsePosition('[9007199254740993,0]'), RangeError);
  assert.ok(crsql.comparePositions('[9007199254740993,0]', '[9007199254740992,0]') > 0);
  assert.ok(crsql.comparePositions('[9223372036854775807,1]', '[9223372036854775807,0]') > 0);
});

test.describe('streams', () => {
  let a;
  let b;
  let aSite;
  test.beforeEach(() => {
    a = newDb();
    b = newDb();
    aSite = crsql.siteId(a);
    const insert = a.prepare('INSERT INTO todos (id, title) VALUES (?, ?)');
    for (let i = 0; i < 5; i++) insert.run(`t${i}`, `todo ${i}`);
  });
  test.afterEach(() => {
    a.close();
    b.close();
  });

  test('outbound and inbound by hand', () => {
    const out = new crsql.Outbound(a, 'to_b', { max_changes: 2 });
    const inb = new crsql.Inbound(b, 'from_a', { from: aSite });
    assert.equal(out.lastSent, '[0,0]');
    assert.equal(out.lastRetrieved, null);
    assert.equal(inb.lastApplied, '[0,0]');
    assert.equal(inb.sender, aSite);

    const first = Array.from(out.packages({ limit: 1 }));
    assert.equal(first.length, 1);
    const pkg = first[0];
    assert.ok(Buffer.isBuffer(pkg.data));
    assert.equal(pkg.since, '[0,0]');
    assert.deepEqual(crsql.parsePosition(pkg.cursor), [1, 1]);
    assert.deepEqual([pkg.changes, pkg.size], [2, pkg.data.length]);
    assert.equal(out.lastRetrieved, pkg.cursor);
    // Not acknowledged: produced again.
    assert.deepEqual(out.nextPackage().data, pkg.data);

    assert.equal(inb.apply(pkg), pkg.cursor);
    assert.equal(inb.apply(new Uint8Array(pkg.data)), pkg.cursor); // a duplicate is a no-op
    out.ack(inb.lastApplied);
    assert.equal(out.lastSent, pkg.cursor);
    out.ack('[0,0]'); // acknowledgements only move forward
    assert.equal(out.lastSent, pkg.cursor);

    // The iteration holds no statement open: acknowledging as we go works.
    const rest = [];
    for (const p of out.packages()) {
      rest.push(p);
      out.ack(inb.apply(p));
    }
    assert.ok(rest.length >= 2);
    assert.equal(rest[0].since, pkg.cursor);
    assert.deepEqual(
      rest.slice(1).map((p) => p.since),
      rest.slice(0, -1).map((p) => p.cursor),
    );
    assert.deepEqual(Array.from(out.packages()), []);
    assert.equal(out.nextPackage(), null);
    assert.deepEqual(rows(b), rows(a));
    assert.equal(a.inTransaction || b.inTransaction, false);

    // An existing stream is reopened, keeping its state and arguments.
    const again = new crsql.Outbound(a, 'to_b', { max_changes: 1000 });
    assert.equal(again.lastSent, out.lastSent);
  });

  test('packages after a position, and a limit', () => {
    const out = new crsql.Outbound(a, 'to_b', { max_changes: 1 });
    const cursors = Array.from(out.packages(), (p) => p.cursor);
    assert.equal(cursors.length, 10); // two changes (title, done) per inserted row
    assert.deepEqual(
      Array.from(out.packages({ after: cursors[1], limit: 2 }), (p) => p.cursor),
      cursors.slice(2, 4),
    );
    assert.deepEqual(Array.from(out.packages({ limit: 0 })), []);
    assert.throws(() => out.packages({ limit: -1 }).next(), TypeError);
  });

  test('JSON encoding and argument values', () => {
    const out = new crsql.Outbound(a, "to b's json", {
      encoding: 'json',
      tables: ['todos'],
      exclude_sites: [Buffer.from('0b'.repeat(16), 'hex')],
      local_only: false,
      max_changes: 100,
    });
    const inb = new crsql.Inbound(b, 'from a', { tables: 'todos' });
    const pkgs = Array.from(out.packages());
    assert.ok(pkgs.length > 0 && pkgs.every((p) => typeof p.data === 'string'));
    for (const p of pkgs) inb.apply(p.data);
    assert.deepEqual(rows(b), rows(a));
    const sql = a.prepare('SELECT sql FROM sqlite_master WHERE name = ?').get("to b's json").sql;
    assert.ok(sql.includes(`exclude_sites = '${'0b'.repeat(16)}'`), sql);
    assert.ok(sql.includes("local_only = '0'"), sql);
  });

  test("a bad argument throws the extension's error", () => {
    assert.throws(
      () => new crsql.Outbound(a, 'bad', { max_changes: 0 }),
      (e) =>
        e instanceof SqliteError &&
        e.message.includes('crsql_OutboundStream bad: max_changes must be an integer from 1 to 10000000, got "0"'),
    );
    assert.throws(() => new crsql.Outbound(a, 'bad', { 'max changes': 1 }), TypeError);
    assert.throws(() => new crsql.Outbound(a, 'bad', { max_changes: 1.5 }), TypeError);
    assert.throws(() => new crsql.Outbound(a, '', {}), TypeError);
    assert.equal(a.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'bad'").get().n, 0);
  });

  test('a name taken by another table is refused and never dropped', () => {
    a.exec('CREATE TABLE notes (x); INSERT INTO notes VALUES (1)');
    new crsql.Outbound(a, 'to_b');
    for (const [make, name, what] of [
      [(n) => new crsql.Outbound(a, n), 'todos', /not a stream/],
      [(n) => new crsql.Inbound(a, n), 'notes', /not a stream/],
      [(n) => new crsql.Inbound(a, n), 'To_B', /an outbound stream/],
      [(n) => new crsql.Outbound(a, n), 'crsql_changes', /reserved/],
    ]) {
      assert.throws(() => make(name), what, name);
    }
    assert.equal(rows(a).length, 5);
    assert.deepEqual(a.prepare('SELECT x FROM notes').raw().all(), [[1]]);
    assert.ok(crdtState(a).length > 0);
    // drop() checks again: a stream replaced by a plain table is left alone.
    const inb = new crsql.Inbound(a, 'swap');
    a.exec('DROP TABLE swap; CREATE TABLE swap (kept)');
    assert.throws(() => inb.drop(), /not a stream/);
    assert.equal(a.prepare('SELECT count(*) AS n FROM swap').get().n, 0);
  });

  test('a stream opened in another case is the same stream', () => {
    const out = new crsql.Outbound(a, 'To_B', { max_changes: 1 });
    const same = new crsql.Outbound(a, 'to_b');
    const pkg = same.nextPackage();
    same.ack(pkg);
    assert.equal(out.lastSent, pkg.cursor);
    assert.equal(same.lastSent, pkg.cursor);
  });

  test('bad helper arguments throw at the call', () => {
    const out = new crsql.Outbound(a, 'to_b');
    for (const args of [new Map([['max_changes', 1]]), 42, 'max_changes=1', []]) {
      assert.throws(() => new crsql.Outbound(a, 'm', args), TypeError);
    }
    assert.equal(a.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'm'").get().n, 0);
    for (const options of [5, 'x', { limit: -1 }, { limit: 1.5 }, { after: 7 }]) {
      assert.throws(() => out.packages(options), TypeError, JSON.stringify(options));
    }
    assert.equal([...out.packages(null)].length, 1); // null: the defaults
    for (const options of [{ batch: 0 }, { maxRounds: 0 }, { batch: -1 }, { batch: 1.5 }, 3]) {
      assert.throws(() => crsql.sync(a, b, options), TypeError, JSON.stringify(options));
    }
    assert.throws(() => crsql.pump(out, new crsql.Inbound(b, 'from_a'), 0), TypeError);
  });

  test("a corrupted package throws SqliteError with the extension's message and changes nothing", () => {
    const out = new crsql.Outbound(a, 'to_b');
    const inb = new crsql.Inbound(b, 'from_a');
    const pkg = out.nextPackage();
    const bad = Buffer.from(pkg.data);
    bad[bad.length >> 1] ^= 0x40;
    assert.throws(
      () => inb.apply(bad),
      (e) => {
        assert.ok(e instanceof SqliteError, e);
        assert.equal(e.code, 'SQLITE_ERROR');
        assert.ok(e.message.startsWith('crsql_InboundStream from_a: '), e.message);
        assert.match(e.message, /checksum mismatch/);
        return true;
      },
    );
    assert.throws(() => inb.apply(Buffer.from([0])), /crsql_InboundStream from_a: package truncated/);
    assert.throws(() => inb.apply(42), TypeError);
    // Nothing changed, and no transaction was left open.
    assert.equal(inb.lastApplied, '[0,0]');
    assert.equal(inb.sender, null);
    assert.deepEqual(rows(b), []);
    assert.equal(b.inTransaction, false);
    // The intact package still applies.
    inb.apply(pkg);
    assert.deepEqual(rows(b), rows(a));
  });

  test('a gap throws with both positions', () => {
    const out = new crsql.Outbound(a, 'to_b', { max_changes: 1 });
    const inb = new crsql.Inbound(b, 'from_a');
    const pkgs = Array.from(out.packages());
    assert.throws(
      () => inb.apply(pkgs[1]),
      (e) => e instanceof SqliteError && e.message.includes(`gap: expected a package starting at [0,0], got ${pkgs[1].since}`),
    );
  });

  test("apply() joins the caller's transaction", () => {
    const out = new crsql.Outbound(a, 'to_b');
    const inb = new crsql.Inbound(b, 'from_a');
    const pkg = out.nextPackage();
    const attempt = b.transaction(() => {
      inb.apply(pkg);
      assert.equal(b.inTransaction, true); // not committed by the helper
      throw new Error('roll back');
    });
    assert.throws(attempt, /roll back/);
    assert.equal(inb.lastApplied, '[0,0]');
    assert.deepEqual(rows(b), []);
    b.transaction(() => inb.apply(pkg))();
    assert.deepEqual(rows(b), rows(a));
  });

  test('drop() deletes the stream', () => {
    const out = new crsql.Outbound(a, 'to_b');
    out.drop();
    assert.equal(a.prepare("SELECT count(*) AS n FROM crsql_streams WHERE name = 'to_b'").get().n, 0);
    assert.throws(() => out.lastSent, /no stream named to_b/);
  });
});

test.describe('sync', () => {
  test('two peers sync both ways until quiet, and resume after reopening', (t) => {
    const dir = tempDir(t);
    let a = newDb(nodePath.join(dir, 'a.db'));
    let b = newDb(nodePath.join(dir, 'b.db'));
    a.exec("INSERT INTO todos VALUES ('t1', 'buy milk', 0), ('t2', 'write the report', 0)");
    a.exec("UPDATE todos SET done = 1 WHERE id = 't1'");
    b.exec("INSERT INTO todos VALUES ('t3', 'call mum', 0)");
    b.exec("INSERT INTO todos VALUES ('t2', 'write the REPORT', 1)"); // concurrent insert
    const insA = a.prepare('INSERT INTO todos (id, title) VALUES (?, ?)');
    const insB = b.prepare('INSERT INTO todos (id, title) VALUES (?, ?)');
    for (let i = 0; i < 30; i++) {
      // a backlog bigger than one package
      insA.run(`a${String(i).padStart(2, '0')}`, 'from a');
      insB.run(`b${String(i).padStart(2, '0')}`, 'from b');
    }

    const moved = crsql.sync(a, b, { outbound: { max_changes: 4 } });
    assert.ok(moved > 15, `moved ${moved}`);
    assert.equal(rows(a).length, 63);
    assert.deepEqual(rows(a), rows(b));
    assert.deepEqual(crdtState(a), crdtState(b));
    assert.equal(crsql.sync(a, b), 0); // quiet

    // Every stream has caught up.
    for (const db of [a, b]) {
      const lag = db.prepare("SELECT name, lag_versions FROM crsql_streams WHERE direction = 'outbound'").raw().all();
      assert.deepEqual(
        lag.map((x) => x[1]),
        [0],
        JSON.stringify(lag),
      );
    }

    // Later edits, after reopening both files: sync resumes from the stored positions.
    a.close();
    b.close();
    a = newDb(nodePath.join(dir, 'a.db'));
    b = newDb(nodePath.join(dir, 'b.db'));
    a.exec("DELETE FROM todos WHERE id = 't3'");
    b.exec("UPDATE todos SET title = 'call dad' WHERE id = 't3'");
    b.exec("INSERT INTO todos (id, title) VALUES ('t4', 'new')");
    const again = crsql.sync(b, a);
    assert.ok(again > 0 && again < 10, `moved ${again}`); // only the new changes travelled
    assert.deepEqual(rows(a), rows(b));
    assert.deepEqual(crdtState(a), crdtState(b));
    assert.ok(!rows(a).some((r) => r[0] === 't3')); // the delete wins (causal length)
    assert.equal(crsql.sync(a, b), 0);
    a.close();
    b.close();
  });

  test('sync reports progress from lag_changes', () => {
    const a = newDb();
    const b = newDb();
    const insA = a.prepare("INSERT INTO todos (id, title) VALUES (?, 'from a')");
    const insB = b.prepare("INSERT INTO todos (id, title) VALUES (?, 'from b')");
    for (let i = 0; i < 40; i++) insA.run(`a${i}`);
    for (let i = 0; i < 10; i++) insB.run(`b${i}`);
    const count = (db) => db.prepare('SELECT count(*) AS n FROM crsql_changes').get().n;
    const expected = count(a) + count(b);
    const calls = [];
    crsql.sync(a, b, { batch: 2, outbound: { max_changes: 5 }, progress: (done, total) => calls.push([done, total]) });
    assert.deepEqual(calls[0], [0, expected]);
    assert.deepEqual(calls[calls.length - 1], [expected, expected]);
    assert.ok(calls.length > 5, `${calls.length} calls`);
    for (let i = 1; i < calls.length; i++) {
      assert.ok(calls[i][0] >= calls[i - 1][0] && calls[i][1] >= calls[i - 1][1], JSON.stringify(calls));
      assert.ok(calls[i][0] <= calls[i][1], JSON.stringify(calls));
    }
    for (const db of [a, b]) {
      const lags = db.prepare("SELECT lag_changes AS v FROM crsql_streams WHERE direction = 'outbound'").all();
      assert.deepEqual(lags.map((r) => r.v), [0]);
    }
    assert.throws(() => crsql.sync(a, b, { progress: 42 }), { name: 'TypeError', message: /progress must be a function/ });
    crsql.close(a);
    crsql.close(b);
  });

  test('sync refuses the same database twice', (t) => {
    const file = nodePath.join(tempDir(t), 'a.db');
    const a = newDb(file);
    const a2 = newDb(file);
    assert.throws(() => crsql.sync(a, a2), /both databases are the same database/);
    a.close();
    a2.close();
  });

  test('sync sets exclude_sites itself', () => {
    const a = newDb();
    const b = newDb();
    assert.throws(
      () => crsql.sync(a, b, { outbound: { exclude_sites: crsql.siteId(b) } }),
      { name: 'TypeError', message: /exclude_sites is set by sync/ },
    );
    assert.equal(a.prepare('SELECT count(*) AS n FROM crsql_streams').get().n, 0);
    crsql.close(a);
    crsql.close(b);
  });

  test('sync stops after maxRounds and keeps what moved', () => {
    const a = newDb();
    const b = newDb();
    const insert = a.prepare("INSERT INTO todos (id, title) VALUES (?, 'x')");
    for (let i = 0; i < 6; i++) insert.run(`t${i}`); // six transactions of two changes (title, done)
    // max_changes: 2 puts one transaction in a package; batch: 1 moves one package a round.
    assert.throws(
      () => crsql.sync(a, b, { maxRounds: 2, batch: 1, outbound: { max_changes: 2 } }),
      /still moving packages after 2 rounds/,
    );
    assert.equal(rows(b).length, 2);
    assert.ok(crsql.sync(a, b) > 0);
    assert.deepEqual(rows(b), rows(a));
    crsql.close(a);
    crsql.close(b);
  });
});
