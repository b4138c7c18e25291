'use strict';
// crsql-stream's hub client against the real hub: dist/crsql-sync
// (`make hub`) as a process on 127.0.0.1 with a temporary data directory and
// an auth file. Two clients sync through it, a Syncer reconnects after the
// hub is SIGKILLed and restarted on the same port, and the protocol's error
// codes arrive as their typed errors. Then a Node client and a Python one
// (crsql_stream.hub, with the venv of `make py-binding-test`) through one hub.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const nodePath = require('path');
const crsql = require('crsql-stream');
const layout = require('./layout');

const { hub } = crsql;
const ROOT = nodePath.resolve(__dirname, '..', '..', '..');
const BIN = process.env.CRSQL_SYNC_BIN || nodePath.join(ROOT, 'dist', 'crsql-sync');
const PYTHON = process.env.CRSQL_STREAM_PYTHON;
const SCHEMA =
  'CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);\n' +
  "SELECT crsql_as_crr('todos');\n";
const TOKEN = 's3cret';
const WAIT = 30000; // ms at most for something that takes well under one second

class Hub {
  static async start(dir, port = 0) {
    const h = new Hub();
    h.dir = dir;
    const log = fs.openSync(nodePath.join(dir, 'hub.log'), 'a');
    h.child = spawn(
      BIN,
      ['serve', '--data', nodePath.join(dir, 'data'), '--schema-dir', nodePath.join(dir, 'schema'),
        '--auth', nodePath.join(dir, 'auth.toml'), '--listen', `127.0.0.1:${port}`],
      { stdio: ['ignore', 'pipe', log] },
    );
    fs.closeSync(log);
    h.exited = new Promise((resolve) => h.child.on('exit', resolve));
    const line = await new Promise((resolve) => {
      let buf = '';
      h.child.stdout.on('data', (d) => {
        buf += d;
        if (buf.includes('\n')) resolve(buf.split('\n')[0]);
      });
      h.child.on('exit', () => resolve(buf));
    });
    if (!line.startsWith('listening on ws://')) {
      throw new Error(`the hub did not start: ${line}\n${fs.readFileSync(nodePath.join(dir, 'hub.log'), 'utf8')}`);
    }
    h.port = Number(line.trim().split(':').pop());
    h.url = `ws://127.0.0.1:${h.port}/acme`;
    return h;
  }

  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

function setup() {
  assert.ok(fs.existsSync(BIN), `${BIN} is missing: build it with \`make hub\``);
  const dir = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'crsql-hub-node-'));
  fs.mkdirSync(nodePath.join(dir, 'schema'));
  fs.writeFileSync(nodePath.join(dir, 'schema', 'acme.sql'), SCHEMA);
  const digest = spawnSync(BIN, ['hash-token', TOKEN], { encoding: 'utf8' }).stdout.trim();
  fs.writeFileSync(nodePath.join(dir, 'auth.toml'), `[tenants.acme]\ntokens = [{ sha256 = "${digest}" }]\n`);
  return dir;
}

/** Run `fn(dir, hub)` with a hub started in a fresh directory; kill it and remove the directory after. */
async function withHub(fn) {
  const dir = setup();
  const state = { hub: await Hub.start(dir) };
  try {
    await fn(dir, state);
  } finally {
    await state.hub.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function openDb(dir, name, schema = SCHEMA) {
  const db = layout.connect(nodePath.join(dir, name));
  db.exec(schema);
  return db;
}

const rows = (db) => db.prepare('SELECT id, title FROM todos ORDER BY id').raw().all();

async function waitUntil(cond, what) {
  const deadline = Date.now() + WAIT;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not within ${WAIT} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('two clients sync through the hub, with progress', async () => {
  await withHub(async (dir, state) => {
    const h = state.hub;
    const a = openDb(dir, 'a.db');
    const b = openDb(dir, 'b.db');
    const ins = a.prepare('INSERT INTO todos (id, title) VALUES (?, ?)');
    a.transaction(() => {
      for (let i = 0; i < 50; i++) ins.run(`a${String(i).padStart(3, '0')}`, `from a ${i}`);
    })();
    b.prepare("INSERT INTO todos (id, title) VALUES ('b1', 'from b')").run();
    const calls = [];
    const pa = await hub.sync(a, h.url, { token: TOKEN, progress: (done, total) => calls.push([done, total]) });
    // 50 rows of 2 columns: 100 changes pushed.
    assert.deepEqual([pa.pushed, pa.pulled], [100, 0]);
    assert.deepEqual(calls.at(-1), [100, 100]);
    assert.ok(calls.every(([d, t]) => d >= 0 && d <= t), JSON.stringify(calls));
    const pulled = [];
    const pb = await hub.sync(b, h.url, { token: TOKEN, progress: (d, t) => pulled.push([d, t]) });
    assert.deepEqual([pb.pushed, pb.pulled], [2, 100]);
    assert.deepEqual(pulled.at(-1), [102, 102]);
    await hub.sync(a, h.url, { token: TOKEN });
    assert.equal(rows(a).length, 51);
    assert.deepEqual(rows(a), rows(b));
    const again = await hub.sync(a, h.url, { token: TOKEN, progress: () => {} });
    assert.deepEqual([again.pushed, again.pulled], [0, 0]);
    a.close();
    b.close();
  });
});

test('a Syncer reconnects after the hub is killed and restarted', async () => {
  await withHub(async (dir, state) => {
    let h = state.hub;
    const a = openDb(dir, 'a.db');
    const b = openDb(dir, 'b.db');
    const errors = [];
    const syncer = new hub.Syncer(b, h.url, { token: TOKEN, poll: 20, maxBackoff: 500, onError: (e) => errors.push(e) });
    syncer.start();
    a.prepare("INSERT INTO todos (id, title) VALUES ('t1', 'before')").run();
    await hub.sync(a, h.url, { token: TOKEN });
    await waitUntil(() => rows(b).length === 1, 'b got t1 through the Syncer');
    // A commit while connected is pushed within `poll`.
    b.prepare("INSERT INTO todos (id, title) VALUES ('t0', 'from b while connected')").run();
    const aHas = (n) => async () => {
      await hub.sync(a, h.url, { token: TOKEN, timeout: WAIT });
      return rows(a).length === n;
    };
    await waitUntil(aHas(2), 'a got t0 from the Syncer');
    const port = h.port;
    await h.kill();
    a.prepare("INSERT INTO todos (id, title) VALUES ('t2', 'while down')").run();
    b.prepare("INSERT INTO todos (id, title) VALUES ('t3', 'from b while down')").run();
    await waitUntil(() => errors.length > 0, 'the Syncer noticed the lost connection');
    h = state.hub = await Hub.start(dir, port);
    await hub.sync(a, h.url, { token: TOKEN, timeout: WAIT });
    await waitUntil(() => rows(b).length === 4, 'b got t2 after the restart');
    await waitUntil(aHas(4), 'a got t3 from b');
    assert.ok(syncer.running);
    await syncer.stop();
    assert.equal(syncer.running, false);
    assert.deepEqual(rows(a), rows(b));
    assert.ok(errors.every((e) => e instanceof hub.HubConnectionError), errors.map(String).join('\n'));
    a.close();
    b.close();
  });
});

test('error codes arrive as typed errors', async () => {
  await withHub(async (dir, state) => {
    const h = state.hub;
    const a = openDb(dir, 'a.db');
    await assert.rejects(hub.sync(a, h.url, { token: 'wrong', timeout: WAIT }), (e) => {
      assert.ok(e instanceof hub.UnauthorizedError && e instanceof hub.HubError, String(e));
      assert.equal(e.code, 'unauthorized');
      assert.equal(e.fatal, true);
      return true;
    });
    // A Syncer stops for good on it; stop() rejects with it.
    const s = new hub.Syncer(a, h.url, { token: 'wrong' }).start();
    await waitUntil(() => !s.running, 'the Syncer gave up');
    await assert.rejects(s.stop(), hub.UnauthorizedError);
    const other = openDb(dir, 'other.db', "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT); SELECT crsql_as_crr('todos');");
    await assert.rejects(hub.sync(other, h.url, { token: TOKEN, timeout: WAIT }), hub.SchemaMismatchError);
    // Retryable: a hub that is gone, until the retries or the time run out.
    const port = h.port;
    await h.kill();
    const gone = `ws://127.0.0.1:${port}/acme`;
    await assert.rejects(hub.sync(a, gone, { token: TOKEN, maxRetries: 2, maxBackoff: 50 }), (e) => {
      assert.ok(e instanceof hub.HubConnectionError && e.code === null && !e.fatal, String(e));
      return true;
    });
    await assert.rejects(hub.sync(a, gone, { token: TOKEN, timeout: 300, maxBackoff: 50 }), hub.SyncTimeoutError);
    for (const [code, cls] of [['gap', hub.GapError], ['foreign_sender', hub.ForeignSenderError],
      ['resync_required', hub.ResyncRequiredError]]) {
      assert.throws(() => hub.decode(hub.errorFrame(code, 'why')), (e) => e instanceof cls && e.code === code && e.hubMessage === 'why');
    }
    assert.throws(() => hub.decode(hub.errorFrame('brand_new', 'x')), (e) => e.constructor === hub.HubError && !e.fatal);
    a.close();
    other.close();
  });
});

test('the documented hello bytes', () => {
  const hello = hub.helloFrame(
    Buffer.from('7a1cd6b1a6e44e3f9c2b5d8e0f112233', 'hex'),
    Buffer.from('5c0e2a3b4d6f708192a3b4c5d6e7f809', 'hex'),
    'acme',
    's3cret',
    [[Buffer.from('f434e185b3a94d04b0ede0edcdb8e448', 'hex'), [12n, 3n]]],
  );
  assert.equal(
    hello.toString('hex'),
    '014352535900017a1cd6b1a6e44e3f9c2b5d8e0f1122335c0e2a3b4d6f708192a3b4c5d6e7f80904' +
      '61636d65000673336372657400' +
      '01f434e185b3a94d04b0ede0edcdb8e448000000000000000c0000000000000003',
  );
});

test('a Node client and a Python client through one hub', { skip: !PYTHON && 'no CRSQL_STREAM_PYTHON' }, async () => {
  await withHub(async (dir, state) => {
    const h = state.hub;
    const a = openDb(dir, 'a.db');
    a.prepare("INSERT INTO todos (id, title) VALUES ('n1', 'from node')").run();
    await hub.sync(a, h.url, { token: TOKEN });
    const py = spawnSync(PYTHON, [nodePath.join(ROOT, 'examples', 'python', 'hub_sync.py'),
      '--db', nodePath.join(dir, 'p.db'), '--url', h.url, '--token', TOKEN, '--insert', 'p1=from python'],
    { encoding: 'utf8', env: { ...process.env, PYTHONPATH: '' } });
    assert.equal(py.status, 0, py.stdout + py.stderr);
    await hub.sync(a, h.url, { token: TOKEN });
    assert.deepEqual(rows(a), [['n1', 'from node'], ['p1', 'from python']]);
    a.close();
  });
});
