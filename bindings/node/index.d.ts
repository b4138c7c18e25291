// Type declarations for crsql-stream (Node binding of crsql_stream).
// The database type is structural so that this package does not need
// @types/better-sqlite3: any better-sqlite3 `Database` fits.

/** A stream position as the extension writes it: JSON text `'[db_version,seq]'`. */
export type Position = string;

/** A package as it travels: a Buffer (binary encoding) or a string (`encoding = 'json'`). */
export type PackageData = Buffer | string;

/** What this package needs of a better-sqlite3 `Database`. */
export interface Database {
  prepare(sql: string): any;
  loadExtension(path: string, entryPoint?: string): unknown;
  close(): unknown;
  readonly open: boolean;
}

/** One row of an outbound stream: a package and where it lies in the stream. */
export interface Package {
  /** The opaque package to send. */
  readonly data: PackageData;
  /** Position of the last change it covers (inclusive); acknowledge it once applied. */
  readonly cursor: Position;
  /** Position it starts after (exclusive): the previous package's cursor. */
  readonly since: Position;
  /** Number of changes (0 for a package that only moves the position). */
  readonly changes: number;
  /** Encoded size in bytes. */
  readonly size: number;
}

/** One argument item: integers and booleans as numbers, Buffers written as hex. */
export type ArgScalar = string | number | bigint | boolean | Uint8Array;

/** A stream argument value: lists and sets are joined with commas. */
export type ArgValue = ArgScalar | ReadonlyArray<ArgScalar> | ReadonlySet<ArgScalar>;

export interface OutboundArgs {
  since?: Position;
  exclude_sites?: ArgValue;
  local_only?: boolean | number;
  tables?: string | ReadonlyArray<string>;
  max_changes?: number;
  max_bytes?: number;
  encoding?: 'binary' | 'json';
  [key: string]: ArgValue | undefined | null;
}

export interface InboundArgs {
  /** The expected sender's site id (hex or bytes). */
  from?: string | Uint8Array;
  since?: Position;
  tables?: string | ReadonlyArray<string>;
  [key: string]: ArgValue | undefined | null;
}

export const version: string;
/** The extension's entry point symbol. */
export const ENTRY_POINT: string;

/** Absolute path of the bundled extension library (or `$CRSQL_STREAM_EXT`). */
export function path(): string;
/** Load the extension into `db` (no-op if loaded); returns `db`. */
export function load<D extends Database>(db: D): D;
/**
 * `new Database(filename, options)` + `load`; its `close()` runs `crsql_finalize()` first.
 * Returns better-sqlite3's `Database` (typed `any` so that this package does not
 * depend on @types/better-sqlite3; annotate it with that type if you use it).
 */
export function connect(filename?: string | Buffer, options?: object): any;
/** `SELECT crsql_finalize()` (nothing on a closed database). */
export function finalize(db: Database): void;
/** `crsql_finalize()`, then `db.close()`. */
export function close<D extends Database>(db: D): D;
/** The site id as 32 lowercase hex digits. */
export function siteId(db: Database): string;
/**
 * `'[12,3]'` → `[12, 3]`. TypeError for what the extension would refuse;
 * RangeError beyond `Number.MAX_SAFE_INTEGER`.
 */
export function parsePosition(position: Position): [number, number];
/** Negative, 0 or positive as `a` is before, at or after `b` (exact for every valid position). */
export function comparePositions(a: Position, b: Position): number;

/**
 * Creates the stream if `name` does not exist; throws if a table of that name
 * (compared without ASCII case) exists and is not an outbound stream.
 */
export class Outbound {
  constructor(db: Database, name: string, args?: OutboundArgs);
  readonly db: Database;
  readonly name: string;
  /** The next package after `after` (default: after `last_sent`), or null. */
  nextPackage(after?: Position | Package | null): Package | null;
  /** Packages after `last_sent` (or `after`), built one at a time. */
  /** Arguments are checked at the call (limit: an integer >= 0). */
  packages(options?: { limit?: number | null; after?: Position | Package | null }): Generator<Package, void, undefined>;
  /** Record that the peer applied everything up to `cursor`. */
  ack(cursor: Position | Package): void;
  readonly lastSent: Position;
  readonly lastRetrieved: Position | null;
  /** DROP TABLE the stream; throws, dropping nothing, if `name` is no longer this stream. */
  drop(): void;
}

/**
 * Creates the stream if `name` does not exist; throws if a table of that name
 * (compared without ASCII case) exists and is not an inbound stream.
 */
export class Inbound {
  constructor(db: Database, name: string, args?: InboundArgs);
  readonly db: Database;
  readonly name: string;
  /** Apply one package; returns the new `last_applied`. */
  apply(pkg: PackageData | Uint8Array | Package): Position;
  readonly lastApplied: Position;
  readonly sender: string | null;
  /** DROP TABLE the stream; throws, dropping nothing, if `name` is no longer this stream. */
  drop(): void;
}

/** Move up to `batch` packages one way, acknowledging; returns how many moved. */
export function pump(out: Outbound, inb: Inbound, batch?: number): number;

/**
 * Sync two databases both ways until quiet; returns how many packages moved.
 * `maxRounds` and `batch` are integers >= 1; `outbound` must not set
 * `exclude_sites` (sync sets it to the peer). `progress(done, total)` is
 * called before the first package and after every batch, from the outbound
 * streams' `lag_changes`; the last call has `done === total`.
 */
export function sync(
  a: Database,
  b: Database,
  options?: {
    maxRounds?: number;
    batch?: number;
    outbound?: OutboundArgs;
    progress?: (done: number, total: number) => void;
  },
): number;

/** The client of the crsql-sync hub (hub.js, on the `ws` package). */
export * as hub from './hub';
