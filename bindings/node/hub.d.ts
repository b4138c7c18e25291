// Types of the crsql-sync hub client (hub.js), `require('crsql-stream').hub`.
import type { Database } from './index';

/** An error of the hub protocol; `code` is its stable code, null for errors of this client without one. */
export class HubError extends Error {
  readonly code: string | null;
  /** The message that came with the code. */
  readonly hubMessage: string;
  /** Whether retrying cannot help (a sync gives up at once). */
  readonly fatal: boolean;
}
/** No connection to the hub, or it was lost (thrown when retries run out). */
export class HubConnectionError extends HubError {}
/** Not caught up within `timeout`; `last` is the last error, if any. */
export class SyncTimeoutError extends HubError {
  readonly last: HubError | null;
}
export class ProtocolVersionError extends HubError {}
export class BadFrameError extends HubError {}
export class FrameTooLargeError extends HubError {}
export class BadTenantError extends HubError {}
export class UnknownTenantError extends HubError {}
export class UnauthorizedError extends HubError {}
export class ReadOnlyError extends HubError {}
export class ForeignSenderError extends HubError {}
export class GapError extends HubError {}
export class SchemaMismatchError extends HubError {}
export class ResyncRequiredError extends HubError {}
export class BadPackageError extends HubError {}
export class ShuttingDownError extends HubError {}
/** The hub's `timeout` code (no acknowledgement for its --write-timeout). */
export class HubTimeoutError extends HubError {}
export class InternalError extends HubError {}

export const PROTOCOL_VERSION: number;
/** The HubError subclass of a code (unknown codes: a plain HubError). */
export function errorFor(code: string, message: string): HubError;
/** The 16-byte schema hash of a hello. */
export function schemaHash(db: Database): Buffer;

/** Changes moved by the last connection. */
export interface Progress {
  pushed: number;
  pushTotal: number;
  pulled: number;
  pullTotal: number;
}

export interface SyncOptions {
  token?: string | null;
  /** Called with changes moved and expected, both ways, at most every 100 ms and once at the end. */
  progress?: ((done: number, total: number) => void) | null;
  /** Milliseconds; then a SyncTimeoutError. */
  timeout?: number | null;
  /** Failed connections in a row before the last error is thrown. */
  maxRetries?: number | null;
  window?: number;
  /** Milliseconds between looks for local commits (50). */
  poll?: number;
  /** Longest pause between reconnections, ms (10000). */
  maxBackoff?: number;
  maxFrame?: number;
  /** Given to `new WebSocket(url, …)` (ws), e.g. `{ ca }` for a private CA. */
  wsOptions?: object;
  /** Called with each error that is retried. */
  onError?: ((err: HubError) => void) | null;
}

/** Sync until caught up both ways, reconnecting with backoff. */
export function sync(db: Database, url: string, options?: SyncOptions): Promise<Progress>;

/** Keeps `db` in sync in the background (same event loop). */
export class Syncer {
  constructor(db: Database, url: string, options?: SyncOptions);
  readonly running: boolean;
  /** The fatal error that ended it, if any. */
  readonly error: Error | null;
  start(): this;
  /** Stop; rejects with the fatal error that ended it, if one did. */
  stop(): Promise<void>;
}
