'use strict';
/**
 * A client of the `crsql-sync` hub: sync a better-sqlite3 database with a
 * hub over the hub's wire protocol (docs/protocol.md of the project), on the
 * `ws` package. `require('crsql-stream').hub`.
 *
 *     const { hub } = require('crsql-stream');
 *     await hub.sync(db, 'ws://127.0.0.1:8080/acme', {
 *       token: 's3cret', progress: (done, total) => console.log(done, total) });
 *     const syncer = new hub.Syncer(db, 'ws://127.0.0.1:8080/acme').start();
 *     ...
 *     await syncer.stop();
 *
 * The database gets two streams per hub (named by the hub's site id):
 * `crsql_hub_to_<hub>` (outbound, `local_only = 1`) and
 * `crsql_hub_from_<hub>` (inbound). Their positions are stored in the
 * database, so every sync resumes where the last one stopped, and so does a
 * reconnection: the same protocol and streams as `crsql-sync sync` and the
 * Python and Rust clients.
 *
 * Errors: the protocol's codes are thrown as subclasses of `HubError`
 * (`code`, `fatal`): `UnauthorizedError`, `SchemaMismatchError`, `GapError`,
 * … Codes that retrying cannot fix end a sync at once; the others, and lost
 * connections (`HubConnectionError`), are retried with backoff and thrown
 * only when `maxRetries` or `timeout` run out.
 */

const crypto = require('crypto');

const PROTOCOL_VERSION = 1;
const MAGIC = Buffer.from('CRSY');
const [T_HELLO, T_WELCOME, T_PACKAGE, T_ACK, T_CAUGHT_UP, T_ERROR] = [1, 2, 3, 4, 5, 6];
const WELCOME_READ_ONLY = 1;

const FATAL_CODES = new Set([
  'protocol_version',
  'bad_tenant',
  'unknown_tenant',
  'unauthorized',
  'read_only',
  'foreign_sender',
  'schema_mismatch',
  'resync_required',
]);

/** An error of the hub protocol: `code` is its stable code (null for errors of this client without one). */
class HubError extends Error {
  constructor(message, code = null) {
    super(code ? `${code}: ${message}` : message);
    this.name = this.constructor.name;
    this.code = code;
    this.hubMessage = message;
  }

  /** Whether retrying cannot help (a sync gives up at once). */
  get fatal() {
    return this.code === null ? !(this instanceof HubConnectionError) : FATAL_CODES.has(this.code);
  }
}

/** No connection to the hub, or it was lost (thrown when retries run out). */
class HubConnectionError extends HubError {}

/** Not caught up within `timeout`; `last` is the last error, if any. */
class SyncTimeoutError extends HubError {
  constructor(message, last = null) {
    super(message);
    this.last = last;
  }
}

const BY_CODE = {};
const classes = {};
for (const [name, code] of [
  ['ProtocolVersionError', 'protocol_version'],
  ['BadFrameError', 'bad_frame'],
  ['FrameTooLargeError', 'frame_too_large'],
  ['BadTenantError', 'bad_tenant'],
  ['UnknownTenantError', 'unknown_tenant'],
  ['UnauthorizedError', 'unauthorized'],
  ['ReadOnlyError', 'read_only'],
  ['ForeignSenderError', 'foreign_sender'],
  ['GapError', 'gap'],
  ['SchemaMismatchError', 'schema_mismatch'],
  ['ResyncRequiredError', 'resync_required'],
  ['BadPackageError', 'bad_package'],
  ['ShuttingDownError', 'shutting_down'],
  ['HubTimeoutError', 'timeout'],
  ['InternalError', 'internal'],
]) {
  // A named class per code, so `instanceof` and `err.name` tell them apart.
  const cls = {
    [name]: class extends HubError {
      constructor(message) {
        super(message, code);
      }
    },
  }[name];
  BY_CODE[code] = cls;
  classes[name] = cls;
}

/** The `HubError` subclass of a protocol error code (an unknown code: a plain `HubError`). */
function errorFor(code, message) {
  const cls = BY_CODE[code];
  return cls ? new cls(message) : new HubError(message, code);
}

// ---------------------------------------------------------------------------
// Frames (docs/protocol.md)

function posBuf([dv, seq]) {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(BigInt(dv), 0);
  b.writeBigUInt64BE(BigInt(seq), 8);
  return b;
}

function readPos(b, at) {
  return [b.readBigUInt64BE(at), b.readBigUInt64BE(at + 8)];
}

const posText = ([dv, seq]) => `[${dv},${seq}]`;

function parsePos(text) {
  if (text === null || text === undefined) return [0n, 0n];
  const m = /^\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]\s*$/.exec(String(text));
  if (!m) throw new HubError(`not a position: ${JSON.stringify(text)}`);
  return [BigInt(m[1]), BigInt(m[2])];
}

const posLe = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] <= b[1]);

function helloFrame(site, schema, tenant, token, positions) {
  const t = Buffer.from(tenant);
  const k = Buffer.from(token);
  const u16 = (n) => {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(n);
    return b;
  };
  const parts = [Buffer.from([T_HELLO]), MAGIC, u16(PROTOCOL_VERSION), site, schema];
  parts.push(Buffer.from([t.length]), t, u16(k.length), k, u16(positions.length));
  for (const [s, p] of positions) parts.push(s, posBuf(p));
  return Buffer.concat(parts);
}

function errorFrame(code, message) {
  const m = Buffer.from(message).subarray(0, 65535);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(m.length);
  return Buffer.concat([Buffer.from([T_ERROR, code.length]), Buffer.from(code), len, m]);
}

/** `{ type, ... }` of a frame from the hub; throws a HubError for an error frame. */
function decode(frame) {
  if (!Buffer.isBuffer(frame) || frame.length === 0) {
    throw new HubConnectionError('bad frame from the hub: not a binary message');
  }
  const t = frame[0];
  try {
    switch (t) {
      case T_WELCOME: {
        if (frame.length !== 64) throw new RangeError(`welcome of ${frame.length} bytes, expected 64`);
        const v = frame.readUInt16BE(1);
        if (v !== PROTOCOL_VERSION) {
          throw new HubConnectionError(`the hub speaks protocol version ${v}, this client ${PROTOCOL_VERSION}`);
        }
        return {
          type: t,
          hubSite: frame.subarray(3, 19),
          readOnly: (frame[35] & WELCOME_READ_ONLY) !== 0,
          maxFrame: frame.readUInt32BE(36),
          applied: readPos(frame, 40),
          backlog: Number(frame.readBigUInt64BE(56)),
        };
      }
      case T_ACK:
      case T_CAUGHT_UP:
        if (frame.length !== 17) throw new RangeError(`frame of ${frame.length} bytes, expected 17`);
        return { type: t, pos: readPos(frame, 1) };
      case T_PACKAGE:
        if (frame.length > 1) return { type: t, bytes: frame.subarray(1) };
        break;
      case T_ERROR: {
        const n = frame[1];
        const code = frame.subarray(2, 2 + n).toString('latin1');
        const m = frame.readUInt16BE(2 + n);
        throw errorFor(code, frame.subarray(4 + n, 4 + n + m).toString('utf8'));
      }
      default:
    }
  } catch (e) {
    if (e instanceof HubError) throw e;
    throw new HubConnectionError(`bad frame from the hub (type ${t}): ${e.message}`);
  }
  throw new HubConnectionError(`unexpected frame type ${t} from the hub`);
}

// ---------------------------------------------------------------------------
// The database side

/** The 16-byte schema hash of a hello (docs/protocol.md, "Schema hash"). */
function schemaHash(db) {
  const h = crypto.createHash('sha256');
  const tables = db
    .prepare(
      // Both layouts: cr-sqlite's `T__crsql_clock`, compact's `T__crsql_rows`.
      "SELECT substr(name, 1, length(name) - 13) AS t FROM sqlite_master " +
        "WHERE type = 'table' AND name LIKE '%\\_\\_crsql\\_clock' ESCAPE '\\' " +
        "UNION SELECT substr(name, 1, length(name) - 12) FROM sqlite_master " +
        "WHERE type = 'table' AND name LIKE '%\\_\\_crsql\\_rows' ESCAPE '\\' ORDER BY 1",
    )
    .all()
    .map((r) => r.t);
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
  const info = db.prepare('SELECT name, pk FROM pragma_table_info(?) ORDER BY cid');
  for (const t of tables) {
    if (!exists.get(t)) continue;
    const cols = info.all(t);
    const pks = cols.filter((c) => c.pk > 0).sort((x, y) => x.pk - y.pk).map((c) => c.name);
    const others = cols.filter((c) => c.pk === 0).map((c) => c.name);
    h.update(Buffer.concat([Buffer.from(t), Buffer.from([0]), Buffer.from(pks.join('\x1f')), Buffer.from([0])]));
    h.update(Buffer.from(`${others.join('\x1f')}\n`));
  }
  return h.digest().subarray(0, 16);
}

const IN_PREFIX = 'crsql_hub_from_';

function positions(db) {
  const rows = db
    .prepare(
      "SELECT name, last_applied FROM crsql_streams WHERE direction = 'inbound' " +
        "AND name LIKE 'crsql\\_hub\\_from\\_%' ESCAPE '\\' ORDER BY name",
    )
    .all();
  return rows
    .filter((r) => /^[0-9a-f]{32}$/i.test(r.name.slice(IN_PREFIX.length)))
    .map((r) => [Buffer.from(r.name.slice(IN_PREFIX.length), 'hex'), parsePos(r.last_applied)]);
}

function tenantOf(url) {
  const m = /^wss?:\/\/[^/]+\/([A-Za-z0-9][A-Za-z0-9_-]{0,63})\/?$/.exec(url);
  if (typeof url !== 'string' || !m) {
    throw new HubError(
      `bad hub URL ${JSON.stringify(url)}: expected ws://HOST:PORT/<tenant> or wss://… (tenant: 1-64 of A-Z a-z 0-9 _ -)`,
    );
  }
  return m[1];
}

// ---------------------------------------------------------------------------
// One connection

/** Incoming frames of one WebSocket, awaited one at a time. */
class Inbox {
  constructor(ws) {
    this.queue = [];
    this.waiter = null;
    this.ended = null;
    ws.on('message', (data, isBinary) => {
      this.queue.push(isBinary ? data : null);
      this.wake();
    });
    ws.on('close', (code) => this.end(new HubConnectionError(`the hub closed the connection (${code})`)));
    ws.on('error', (e) => this.end(new HubConnectionError(`connection lost: ${e.message}`)));
  }

  end(e) {
    if (!this.ended) this.ended = e;
    this.wake();
  }

  wake() {
    const w = this.waiter;
    this.waiter = null;
    if (w) w();
  }

  /** The next frame, or null after `ms` without one; throws once the connection ended. */
  async next(ms) {
    if (this.queue.length === 0 && !this.ended) {
      await new Promise((resolve) => {
        const timer = setTimeout(() => {
          this.waiter = null;
          resolve();
        }, ms);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    if (this.queue.length > 0) return this.queue.shift();
    if (this.ended) throw this.ended;
    return null;
  }
}

function open(url, opts) {
  const WebSocket = require('ws');
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      handshakeTimeout: 10000,
      maxPayload: opts.maxFrame,
      perMessageDeflate: false,
      ...opts.wsOptions,
    });
    const inbox = new Inbox(ws);
    const fail = (e) => {
      ws.terminate();
      reject(new HubConnectionError(`cannot connect to ${url}: ${e.message || e}`));
    };
    ws.once('open', () => {
      ws.off('error', fail);
      resolve({ ws, inbox });
    });
    ws.once('error', fail);
  });
}

const STOPPED = Symbol('stopped');

async function session(db, url, tenant, opts, control) {
  const { ws, inbox } = await open(url, opts);
  control.wake = () => inbox.wake();
  try {
    return await run(db, ws, inbox, tenant, opts, control);
  } catch (e) {
    if (!(e instanceof HubError) && e !== STOPPED && ws.readyState === 1) {
      ws.send(errorFrame('internal', `client: ${e.message}`));
    }
    throw e;
  } finally {
    control.wake = null;
    ws.close();
  }
}

async function run(db, ws, inbox, tenant, opts, control) {
  const site = Buffer.from(db.prepare('SELECT crsql_site_id() AS s').get().s);
  ws.send(helloFrame(site, schemaHash(db), tenant, opts.token || '', positions(db)));
  const first = await inbox.next(30000);
  if (first === null) throw new HubConnectionError('no welcome from the hub within 30 s');
  const welcome = decode(first);
  if (welcome.type !== T_WELCOME) throw new HubConnectionError(`expected a welcome, got frame type ${welcome.type}`);
  const hub = welcome.hubSite.toString('hex');
  const outName = `"crsql_hub_to_${hub}"`;
  const inName = `"crsql_hub_from_${hub}"`;
  const maxBytes = Math.max(Math.min(welcome.maxFrame, opts.maxFrame) - 64, 1024);
  db.exec(
    `CREATE VIRTUAL TABLE IF NOT EXISTS ${outName} USING ` +
      `crsql_OutboundStream(local_only = 1, peer = '${hub}', max_bytes = ${maxBytes})`,
  );
  db.exec(`CREATE VIRTUAL TABLE IF NOT EXISTS ${inName} USING crsql_InboundStream(from = '${hub}')`);
  const lastSent = parsePos(db.prepare('SELECT last_sent AS p FROM crsql_streams WHERE name = ?').get(outName.slice(1, -1)).p);
  const newest = BigInt(db.prepare('SELECT crsql_db_version() AS v').get().v);
  if (welcome.applied[0] > newest) {
    throw new HubError(
      `the hub applied this site's changes up to ${posText(welcome.applied)}, but this database's newest ` +
        `version is ${newest}: it was restored from a backup or copied; give it a new site id with SELECT crsql_new_site_id()`,
    );
  }
  if (!posLe(lastSent, welcome.applied)) {
    db.prepare(`INSERT INTO ${outName}(rewind) VALUES (?)`).run(posText(welcome.applied));
  }
  const report = opts.progress;
  const progress = { pushed: 0, pushTotal: 0, pulled: 0, pullTotal: welcome.backlog };
  const done = () => progress.pushed + progress.pulled;
  if (report && !welcome.readOnly) {
    progress.pushTotal = db
      .prepare('SELECT count(*) AS n FROM crsql_changes WHERE db_version > ? AND site_id IS crsql_site_id()')
      .get(welcome.applied[0]).n;
  }
  let lastReport = 0;
  const tell = (force) => {
    const now = Date.now();
    if (report && (force || now - lastReport >= 100)) {
      lastReport = now;
      report(done(), Math.max(progress.pushTotal + progress.pullTotal, done()));
    }
  };
  const read = db.prepare(`SELECT package, cursor, changes FROM ${outName} WHERE cursor > ? LIMIT 1`);
  const apply = db.prepare(`INSERT INTO ${inName}(package) VALUES (?)`);
  const applied = db.prepare(`SELECT last_applied AS p FROM ${inName}`);
  const ack = db.prepare(`INSERT INTO ${outName}(last_sent) VALUES (?)`);
  const info = db.prepare("SELECT json_extract(crsql_package_info(?), '$.changes') AS n");
  // Commits of other connections change data_version; the application's
  // own commits on this same connection (a Syncer shares it) change only
  // the db_version.
  const version = db.prepare('SELECT crsql_db_version() AS v');
  const dataVersion = () => `${db.pragma('data_version', { simple: true })}:${version.get().v}`;
  let pushCursor = welcome.applied;
  const inflight = [];
  let pushExhausted = welcome.readOnly;
  let caughtUp = false;
  let seenVersion = dataVersion();
  for (;;) {
    while (!pushExhausted && inflight.length < opts.window) {
      let row;
      try {
        row = read.get(posText(pushCursor));
      } catch (e) {
        if (/resync required/.test(e.message)) throw errorFor('resync_required', e.message);
        throw e;
      }
      if (!row) {
        pushExhausted = true;
        break;
      }
      ws.send(Buffer.concat([Buffer.from([T_PACKAGE]), row.package]));
      pushCursor = parsePos(row.cursor);
      inflight.push([pushCursor, Math.max(Number(row.changes), 0)]);
    }
    tell(false);
    if (opts.once && pushExhausted && inflight.length === 0 && caughtUp) {
      tell(true);
      return progress;
    }
    if (control.stopped || control.timedOut) throw STOPPED;
    const frame = await inbox.next(opts.poll);
    if (frame === null) {
      const v = dataVersion();
      if (v !== seenVersion) {
        seenVersion = v;
        pushExhausted = welcome.readOnly;
      }
      continue;
    }
    const f = decode(frame);
    if (f.type === T_PACKAGE) {
      caughtUp = false;
      let pos;
      try {
        apply.run(f.bytes);
        pos = parsePos(applied.get().p);
      } catch (e) {
        const code = /schema mismatch|not a CRR here/.test(e.message)
          ? 'schema_mismatch'
          : /: gap: /.test(e.message)
            ? 'gap'
            : 'bad_package';
        ws.send(errorFrame(code, e.message));
        throw errorFor(code, `applying a package from the hub: ${e.message}`);
      }
      ws.send(Buffer.concat([Buffer.from([T_ACK]), posBuf(pos)]));
      if (report) progress.pulled += Number(info.get(f.bytes).n || 0);
    } else if (f.type === T_ACK) {
      ack.run(posText(f.pos));
      while (inflight.length > 0 && posLe(inflight[0][0], f.pos)) progress.pushed += inflight.shift()[1];
      if (inflight.length === 0) caughtUp = false;
    } else if (f.type === T_CAUGHT_UP) {
      caughtUp = inflight.length === 0;
    } else {
      throw new HubConnectionError(`unexpected frame type ${f.type} from the hub`);
    }
  }
}

// ---------------------------------------------------------------------------
// Reconnecting

function options(o, once) {
  const opts = {
    token: null,
    once,
    progress: null,
    timeout: null,
    maxRetries: null,
    window: 8,
    poll: 50,
    maxBackoff: 10000,
    maxFrame: 64 << 20,
    wsOptions: {},
    onError: null,
    ...(o || {}),
  };
  if (!Number.isInteger(opts.window) || opts.window < 1) {
    throw new TypeError(`crsql-stream.hub: window must be an integer >= 1, got ${opts.window}`);
  }
  return opts;
}

async function loop(db, url, opts, control) {
  const tenant = tenantOf(url);
  const deadline = opts.timeout === null ? null : Date.now() + opts.timeout;
  const timedOut = (last) => new SyncTimeoutError(`not caught up after ${opts.timeout} ms (timeout)`, last);
  let backoff = 100;
  let failures = 0;
  for (;;) {
    let timer = null;
    if (deadline !== null) {
      timer = setTimeout(() => {
        control.timedOut = true;
        if (control.wake) control.wake();
      }, Math.max(deadline - Date.now(), 0));
    }
    try {
      return await session(db, url, tenant, opts, control);
    } catch (e) {
      if (e !== STOPPED && !(e instanceof HubError)) throw e;
      if (control.timedOut) throw timedOut(e === STOPPED ? null : e);
      if (e === STOPPED || control.stopped) return null;
      failures += 1;
      if (e.fatal || (opts.maxRetries !== null && failures > opts.maxRetries)) throw e;
      if (opts.onError) opts.onError(e);
      if (deadline !== null && Date.now() + backoff > deadline) {
        throw new SyncTimeoutError(`not caught up before the timeout; last error: ${e.message}`, e);
      }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, backoff * (1 + Math.random() / 2));
        control.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      control.wake = null;
      if (control.stopped) return null;
      backoff = Math.min(backoff * 2, opts.maxBackoff);
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * Sync `db` (a better-sqlite3 Database with the extension loaded) with the
 * hub at `url` until caught up both ways (`once`, the default) or until an
 * error, reconnecting with backoff (100 ms doubling to `maxBackoff` ms).
 * Resolves to `{ pushed, pushTotal, pulled, pullTotal }` (changes) of the
 * last connection. Options: `token`, `progress(done, total)` (at most every
 * 100 ms and once at the end), `timeout` (ms, `SyncTimeoutError`),
 * `maxRetries`, `window` (8), `poll` (ms between looks for local commits,
 * 50), `maxBackoff`, `maxFrame`, `wsOptions` (given to `new WebSocket`, e.g.
 * `ca` for a private CA), `onError(err)` for each retried error.
 */
async function sync(db, url, options_) {
  return loop(db, url, options(options_, true), { stopped: false, timedOut: false, wake: null });
}

/**
 * Keeps `db` in sync with a hub in the background (same event loop):
 * local commits are pushed within `poll` ms, other devices' changes are
 * applied as they arrive; reconnects for ever except on a fatal code.
 * `start()` returns this; `await stop()` ends it and rejects with the fatal
 * error that ended it, if one did (also in `error`).
 */
class Syncer {
  constructor(db, url, options_) {
    tenantOf(url);
    this.db = db;
    this.url = url;
    this.opts = options(options_, false);
    this.control = { stopped: false, timedOut: false, wake: null };
    this.error = null;
    this.promise = null;
  }

  get running() {
    return this.promise !== null && !this.finished;
  }

  start() {
    if (this.promise) throw new Error('crsql-stream.hub.Syncer: already started');
    this.finished = false;
    this.promise = loop(this.db, this.url, this.opts, this.control).then(
      () => {
        this.finished = true;
      },
      (e) => {
        this.finished = true;
        this.error = e;
      },
    );
    return this;
  }

  async stop() {
    this.control.stopped = true;
    if (this.control.wake) this.control.wake();
    if (this.promise) await this.promise;
    if (this.error) throw this.error;
  }
}

module.exports = {
  PROTOCOL_VERSION,
  HubError,
  HubConnectionError,
  SyncTimeoutError,
  ...classes,
  errorFor,
  schemaHash,
  sync,
  Syncer,
  // For tests: the frame codec.
  helloFrame,
  errorFrame,
  decode,
};
