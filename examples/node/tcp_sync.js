#!/usr/bin/env node
'use strict';
/*
 * Two processes sync their databases both ways over TCP with crsql_stream.
 *
 *     node tcp_sync.js serve   --db a.db --port 9077 --insert 20
 *     node tcp_sync.js connect --db b.db --port 9077 --insert 20
 *
 * The Node twin of examples/python/tcp_sync.py, speaking the same protocol
 * (a Node peer and a Python peer sync with each other). Each process owns one
 * database file with an `items` CRR, an outbound stream towards the peer
 * (`to_<peer site id>`, leaving out the peer's own changes) and an inbound
 * stream from it (`from_<peer site id>`). They talk on 127.0.0.1 only, and
 * stop by themselves once a round moves nothing (or after --timeout seconds).
 *
 * Frames: a 4-byte big-endian length, then the payload; the payload's first
 * byte says what it is:
 *
 *     H {"site": hex}          hello (both sides, first)
 *     A [db_version,seq]       "I have applied your packages up to here"
 *     P <package bytes>        one package of the sender's outbound stream
 *     E {"packages": n}        end of the sender's turn
 *     B                        bye: the client saw a quiet round
 *     X <message>              error; the sender stops
 *
 * After the hellos, each side sends A with its inbound stream's
 * `last_applied`; the peer acknowledges that on its outbound stream, so a
 * resumed session starts exactly where the receiver stopped. Then rounds: the
 * client sends its pending packages and E, the server applies each one as it
 * arrives (each commit stores data and position together), answers A, and the
 * roles swap. A round in which neither side had a package ends the session
 * with B.
 *
 * If the connection drops, even in the middle of a frame, the server goes back
 * to accepting and the client reconnects; either process may also be
 * restarted. Nothing is lost or applied twice: positions live in the
 * databases, the receiver reports them first thing, and a package that
 * arrives twice would be a no-op anyway.
 *
 * --cut-after-packages N is for tests: after N whole package frames the
 * process sends the first half of the next one, closes the socket and exits
 * with status 3, as if it had been killed mid-send.
 *
 * Output: one JSON object per line on stdout (events), for humans and tests.
 * Needs the crsql-stream package (built by `make node-package`) and
 * better-sqlite3.
 */

const fs = require('fs');
const net = require('net');
const { parseArgs } = require('util');
const crsql = require('crsql-stream');

const HOST = '127.0.0.1';
const MAX_FRAME = 64 * 1024 * 1024;
const EXIT_CUT = 3;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS items (
  id    TEXT PRIMARY KEY NOT NULL,
  label TEXT,
  n     INTEGER,
  note  TEXT
);`;

/** The peer went away (cleanly or mid-frame): reconnect. */
class ConnectionLost extends Error {}
/** The peer reported an error (X frame) or broke the protocol: stop. */
class PeerError extends Error {}
/** --timeout reached: stop. */
class Timeout extends Error {}

function log(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, pid: process.pid, ...fields }) + '\n');
}

// ------------------------------------------------------------------ framing

function frame(kind, body = Buffer.alloc(0)) {
  const payload = Buffer.concat([Buffer.from(kind), Buffer.from(body)]);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(payload.length);
  return Buffer.concat([header, payload]);
}

/** A socket carrying length-prefixed frames, with a deadline. */
class Framed {
  constructor(sock, deadline) {
    this.sock = sock;
    this.deadline = deadline;
    this.buf = Buffer.alloc(0);
    this.frames = [];
    this.waiter = null;
    this.error = null;
    sock.on('data', (chunk) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.parse();
    });
    sock.on('error', (e) => this.fail(new ConnectionLost(`socket error: ${e.message}`)));
    sock.on('close', () =>
      this.fail(
        new ConnectionLost(
          this.buf.length ? `connection closed mid-frame (${this.buf.length} bytes of it arrived)` : 'connection closed',
        ),
      ),
    );
  }

  parse() {
    while (this.buf.length >= 4) {
      const length = this.buf.readUInt32BE(0);
      if (length < 1 || length > MAX_FRAME) {
        this.fail(new PeerError(`bad frame length ${length}`));
        this.sock.destroy();
        return;
      }
      if (this.buf.length < 4 + length) return;
      this.frames.push(this.buf.subarray(4, 4 + length));
      this.buf = this.buf.subarray(4 + length);
      this.wake();
    }
  }

  fail(error) {
    if (!this.error) this.error = error;
    this.wake();
  }

  wake() {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }

  left() {
    const left = this.deadline - Date.now();
    if (left <= 0) throw new Timeout('deadline reached');
    return left;
  }

  async send(kind, body) {
    if (this.error) throw this.error;
    this.left();
    if (!this.sock.write(frame(kind, body))) {
      await this.until(() => this.error !== null || !this.sock.writableNeedDrain, 'drain', (w) => {
        this.sock.once('drain', w);
        this.waiter = w;
      });
    }
    if (this.error) throw this.error;
  }

  /** Wait until `ready()` holds, woken by `arm(wake)`; a stalled peer (15 s) is a lost connection. */
  until(ready, what, arm = (w) => (this.waiter = w)) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (ready()) {
          clearTimeout(timer);
          resolve();
        } else {
          arm(check);
        }
      };
      let timer;
      try {
        timer = setTimeout(
          () => reject(Date.now() >= this.deadline ? new Timeout('deadline reached') : new ConnectionLost(`peer stalled (${what})`)),
          Math.min(this.left(), 15000),
        );
      } catch (e) {
        reject(e);
        return;
      }
      check();
    });
  }

  async recv() {
    await this.until(() => this.frames.length > 0 || this.error !== null, 'receive');
    if (!this.frames.length) throw this.error;
    const payload = this.frames.shift();
    const kind = String.fromCharCode(payload[0]);
    const body = payload.subarray(1);
    if (kind === 'X') throw new PeerError('peer failed: ' + body.toString('utf8'));
    return [kind, body];
  }

  async expect(kind) {
    const [got, body] = await this.recv();
    if (got !== kind) throw new PeerError(`expected a '${kind}' frame, got '${got}'`);
    return body;
  }
}

// ----------------------------------------------------------------- database

function openDb(path) {
  const db = crsql.connect(path, { timeout: 10000 });
  db.exec(SCHEMA);
  db.prepare("SELECT crsql_as_crr('items')").get();
  return db;
}

function labelHash(label) {
  let h = 0;
  for (const c of Buffer.from(label)) h = (h * 31 + c) % 1000003;
  return h;
}

/** `count` new rows labelled `label`, five per transaction, plus an edit of
 * a row both sides write (a conflict the merge resolves). */
function insertRows(db, label, count) {
  const start = db.prepare('SELECT count(*) AS n FROM items WHERE label = ?').get(label).n;
  const insert = db.prepare('INSERT INTO items VALUES (?, ?, ?, ?)');
  // Values differ per side (with equal values and versions, each side would
  // keep its own site id for the cell, as in cr-sqlite).
  const shared = db.prepare(
    "INSERT INTO items VALUES ('shared', ?, ?, ?) " +
      'ON CONFLICT(id) DO UPDATE SET label = excluded.label, n = excluded.n, note = excluded.note',
  );
  const batch = db.transaction((first) => {
    for (let n = first; n < Math.min(first + 5, start + count); n++) {
      insert.run(`${label}-${String(n).padStart(5, '0')}`, label, n, 'x'.repeat(n % 40));
    }
    shared.run(label, labelHash(label) + first, `edited by ${label}`);
  });
  for (let first = start; first < start + count; first += 5) batch(first);
  log('inserted', { label, rows: count });
}

/** The two streams towards one peer, created on first contact. */
class Peer {
  constructor(db, peerSite, maxChanges) {
    this.db = db;
    this.out = new crsql.Outbound(db, `to_${peerSite}`, { exclude_sites: peerSite, max_changes: maxChanges });
    this.inb = new crsql.Inbound(db, `from_${peerSite}`, { from: peerSite });
    this.info = db.prepare('SELECT crsql_package_info(?) AS info');
  }

  packageRange(data) {
    const info = JSON.parse(this.info.get(data).info);
    return [JSON.stringify(info.since), JSON.stringify(info.cursor), info.changes];
  }
}

// ----------------------------------------------------------------- protocol

class Session {
  constructor(io, db, opts, stats) {
    this.io = io;
    this.db = db;
    this.opts = opts;
    this.stats = stats;
    this.peer = null;
  }

  async handshake() {
    const me = crsql.siteId(this.db);
    await this.io.send('H', JSON.stringify({ site: me }));
    const site = JSON.parse((await this.io.expect('H')).toString()).site;
    if (typeof site !== 'string' || site.length !== 32 || site === me) {
      throw new PeerError(`bad peer site id ${JSON.stringify(site)}`);
    }
    this.peer = new Peer(this.db, site, this.opts.maxChanges);
    // Where to resume: what we have applied of the peer's stream ...
    await this.io.send('A', this.peer.inb.lastApplied);
    // ... and what the peer has applied of ours.
    const resume = (await this.io.expect('A')).toString();
    this.peer.out.ack(resume);
    log('connected', { peer: site, peer_has: resume, we_have: this.peer.inb.lastApplied });
  }

  async sendTurn() {
    let sent = 0;
    for (const pkg of this.peer.out.packages({ limit: this.opts.perTurn })) {
      // Binary packages (Buffer); a JSON-encoded stream would give a string.
      const data = Buffer.from(pkg.data);
      if (this.opts.cutAfterPackages !== undefined && this.stats.sent === this.opts.cutAfterPackages) {
        await this.cut(data);
      }
      await this.io.send('P', data);
      sent++;
      this.stats.sent++;
      log('sent', { since: pkg.since, cursor: pkg.cursor, changes: pkg.changes });
    }
    await this.io.send('E', JSON.stringify({ packages: sent }));
    const pos = (await this.io.expect('A')).toString();
    this.peer.out.ack(pos);
    log('acked', { position: pos });
    return sent;
  }

  async cut(data) {
    const whole = frame('P', data);
    const half = whole.subarray(0, Math.floor(whole.length / 2));
    await new Promise((resolve) => this.io.sock.end(half, resolve));
    this.io.sock.destroy();
    log('cut', { sent_bytes: half.length, frame_bytes: whole.length });
    crsql.close(this.db);
    process.exit(EXIT_CUT);
  }

  async receiveTurn(first) {
    let received = 0;
    for (;;) {
      const [kind, body] = first || (await this.io.recv());
      first = undefined;
      if (kind === 'E') break;
      if (kind !== 'P') throw new PeerError(`expected a package or the end of the turn, got '${kind}'`);
      let since, cursor, changes, before, after;
      try {
        [since, cursor, changes] = this.peer.packageRange(body);
        before = this.peer.inb.lastApplied;
        after = this.peer.inb.apply(body);
      } catch (e) {
        // Corrupt, foreign, a gap: tell the peer, stop.
        await this.io.send('X', String(e.message)).catch(() => {});
        throw e;
      }
      received++;
      if (after === before) {
        this.stats.duplicates++;
        log('duplicate', { since, cursor });
      } else {
        this.stats.applied++;
        log('applied', { since, cursor, changes });
      }
    }
    await this.io.send('A', this.peer.inb.lastApplied);
    return received;
  }

  async runClient() {
    for (let round = 1; round <= this.opts.maxRounds; round++) {
      let moved = await this.sendTurn();
      moved += await this.receiveTurn();
      if (moved === 0) {
        await this.io.send('B');
        log('quiet', { rounds: round });
        return;
      }
    }
    throw new PeerError(`not quiet after ${this.opts.maxRounds} rounds`);
  }

  async runServer() {
    for (let round = 0; round <= this.opts.maxRounds; round++) {
      const [kind, body] = await this.io.recv();
      if (kind === 'B') {
        log('quiet');
        return;
      }
      await this.receiveTurn([kind, body]);
      await this.sendTurn();
    }
    throw new PeerError(`not quiet after ${this.opts.maxRounds} rounds`);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `next()` (every `pollMs`) until it gives a socket; null at the deadline. */
async function waitForSocket(next, deadline, pollMs) {
  for (;;) {
    if (Date.now() >= deadline) {
      log('timeout');
      return null;
    }
    const sock = await next();
    if (sock) return sock;
    await sleep(pollMs);
  }
}

/** One session on `sock`: true when it ended normally, false when the connection was lost. */
async function runSession(sock, mode, db, opts, stats, deadline) {
  try {
    const session = new Session(new Framed(sock, deadline), db, opts, stats);
    await session.handshake();
    await (mode === 'serve' ? session.runServer() : session.runClient());
    return true;
  } catch (e) {
    if (!(e instanceof ConnectionLost)) throw e;
    log('lost', { reason: e.message });
    // The server goes back to accepting, the client reconnects; either may
    // also be restarted.
    return false;
  } finally {
    sock.destroy();
  }
}

async function serve(opts, db, stats, deadline) {
  const pending = [];
  const server = net.createServer((sock) => pending.push(sock));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, HOST, resolve);
  });
  try {
    const port = server.address().port;
    if (opts.portFile) {
      fs.writeFileSync(opts.portFile + '.tmp', String(port));
      fs.renameSync(opts.portFile + '.tmp', opts.portFile);
    }
    log('listening', { port });
    for (;;) {
      const sock = await waitForSocket(() => pending.shift(), deadline, 20);
      if (!sock) return 1;
      log('accepted', { address: `${sock.remoteAddress}:${sock.remotePort}` });
      if (await runSession(sock, 'serve', db, opts, stats, deadline)) return 0;
    }
  } finally {
    for (const sock of pending) sock.destroy();
    server.close();
  }
}

function dial(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port, timeout: 1000 });
    sock.once('connect', () => {
      sock.setTimeout(0);
      sock.removeListener('error', reject);
      resolve(sock);
    });
    sock.once('timeout', () => sock.destroy(new Error('connect timed out')));
    sock.once('error', reject);
  });
}

async function connect(opts, db, stats, deadline) {
  for (;;) {
    const sock = await waitForSocket(() => dial(opts.port).catch(() => null), deadline, 50);
    if (!sock) return 1;
    log('connected_tcp', { port: opts.port });
    if (await runSession(sock, 'connect', db, opts, stats, deadline)) return 0;
  }
}

function options(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      db: { type: 'string' },
      port: { type: 'string', default: '0' },
      'port-file': { type: 'string' },
      insert: { type: 'string', default: '0' },
      label: { type: 'string' },
      'max-changes': { type: 'string', default: '1000' },
      'per-turn': { type: 'string', default: '1000' },
      'max-rounds': { type: 'string', default: '1000' },
      timeout: { type: 'string', default: '60' },
      'cut-after-packages': { type: 'string' },
    },
  });
  const mode = positionals[0];
  if (positionals.length !== 1 || !['serve', 'connect'].includes(mode) || !values.db) {
    throw new Error('usage: tcp_sync.js serve|connect --db FILE [--port N] [--port-file F] [--insert N] ' +
      '[--label L] [--max-changes N] [--per-turn N] [--max-rounds N] [--timeout S] [--cut-after-packages N]');
  }
  const int = (name) => {
    const v = Number(values[name]);
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`--${name}: not a non-negative integer: ${values[name]}`);
    return v;
  };
  return {
    mode,
    db: values.db,
    port: int('port'),
    portFile: values['port-file'],
    insert: int('insert'),
    label: values.label || mode,
    maxChanges: int('max-changes'),
    perTurn: int('per-turn'),
    maxRounds: int('max-rounds'),
    timeout: Number(values.timeout),
    cutAfterPackages: values['cut-after-packages'] === undefined ? undefined : int('cut-after-packages'),
  };
}

async function main() {
  let opts;
  try {
    opts = options(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(e.message + '\n');
    return 2;
  }
  const deadline = Date.now() + opts.timeout * 1000;
  const db = openDb(opts.db);
  const stats = { sent: 0, applied: 0, duplicates: 0 };
  try {
    if (opts.insert) insertRows(db, opts.label, opts.insert);
    let rc;
    try {
      rc = await (opts.mode === 'serve' ? serve : connect)(opts, db, stats, deadline);
    } catch (e) {
      if (!(e instanceof PeerError || e instanceof Timeout || (e && e.code && String(e.code).startsWith('SQLITE')))) throw e;
      log('failed', { error: `${e.constructor.name}: ${e.message}` });
      rc = 1;
    }
    log('done', { status: rc, rows: db.prepare('SELECT count(*) AS n FROM items').get().n, ...stats });
    return rc;
  } finally {
    crsql.close(db);
  }
}

main().then(
  (rc) => process.exit(rc),
  (e) => {
    process.stderr.write(`tcp_sync: ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
  },
);
