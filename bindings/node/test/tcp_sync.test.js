'use strict';
// The TCP example (examples/node/tcp_sync.js) as two real processes on
// 127.0.0.1: the connection is cut in the middle of a package frame, the
// cutting process exits and is started again, and both databases must end
// identical, every package applied exactly once, in one unbroken chain. Then
// the same protocol across languages: the Node example against the Python one
// (examples/python/tcp_sync.py).

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const nodePath = require('path');
const Database = require('better-sqlite3');
const crsql = require('crsql-stream');

const ROOT = nodePath.resolve(__dirname, '..', '..', '..');
const NODE_EXAMPLE = nodePath.join(ROOT, 'examples', 'node', 'tcp_sync.js');
const PYTHON_EXAMPLE = nodePath.join(ROOT, 'examples', 'python', 'tcp_sync.py');
// A Python with the crsql_stream wheel installed (`make node-binding-test`
// passes the venv of `make py-binding-test` when it exists).
const PYTHON = process.env.CRSQL_STREAM_PYTHON;
const EXIT_CUT = 3;
const TIMEOUT = 40; // seconds, per process; the whole test takes a few
const ROWS = 60; // per side, 5 per transaction
const MAX_CHANGES = 4; // small packages: many frames to cut between

class Proc {
  constructor(dir, name, command, args) {
    this.name = name;
    this.logPath = nodePath.join(dir, `${name}.log`);
    const log = fs.openSync(this.logPath, 'w');
    this.child = spawn(command, [...args, '--timeout', String(TIMEOUT), '--max-changes', String(MAX_CHANGES)], {
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve(code ?? signal)));
  }

  output() {
    return fs.readFileSync(this.logPath, 'utf8');
  }

  events() {
    return this.output()
      .split('\n')
      .filter((line) => line.trim())
      .map((line) => {
        try {
          return JSON.parse(line);
        } catch {
          return { event: 'text', line };
        }
      });
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function items(file) {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT id, label, n, note FROM items ORDER BY id').raw().all();
  } finally {
    db.close();
  }
}

function crdtState(file) {
  const db = crsql.connect(file);
  try {
    return db
      .prepare('SELECT "table", pk, cid, val, col_version, site_id, cl FROM crsql_changes ORDER BY "table", pk, cid')
      .raw()
      .all();
  } finally {
    db.close();
  }
}

/** A scratch directory and the processes of one scenario, cleaned up after it. */
function scenario(t) {
  const dir = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'crsql-stream-tcp-'));
  const procs = [];
  t.after(() => {
    for (const p of procs) p.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const s = {
    a: nodePath.join(dir, 'a.db'),
    b: nodePath.join(dir, 'b.db'),
    portFile: nodePath.join(dir, 'port'),
    start(name, args, python = false) {
      const p = python ? new Proc(dir, name, PYTHON, [PYTHON_EXAMPLE, ...args]) : new Proc(dir, name, process.execPath, [NODE_EXAMPLE, ...args]);
      procs.push(p);
      return p;
    },
    async port(proc) {
      const deadline = Date.now() + 15000;
      while (Date.now() < deadline) {
        if (fs.existsSync(s.portFile)) return fs.readFileSync(s.portFile, 'utf8').trim();
        if (proc.child.exitCode !== null) break;
        await sleep(20);
      }
      assert.fail(`${proc.name} did not start listening:\n${proc.output()}`);
    },
    async exits(proc, code) {
      const timer = setTimeout(() => proc.kill(), (TIMEOUT + 10) * 1000);
      const rc = await proc.exited;
      clearTimeout(timer);
      assert.equal(rc, code, `${proc.name} exited with ${rc}:\n${proc.output()}`);
    },
    /** Both files identical; each side's applied packages form one unbroken
     * chain from [0,0], with no package applied twice. */
    convergedExactlyOnce(receivers) {
      const [aItems, bItems] = [items(s.a), items(s.b)];
      assert.equal(aItems.length, 2 * ROWS + 1); // both sides' rows + the shared one
      assert.deepEqual(aItems, bItems);
      assert.deepEqual(crdtState(s.a), crdtState(s.b));
      for (const runs of receivers) {
        const events = runs.flatMap((p) => p.events());
        assert.deepEqual(
          events.filter((e) => e.event === 'duplicate'),
          [],
        );
        const applied = events.filter((e) => e.event === 'applied');
        assert.ok(applied.length > 0);
        assert.equal(applied[0].since, '[0,0]');
        for (let i = 1; i < applied.length; i++) {
          assert.equal(applied[i].since, applied[i - 1].cursor, `not one chain: ${JSON.stringify(applied.slice(i - 1, i + 1))}`);
        }
        assert.ok(applied.reduce((n, e) => n + e.changes, 0) >= ROWS);
      }
    },
  };
  return s;
}

const lostMidFrame = (proc) => proc.events().some((e) => e.event === 'lost' && /mid-(frame|payload)/.test(e.reason));
const sent = (proc) => proc.events().filter((e) => e.event === 'sent');

test('client cut mid-package and restarted', async (t) => {
  const s = scenario(t);
  const server = s.start('server', ['serve', '--db', s.a, '--port-file', s.portFile, '--insert', String(ROWS)]);
  const port = await s.port(server);
  const client1 = s.start('client1', ['connect', '--db', s.b, '--port', port, '--insert', String(ROWS), '--cut-after-packages', '3']);
  await s.exits(client1, EXIT_CUT);
  assert.ok(client1.events().some((e) => e.event === 'cut'), client1.output());
  // The server noticed the half frame and is accepting again; restart the client.
  const client2 = s.start('client2', ['connect', '--db', s.b, '--port', port]);
  await s.exits(client2, 0);
  await s.exits(server, 0);
  assert.ok(lostMidFrame(server), server.output());
  // The restarted client resumed where the server stopped: after the 3 packages.
  assert.equal(sent(client1).length, 3);
  assert.equal(sent(client2)[0].since, sent(client1)[2].cursor);
  s.convergedExactlyOnce([[server], [client1, client2]]);
});

test('server cut mid-package and restarted', async (t) => {
  const s = scenario(t);
  const server1 = s.start('server1', ['serve', '--db', s.a, '--port-file', s.portFile, '--insert', String(ROWS), '--cut-after-packages', '2']);
  const port = await s.port(server1);
  const client = s.start('client', ['connect', '--db', s.b, '--port', port, '--insert', String(ROWS)]);
  await s.exits(server1, EXIT_CUT);
  // The client survives the cut and keeps reconnecting; restart the server on the same port.
  const server2 = s.start('server2', ['serve', '--db', s.a, '--port', port]);
  await s.exits(server2, 0);
  await s.exits(client, 0);
  assert.ok(lostMidFrame(client), client.output());
  assert.ok(client.events().filter((e) => e.event === 'connected').length >= 2);
  s.convergedExactlyOnce([[server1, server2], [client]]);
});

test('a Node peer and a Python peer sync through the same protocol', { skip: PYTHON ? false : 'CRSQL_STREAM_PYTHON is not set (run through `make node-binding-test` after `make py-binding-test`)' }, async (t) => {
  const s = scenario(t);
  const server = s.start('python-server', ['serve', '--db', s.a, '--port-file', s.portFile, '--insert', String(ROWS)], true);
  const port = await s.port(server);
  const client1 = s.start('node-client1', ['connect', '--db', s.b, '--port', port, '--insert', String(ROWS), '--cut-after-packages', '5']);
  await s.exits(client1, EXIT_CUT);
  const client2 = s.start('node-client2', ['connect', '--db', s.b, '--port', port]);
  await s.exits(client2, 0);
  await s.exits(server, 0);
  assert.ok(lostMidFrame(server), server.output());
  s.convergedExactlyOnce([[server], [client1, client2]]);
});
