'use strict';
/**
 * Node binding for crsql_stream, a SQLite extension for cr-sqlite compatible
 * CRDTs and sync streams, for better-sqlite3.
 *
 * The package ships the extension library (lib/); this module loads it into
 * a better-sqlite3 `Database` and wraps the stream virtual tables in a few
 * thin helpers. Everything goes through plain SQL, so anything the helpers do
 * not cover is one `db.prepare(...)` away (docs/sql.md of the project).
 *
 *     const crsql = require('crsql-stream');
 *     const a = crsql.connect('a.db');   // new Database() + load()
 *     const b = crsql.connect('b.db');
 *     for (const db of [a, b]) {
 *       db.exec('CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT)');
 *       db.prepare("SELECT crsql_as_crr('todos')").get();
 *     }
 *     a.prepare("INSERT INTO todos VALUES ('t1', 'buy milk')").run();
 *     crsql.sync(a, b);                   // both ways, until quiet
 *     b.prepare('SELECT title FROM todos').all();   // [{ title: 'buy milk' }]
 *     a.close(); b.close();               // crsql_finalize(), then close
 *
 * Transactions: better-sqlite3 commits every statement on its own unless a
 * transaction is open (`db.transaction(fn)`, or `BEGIN`); then the helpers'
 * writes (creating a stream, `ack`, `apply`) are part of it, as the extension
 * intends: an applied package and its `last_applied` roll back together.
 *
 * Errors of the extension are thrown as better-sqlite3 throws them: a
 * `SqliteError` (`require('better-sqlite3').SqliteError`, an `Error`) with
 * the extension's message and `code` 'SQLITE_ERROR', e.g.
 * `crsql_InboundStream from_a: gap: expected a package starting at [3,0], got [5,0] (…)`.
 */

const fs = require('fs');
const nodePath = require('path');

const version = require('./package.json').version;

const LIB_NAME =
  process.platform === 'darwin'
    ? 'libcrsql_stream.dylib'
    : process.platform === 'win32'
      ? 'crsql_stream.dll'
      : 'libcrsql_stream.so';

/** The extension's entry point, passed explicitly so that a renamed file loads too. */
const ENTRY_POINT = 'sqlite3_crsqlstream_init';

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

// ---------------------------------------------------------------------------
// Loading

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/**
 * Absolute path of the extension library shipped in this package. Outside an
 * installed package (a source checkout where `make node-package` has not
 * copied the library into lib/), falls back to `$CRSQL_STREAM_EXT`.
 * Throws an `Error` with code 'ENOENT' if neither exists.
 */
function path() {
  const bundled = nodePath.join(__dirname, 'lib', LIB_NAME);
  if (isFile(bundled)) return bundled;
  const env = process.env.CRSQL_STREAM_EXT;
  if (env && isFile(env)) return nodePath.resolve(env);
  const e = new Error(
    `crsql-stream: the extension library ${LIB_NAME} is not in ${nodePath.dirname(bundled)} ` +
      '(install the package built by `make node-package`) and $CRSQL_STREAM_EXT does not name a file',
  );
  e.code = 'ENOENT';
  throw e;
}

function describe(value) {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  return value.constructor && value.constructor.name ? `a ${value.constructor.name}` : 'an object';
}

function checkDatabase(db, who) {
  if (!db || typeof db.prepare !== 'function' || typeof db.loadExtension !== 'function') {
    throw new TypeError(
      `crsql-stream.${who}: expected a better-sqlite3 Database (an object with prepare() and ` +
        `loadExtension()), got ${describe(db)}`,
    );
  }
}

function isLoaded(db) {
  try {
    db.prepare('SELECT crsql_version()').get();
    return true;
  } catch (e) {
    if (e && /no such function: crsql_version/.test(String(e.message))) return false;
    throw e;
  }
}

/**
 * Load the extension into `db`, a better-sqlite3 `Database`, and return `db`.
 *
 * Loading is per connection: call this for every connection that uses CRRs or
 * streams, including connections that only write to CRR tables (the triggers
 * call the extension's functions). Does nothing if the extension is already
 * loaded into `db`. Throws a `TypeError` for something that is not a
 * better-sqlite3 Database, and the driver's `SqliteError` (message prefixed
 * with the library's path) if SQLite refuses the library.
 */
function load(db) {
  checkDatabase(db, 'load');
  if (isLoaded(db)) return db;
  const lib = path();
  try {
    db.loadExtension(lib, ENTRY_POINT);
  } catch (e) {
    if (e && typeof e.message === 'string') {
      e.message = `crsql-stream.load: SQLite could not load ${lib}: ${e.message}`;
    }
    throw e;
  }
  return db;
}

function betterSqlite3() {
  try {
    return require('better-sqlite3');
  } catch (e) {
    const err = new Error(
      'crsql-stream.connect: cannot find better-sqlite3, a peer dependency of crsql-stream; ' +
        `install it next to crsql-stream (npm install better-sqlite3): ${e.message}`,
    );
    err.code = e.code;
    throw err;
  }
}

/**
 * `new Database(filename, options)` (better-sqlite3) with the extension
 * loaded. The returned database's `close()` runs `crsql_finalize()` first.
 */
function connect(filename, options) {
  const Database = betterSqlite3();
  const db = new Database(filename, options);
  try {
    load(db);
  } catch (e) {
    db.close();
    throw e;
  }
  const closeDatabase = db.close;
  Object.defineProperty(db, 'close', {
    configurable: true,
    writable: true,
    value: function close() {
      return closeDb(this, closeDatabase);
    },
  });
  return db;
}

/**
 * Run `SELECT crsql_finalize()`, which finalizes the extension's cached
 * prepared statements. Optional (the extension also does it when SQLite
 * closes the connection), kept for cr-sqlite compatibility. Does nothing on a
 * closed database.
 */
function finalize(db) {
  if (db.open === false) return;
  db.prepare('SELECT crsql_finalize()').get();
}

function closeDb(db, closeDatabase) {
  try {
    finalize(db);
  } finally {
    closeDatabase.call(db);
  }
  return db;
}

/**
 * Close any database the extension was loaded into: `crsql_finalize()`, then
 * `db.close()`. As with better-sqlite3's `close()`, an open transaction is
 * rolled back. Closing twice is allowed.
 */
function close(db) {
  return closeDb(db, db.close);
}

/** This database's site id as 32 lowercase hex digits (`crsql_site_id()`). */
function siteId(db) {
  return Buffer.from(db.prepare('SELECT crsql_site_id() AS s').get().s).toString('hex');
}

const INT64_MAX = (1n << 63n) - 1n;
const POSITION = /^\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]\s*$/;

/** A position's two integers as BigInts, accepting exactly what the extension accepts. */
function positionBigInts(position) {
  const m = typeof position === 'string' ? POSITION.exec(position) : null;
  const value = m && [BigInt(m[1]), BigInt(m[2])];
  if (!value || value[0] > INT64_MAX || value[1] > INT64_MAX) {
    throw new TypeError(
      `crsql-stream: not a position: ${JSON.stringify(position)} (expected '[db_version,seq]')`,
    );
  }
  return value;
}

/**
 * `'[12,3]'` → `[12, 3]` (numbers). Throws a `TypeError` for anything the
 * extension would not accept, and a `RangeError` for a valid position whose
 * numbers exceed `Number.MAX_SAFE_INTEGER` (compare those with
 * `comparePositions`, which is exact).
 */
function parsePosition(position) {
  const value = positionBigInts(position);
  if (value.some((v) => v > BigInt(Number.MAX_SAFE_INTEGER))) {
    throw new RangeError(`crsql-stream: position ${position} is beyond Number.MAX_SAFE_INTEGER`);
  }
  return value.map(Number);
}

/** Compare two positions (text): negative, 0 or positive, as `a` is before, at or after `b`. */
function comparePositions(a, b) {
  const [x, y] = [positionBigInts(a), positionBigInts(b)];
  const d = x[0] - y[0] || x[1] - y[1];
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

/** Options objects: `undefined`/`null` (defaults) or a plain object. */
function plainObject(value, what) {
  if (value === undefined || value === null) return {};
  const proto = typeof value === 'object' ? Object.getPrototypeOf(value) : undefined;
  if (proto !== Object.prototype && proto !== null) {
    throw new TypeError(`crsql-stream: ${what} must be a plain object such as { max_changes: 100 }, got ${describe(value)}`);
  }
  return value;
}

/** A count option: an integer of at least `minimum`. */
function countArg(value, what, minimum) {
  if (!Number.isSafeInteger(value) || value < minimum) {
    throw new TypeError(`crsql-stream: ${what} must be an integer of at least ${minimum}, got ${String(value)}`);
  }
  return value;
}

// ---------------------------------------------------------------------------
// SQL helpers

function quoteIdent(name) {
  if (typeof name !== 'string' || name === '') {
    throw new TypeError(`crsql-stream: a stream name must be a non-empty string, got ${JSON.stringify(name)}`);
  }
  return '"' + name.replace(/"/g, '""') + '"';
}

function argText(key, value) {
  if (typeof value === 'boolean') return value ? '1' : '0';
  if (typeof value === 'number' && Number.isInteger(value)) return String(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  if (Array.isArray(value) || value instanceof Set) {
    return Array.from(value, (v) => argText(key, v)).join(',');
  }
  throw new TypeError(`crsql-stream: stream argument ${key}: cannot use ${describe(value)} (${String(value)})`);
}

function argsSql(args) {
  return Object.entries(plainObject(args, 'stream arguments'))
    .filter(([, value]) => value !== undefined && value !== null)
    .map(([key, value]) => {
      if (!IDENT.test(key)) throw new TypeError(`crsql-stream: not a stream argument name: ${JSON.stringify(key)}`);
      return `${key} = '` + argText(key, value).replace(/'/g, "''") + "'";
    })
    .join(', ');
}

function toPosition(value, what) {
  const cursor = value && typeof value === 'object' && 'cursor' in value ? value.cursor : value;
  if (typeof cursor !== 'string') {
    throw new TypeError(`crsql-stream: ${what} must be a position such as '[12,3]', got ${describe(cursor)}`);
  }
  return cursor;
}

function toPackageData(pkg) {
  const data = pkg && typeof pkg === 'object' && 'data' in pkg && !(pkg instanceof Uint8Array) ? pkg.data : pkg;
  if (typeof data === 'string' || Buffer.isBuffer(data)) return data;
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`crsql-stream: a package is a Buffer (binary) or a string (JSON), got ${describe(data)}`);
}

/** Shared by both stream kinds: creation, the table name, and `drop()`. */
class Stream {
  constructor(db, name, module, direction, args) {
    checkDatabase(db, module);
    this.db = db;
    this.name = name;
    this.module = module;
    this.direction = direction;
    this.quoted = quoteIdent(name);
    this.statements = new Map();
    db.prepare(`CREATE VIRTUAL TABLE IF NOT EXISTS ${this.quoted} USING ${module}(${argsSql(args)})`).run();
    this.checkKind();
  }

  /**
   * Throw unless `name` is a stream of this kind (so a helper never writes
   * to, or drops, a table that is not its stream).
   */
  checkKind() {
    const row = this.streamRow('direction');
    if (!row || row.v !== this.direction) {
      const what = row ? `an ${row.v} stream` : 'a table that is not a stream';
      throw new Error(
        `crsql-stream: ${JSON.stringify(this.name)} already exists as ${what}, not a ${this.module} table; choose another name`,
      );
    }
  }

  /** `{ v }`: this stream's `column` in `crsql_streams`, or undefined if it has no row. */
  streamRow(column) {
    return this.statement(`SELECT ${column} AS v FROM crsql_streams WHERE name = ?`).get(this.name);
  }

  /** A statement prepared once per stream object. */
  statement(sql) {
    let stmt = this.statements.get(sql);
    if (!stmt) {
      stmt = this.db.prepare(sql);
      this.statements.set(sql, stmt);
    }
    return stmt;
  }

  /**
   * `DROP TABLE` the stream, deleting its stored state (and staged parts).
   * Throws, dropping nothing, if the table of that name is no longer a
   * stream of this kind.
   */
  drop() {
    this.checkKind();
    this.statements.clear();
    this.db.prepare(`DROP TABLE IF EXISTS ${this.quoted}`).run();
  }
}

/**
 * An outbound stream: `crsql_OutboundStream` virtual table `name`.
 *
 * Creates the table if it does not exist, with `args` as its arguments
 * (`since`, `exclude_sites`, `local_only`, `tables`, `max_changes`,
 * `max_bytes`, `encoding`); an existing stream keeps the arguments it was
 * created with. Values may be strings, integers, booleans, Buffers (a site
 * id, written as hex) or arrays of those (joined with commas).
 */
class Outbound extends Stream {
  constructor(db, name, args = {}) {
    super(db, name, 'crsql_OutboundStream', 'outbound', args);
  }

  /**
   * The next package after `after` (default: after `last_sent`), or `null`
   * when there is none. Reading changes nothing in the database.
   */
  nextPackage(after) {
    const row =
      after === undefined || after === null
        ? this.statement(`SELECT package, cursor, since, changes, bytes FROM ${this.quoted} LIMIT 1`).get()
        : this.statement(
            `SELECT package, cursor, since, changes, bytes FROM ${this.quoted} WHERE cursor > ? LIMIT 1`,
          ).get(toPosition(after, 'after'));
    return row ? { data: row.package, cursor: row.cursor, since: row.since, changes: row.changes, size: row.bytes } : null;
  }

  /**
   * The packages after `last_sent` (or after `options.after`), in order, at
   * most `options.limit` of them, as an iterator of
   * `{ data, cursor, since, changes, size }`.
   *
   * Lazy, and holds no statement open between packages: each one is built
   * when the iteration reaches it (`LIMIT 1` after the previous cursor), so
   * the same connection may `ack` or write while iterating. A package that is
   * not acknowledged is produced again by the next call.
   */
  packages(options) {
    const { limit, after } = plainObject(options, 'packages() options');
    if (limit !== undefined && limit !== null) countArg(limit, 'limit', 0);
    if (after !== undefined && after !== null) toPosition(after, 'after');
    return this.iterate(limit, after);
  }

  *iterate(limit, after) {
    let position = after;
    for (let n = 0; limit === undefined || limit === null || n < limit; n++) {
      const pkg = this.nextPackage(position);
      if (!pkg) return;
      yield pkg;
      position = pkg.cursor;
    }
  }

  /**
   * Record that the peer has applied everything up to `cursor` (a position,
   * or a package object): `INSERT INTO name(last_sent) VALUES (cursor)`.
   * Idempotent and order-insensitive: `last_sent` only moves forward.
   */
  ack(cursor) {
    this.statement(`INSERT INTO ${this.quoted}(last_sent) VALUES (?)`).run(toPosition(cursor, 'ack'));
  }

  /** The acknowledged position (durable). */
  get lastSent() {
    return String(this.streamColumn('last_sent'));
  }

  /** The largest cursor this connection has read (per connection; `null` before the first). */
  get lastRetrieved() {
    const value = this.streamColumn('last_retrieved');
    return value === null ? null : String(value);
  }

  streamColumn(column) {
    const row = this.streamRow(column);
    if (!row) throw new Error(`crsql-stream: no stream named ${this.name}`);
    return row.v;
  }
}

/**
 * An inbound stream: `crsql_InboundStream` virtual table `name`.
 *
 * Creates the table if it does not exist, with `args` as its arguments
 * (`from` — the expected sender's site id as hex or a Buffer —, `since`,
 * `tables`); an existing stream keeps its arguments.
 */
class Inbound extends Stream {
  constructor(db, name, args = {}) {
    super(db, name, 'crsql_InboundStream', 'inbound', args);
  }

  /**
   * Apply one package (a Buffer, a JSON string, or a package object from
   * `Outbound.packages()`) and return the new `last_applied`, the position to
   * acknowledge to the sender.
   *
   * A duplicate (already covered) is a no-op. A gap, a corrupted, truncated or
   * foreign package, or one whose tables do not match the local schema throws
   * better-sqlite3's `SqliteError` with the extension's message, and changes
   * nothing.
   */
  apply(pkg) {
    this.statement(`INSERT INTO ${this.quoted}(package) VALUES (?)`).run(toPackageData(pkg));
    return this.lastApplied;
  }

  /** Position of the last applied package (`since` before the first): where the sender should resume. */
  get lastApplied() {
    return String(this.statement(`SELECT last_applied AS v FROM ${this.quoted}`).get().v);
  }

  /** Hex site id of the sender this stream follows (`null` until pinned). */
  get sender() {
    const value = this.statement(`SELECT sender AS v FROM ${this.quoted}`).get().v;
    return value === null ? null : String(value);
  }
}

/** Move up to `batch` packages from `out` to `inb`, acknowledging; return how many moved. */
function pump(out, inb, batch = 100) {
  countArg(batch, 'batch', 1);
  // The receiver may be ahead of the acknowledged position (applied, then the
  // ack was lost): start from what it has.
  out.ack(inb.lastApplied);
  let moved = 0;
  for (const pkg of out.packages({ limit: batch })) {
    inb.apply(pkg);
    moved++;
  }
  if (moved) out.ack(inb.lastApplied);
  return moved;
}

/**
 * Sync two databases both ways until no package moves; return how many
 * packages moved in total.
 *
 * On each side, creates (if missing) an outbound stream towards the other,
 * `crsql_sync_to_<peer site id>`, which leaves out the peer's own changes, and
 * an inbound stream from it, `crsql_sync_from_<peer site id>`, so repeated
 * calls continue where the previous one stopped, also across restarts.
 * `options.outbound` (`max_changes`, `tables`, …) is used when the outbound
 * streams are created. `options.progress`, if given, is called as
 * `progress(done, total)` before the first package and after every batch:
 * `total` is the number of changes the two outbound streams had left to send
 * (their `lag_changes`) at the start, plus any written meanwhile, and `done`
 * how many have been sent and acknowledged since; both only grow, and the
 * last call has `done === total`. Every package and acknowledgement is committed as it
 * goes (unless a transaction is open). Throws a `TypeError` if
 * `options.outbound` has `exclude_sites` (sync sets it to the peer), and an
 * `Error` if the two are the same database or not quiet after `maxRounds`
 * rounds (one round: up to `batch` packages each way).
 */
/**
 * Feeds a `progress(done, total)` callback from `lag_changes` of the outbound
 * streams: `total` is what was left at the start plus whatever was written
 * meanwhile, `done` what left the streams since; both only grow, and
 * `done === total` once every stream has caught up.
 */
class Progress {
  constructor(callback, outs) {
    this.callback = callback;
    this.outs = outs;
    this.done = 0;
    this.total = 0;
    if (callback) {
      this.total = this.left();
      callback(0, this.total);
    }
  }

  left() {
    let left = 0;
    for (const out of this.outs) left += Number(out.streamColumn('lag_changes') || 0);
    return left;
  }

  update() {
    if (!this.callback) return;
    const left = this.left();
    if (this.done + left > this.total) this.total = this.done + left;
    else this.done = this.total - left;
    this.callback(this.done, this.total);
  }
}

function sync(a, b, options) {
  const { maxRounds = 10000, batch = 100, outbound = {}, progress = null } = plainObject(options, 'sync() options');
  if (progress !== null && typeof progress !== 'function') {
    throw new TypeError('crsql-stream.sync: progress must be a function taking (done, total)');
  }
  countArg(maxRounds, 'maxRounds', 1);
  countArg(batch, 'batch', 1);
  plainObject(outbound, 'sync() outbound arguments');
  if (Object.prototype.hasOwnProperty.call(outbound, 'exclude_sites')) {
    throw new TypeError("crsql-stream.sync: exclude_sites is set by sync (to the peer's site id); leave it out");
  }
  const sa = siteId(a);
  const sb = siteId(b);
  if (sa === sb) throw new Error(`crsql-stream.sync: both databases are the same database (site ${sa})`);
  const links = [
    [new Outbound(a, `crsql_sync_to_${sb}`, { ...outbound, exclude_sites: sb }), new Inbound(b, `crsql_sync_from_${sa}`, { from: sa })],
    [new Outbound(b, `crsql_sync_to_${sa}`, { ...outbound, exclude_sites: sa }), new Inbound(a, `crsql_sync_from_${sb}`, { from: sb })],
  ];
  const meter = new Progress(progress, links.map(([out]) => out));
  let total = 0;
  for (let round = 0; round < maxRounds; round++) {
    let moved = 0;
    for (const [out, inb] of links) {
      moved += pump(out, inb, batch);
      meter.update();
    }
    if (moved === 0) return total;
    total += moved;
  }
  throw new Error(`crsql-stream.sync: still moving packages after ${maxRounds} rounds`);
}

module.exports = {
  version,
  ENTRY_POINT,
  path,
  load,
  connect,
  finalize,
  close,
  siteId,
  parsePosition,
  comparePositions,
  Outbound,
  Inbound,
  pump,
  sync,
  /** The client of the crsql-sync hub (hub.js). */
  hub: require('./hub'),
};
