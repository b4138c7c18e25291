//! `crsql_OutboundStream`: packages of changes after `last_sent`, produced
//! lazily, one per row.
//!
//! A package holds whole transactions (db_versions). A transaction larger
//! than the limits is split into parts marked with [`Part`]. Filters skip
//! changes but the package positions stay contiguous: a package's `cursor`
//! is the position of the last change it covers, filtered or not, and the
//! next package's `since` is that cursor.

use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::sync::Arc;

use crsql_stream_core::package::{
    Bytes, Encoding, Package, PackageKind, Part, PkgChange, TableEntry, WireValue,
};
use crsql_stream_core::{Position, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::vtab::{Context, IndexConstraintOp, IndexInfo, VTabConnection, VTabKind};

use super::{
    load_state, parse_args, parse_count, parse_position, parse_sites, parse_tables, OUTBOUND,
};
use crate::crr::scan::{RowView, Scanner, SiteMap};
use crate::crr::schema::TableInfo;
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::vtab::{Table, TableCursor};
use crate::state::Ext;

const COL_PACKAGE: c_int = 0;
const COL_CURSOR: c_int = 1;
const COL_SINCE: c_int = 2;
const COL_CHANGES: c_int = 3;
const COL_BYTES: c_int = 4;
const COL_LAST_SENT: c_int = 5;
const COL_LAST_RETRIEVED: c_int = 6;
const COL_REWIND: c_int = 7;

const MAX_CHANGES_LIMIT: i64 = 10_000_000;
const MAX_BYTES_LIMIT: i64 = 1 << 30;

/// Arguments of `CREATE VIRTUAL TABLE ... USING crsql_OutboundStream(...)`.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub since: Position,
    pub exclude_sites: Vec<[u8; 16]>,
    pub local_only: bool,
    pub tables: Option<Vec<String>>,
    pub max_changes: usize,
    pub max_bytes: usize,
    pub encoding: Encoding,
    /// The site this stream sends to, for `crsql_peers` (default: the one
    /// site of `exclude_sites`, if there is exactly one).
    pub peer: Option<[u8; 16]>,
    /// `resync = 'snapshot'`: from below the compaction horizon, send the
    /// compacted deletes too instead of failing with "resync required".
    pub resync_snapshot: bool,
}

impl OutboundConfig {
    pub fn parse(table: &str, args: &[&str]) -> Result<OutboundConfig> {
        let mut cfg = OutboundConfig {
            since: Position::ZERO,
            exclude_sites: Vec::new(),
            local_only: false,
            tables: None,
            max_changes: 1000,
            max_bytes: 1 << 20,
            encoding: Encoding::Binary,
            peer: None,
            resync_snapshot: false,
        };
        for (k, v) in parse_args(OUTBOUND, table, args)? {
            match k.as_str() {
                "since" => cfg.since = parse_position(OUTBOUND, table, "since", &v)?,
                "peer" => {
                    let sites = parse_sites(OUTBOUND, table, "peer", &v)?;
                    if sites.len() != 1 {
                        return Err(err!("{OUTBOUND} {table}: peer must be exactly one site id, got {v:?}"));
                    }
                    cfg.peer = Some(sites[0].0);
                }
                "exclude_sites" => {
                    cfg.exclude_sites = parse_sites(OUTBOUND, table, "exclude_sites", &v)?
                        .into_iter()
                        .map(|s| s.0)
                        .collect()
                }
                "local_only" => {
                    cfg.local_only = match v.trim() {
                        "0" => false,
                        "1" => true,
                        _ => return Err(err!("{OUTBOUND} {table}: local_only must be 0 or 1, got {v:?}")),
                    }
                }
                "tables" => {
                    cfg.tables = Some(parse_tables(OUTBOUND, table, &v)?);
                }
                "max_changes" => {
                    cfg.max_changes = parse_count(OUTBOUND, table, "max_changes", &v, MAX_CHANGES_LIMIT)? as usize
                }
                "max_bytes" => cfg.max_bytes = parse_count(OUTBOUND, table, "max_bytes", &v, MAX_BYTES_LIMIT)? as usize,
                "resync" => {
                    cfg.resync_snapshot = match v.trim() {
                        "error" => false,
                        "snapshot" => true,
                        _ => return Err(err!("{OUTBOUND} {table}: resync must be 'error' or 'snapshot', got {v:?}")),
                    }
                }
                "encoding" => {
                    cfg.encoding = match v.trim() {
                        "binary" => Encoding::Binary,
                        "json" => Encoding::Json,
                        _ => return Err(err!("{OUTBOUND} {table}: encoding must be 'binary' or 'json', got {v:?}")),
                    }
                }
                _ => {
                    return Err(err!(
                        "{OUTBOUND} {table}: unknown argument {k:?} (expected since, exclude_sites, local_only, \
                         tables, max_changes, max_bytes, encoding, peer, resync)"
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

pub struct OutboundTable {
    ext: Arc<Ext>,
    name: String,
    cfg: OutboundConfig,
    stream_id: Vec<u8>,
}

impl Table for OutboundTable {
    type Aux = Arc<Ext>;
    type Cursor = OutboundCursor;
    const NAME: &'static str = OUTBOUND;
    const KIND: VTabKind = VTabKind::Default;

    fn connect(
        _db: &mut VTabConnection,
        aux: Option<&Arc<Ext>>,
        create: bool,
        schema: &str,
        name: &str,
        args: &[&str],
    ) -> Result<(String, Self)> {
        super::require_main(OUTBOUND, schema, name)?;
        let ext = super::ext_of(OUTBOUND, aux)?;
        let cfg = OutboundConfig::parse(name, args)?;
        let stream_id = {
            let mut inner = ext.lock(OUTBOUND)?;
            if create {
                super::check_new_name(OUTBOUND, name)?;
                if !cfg.resync_snapshot {
                    super::compact::refuse_behind(OUTBOUND, name, &inner.conn, cfg.since, true)?;
                }
                super::check_crrs(&ext, &mut inner, OUTBOUND, name, cfg.tables.as_ref())?;
                let id: Vec<u8> = inner
                    .conn
                    .query_row("SELECT randomblob(16)", [], |r| r.get(0))?;
                let peer = cfg.peer.map(|p| p.to_vec()).or_else(|| {
                    (cfg.exclude_sites.len() == 1).then(|| cfg.exclude_sites[0].to_vec())
                });
                super::insert_state(
                    &inner.conn,
                    name,
                    "outbound",
                    Some(&id),
                    peer.as_deref(),
                    cfg.since,
                )?;
            }
            // Without state the table still connects, so that DROP works;
            // every other use reports the missing state.
            super::find_state(&inner.conn, name, "outbound")?
                .and_then(|s| s.stream_id)
                .unwrap_or_default()
        };
        let pkg_type = if cfg.encoding == Encoding::Json {
            "TEXT"
        } else {
            "BLOB"
        };
        Ok((
            format!(
                "CREATE TABLE x(package {pkg_type}, cursor TEXT, since TEXT, changes INTEGER, bytes INTEGER, \
                 last_sent TEXT HIDDEN, last_retrieved TEXT HIDDEN, rewind TEXT HIDDEN)"
            ),
            OutboundTable {
                ext,
                name: name.to_string(),
                cfg,
                stream_id,
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        let found = info.constraints().position(|c| {
            c.is_usable()
                && c.column() == COL_CURSOR
                && c.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT
        });
        if let Some(i) = found {
            let mut u = info.constraint_usage(i);
            u.set_argv_index(1);
            u.set_omit(true);
            info.set_idx_num(1);
        }
        let ordered = info
            .order_bys()
            .all(|o| o.column() == COL_CURSOR && !o.is_order_by_desc());
        info.set_order_by_consumed(ordered);
        info.set_estimated_cost(1000.0);
        Ok(())
    }

    fn open(&mut self) -> Result<OutboundCursor> {
        if self.stream_id.is_empty() {
            return Err(err!(
                "{OUTBOUND} {}: its stored state (crsql_stream_state) is missing; DROP and re-create the table",
                self.name
            ));
        }
        Ok(OutboundCursor {
            ext: Arc::clone(&self.ext),
            name: self.name.clone(),
            cfg: self.cfg.clone(),
            stream_id: self.stream_id.clone(),
            producer: None,
            row: None,
            rowid: 0,
        })
    }

    fn insert(&mut self, args: &[ValueRef<'_>]) -> Result<i64> {
        let arg = |col: c_int| args.get(col as usize).copied().unwrap_or(ValueRef::Null);
        let (ack, rewind) = (arg(COL_LAST_SENT), arg(COL_REWIND));
        let others_null = args.iter().enumerate().all(|(i, v)| {
            i == COL_LAST_SENT as usize || i == COL_REWIND as usize || *v == ValueRef::Null
        });
        let (what, value) = match (ack, rewind) {
            (ValueRef::Null, ValueRef::Null) if others_null => {
                return Err(err!(
                    "{OUTBOUND} {}: nothing to acknowledge: every inserted value is NULL; \
                     acknowledge with INSERT INTO {}(last_sent) VALUES (<position>), a position such as '[12,3]'",
                    self.name,
                    self.name
                ))
            }
            (v, ValueRef::Null) if others_null => ("last_sent", v),
            (ValueRef::Null, v) if others_null => ("rewind", v),
            _ => {
                return Err(Error::Msg(format!(
                    "{OUTBOUND} {}: only INSERT INTO {}(last_sent) VALUES (<position>) (acknowledge) or \
                     INSERT INTO {}(rewind) VALUES (<position>) (move the stream back) is supported",
                    self.name, self.name, self.name
                )))
            }
        };
        let pos = super::position_value(OUTBOUND, &self.name, what, value)?;
        let mut inner = self.ext.lock(OUTBOUND)?;
        let in_write_tx = self.ext.tx.pending() >= 0;
        let newest = inner.newest_position(&self.ext.tx)?;
        // Inside a write transaction the newest committed cells may already
        // have moved to the pending version: compare the version there.
        let beyond = if in_write_tx {
            pos.db_version > newest.db_version
        } else {
            pos > newest
        };
        if beyond {
            return Err(err!(
                "{OUTBOUND} {}: cannot {} {pos}: the newest change of this database is at {newest}. \
                 If this database was restored from a backup, give it a new site id with \
                 SELECT crsql_new_site_id() and follow docs/operations.md (\"Restoring a database\")",
                self.name,
                if what == "rewind" { "rewind to" } else { "acknowledge" }
            ));
        }
        let state = load_state(&inner.conn, &self.name)?
            .ok_or_else(|| err!("{OUTBOUND} {}: stored state is missing", self.name))?;
        if what == "rewind" {
            // The peer lost what it had acknowledged (a restored backup):
            // send again from `pos`, unless deletes after it were compacted.
            if !self.cfg.resync_snapshot {
                super::compact::refuse_behind(OUTBOUND, &self.name, &inner.conn, pos, false)?;
            }
            super::set_position(&inner.conn, &self.name, pos)?;
            self.ext.forget_retrieved(&self.name);
        } else {
            super::set_position(&inner.conn, &self.name, pos.max(state.position))?;
        }
        Ok(0)
    }

    fn delete(&mut self) -> Result<()> {
        Err(err!(
            "{OUTBOUND} {}: DELETE is not supported; DROP TABLE removes the stream",
            self.name
        ))
    }

    fn update(&mut self) -> Result<()> {
        Err(err!(
            "{OUTBOUND} {}: UPDATE is not supported; acknowledge with INSERT INTO {}(last_sent) VALUES (<position>)",
            self.name,
            self.name
        ))
    }

    fn destroy(&self) -> Result<()> {
        let inner = self.ext.lock(OUTBOUND)?;
        super::delete_state(&inner.conn, &self.name)?;
        self.ext.forget_retrieved(&self.name);
        Ok(())
    }
}

/// One change read for a package.
struct OwnedChange {
    table: usize,
    pk: Vec<u8>,
    cid: u32,
    val: Value,
    col_version: i64,
    db_version: i64,
    site: i64,
    cl: i64,
    seq: i64,
}

/// Bytes of a postcard varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of a zigzag-encoded i64 varint.
fn zigzag_len(v: i64) -> usize {
    varint_len(((v << 1) ^ (v >> 63)) as u64)
}

/// An upper bound of the JSON text of a string (quotes and escapes).
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

impl OwnedChange {
    /// An upper bound of this change's size inside an encoded package.
    fn wire_size(&self, encoding: Encoding) -> usize {
        match encoding {
            Encoding::Binary => {
                let val = 1 + match &self.val {
                    Value::Null => 0,
                    Value::Integer(i) => zigzag_len(*i),
                    Value::Real(_) => 8,
                    Value::Text(t) => varint_len(t.len() as u64) + t.len(),
                    Value::Blob(b) => varint_len(b.len() as u64) + b.len(),
                };
                // table, cid and site indexes: at most 5 bytes each
                15 + varint_len(self.pk.len() as u64)
                    + self.pk.len()
                    + val
                    + zigzag_len(self.col_version)
                    + zigzag_len(self.db_version)
                    + zigzag_len(self.cl)
                    + zigzag_len(self.seq)
            }
            Encoding::Json => {
                let val = match &self.val {
                    Value::Null => 6,
                    Value::Integer(_) => 34,
                    Value::Real(_) => 40,
                    Value::Text(t) => 11 + json_str_len(t),
                    Value::Blob(b) => 13 + 2 * b.len(),
                };
                // keys, punctuation, and five integers of at most 20 digits
                90 + 5 * 20 + 3 * 10 + 2 * self.pk.len() + val
            }
        }
    }
}

/// All changes of one db_version read so far.
struct Group {
    db_version: i64,
    changes: Vec<OwnedChange>,
    bytes: usize,
    /// Position of the last row read (filtered or not).
    last: Position,
    /// True when every row of the db_version was read.
    complete: bool,
}

/// The package's number of a change's column from its col_name: 0 for the
/// sentinel, 1 + the column's index.
fn cid_of(row: &RowView<'_>) -> Result<u32> {
    Ok(match row.cid() {
        ValueRef::Text(b"-1") => 0,
        ValueRef::Text(name) => {
            let name = std::str::from_utf8(name).unwrap_or_default();
            match row.table.col_index(name) {
                    Some(i) => i as u32 + 1,
                    None => {
                        return Err(err!(
                            "{OUTBOUND}: clock row of {} names column {name:?}, which the table does not have",
                            row.table.name
                        ))
                    }
                }
        }
        _ => {
            return Err(err!(
                "{OUTBOUND}: clock row of {} has a non-text col_name",
                row.table.name
            ))
        }
    })
}

/// A package ready to be returned as a row.
struct Row {
    package: Vec<u8>,
    since: Position,
    cursor: Position,
    changes: usize,
}

/// A memo window holds the rows of this many packages of a split
/// transaction (one sort of the transaction serves that many parts)...
const MEMO_WINDOW_PACKAGES: usize = 1024;
/// ...but never more than this many rows (24 bytes each: 24 MiB).
const MEMO_WINDOW_MAX: usize = 1 << 20;
/// Resuming inside a transaction with more rows than this (in a table), or
/// than `max_changes`, reads it through a memo.
const MEMO_ABOVE_ROWS: usize = 256;

/// Reads changes after a position and cuts them into packages.
struct Producer {
    scanner: Scanner,
    tables: Vec<Arc<TableInfo>>,
    sites: SiteMap,
    excluded: HashSet<i64>,
    local_only: bool,
    /// Ordinals of this database's own site ids, current (0) and former.
    local: HashSet<i64>,
    max_changes: usize,
    /// Byte limit for the changes (max_bytes less the header's bound).
    max_bytes: usize,
    encoding: Encoding,
    pending: Option<Group>,
    /// Position of the newest committed change when the scan started;
    /// `Err(committed)` until needed, when the scan reads every clock row
    /// of that version ([`Producer::newest`]).
    newest: std::result::Result<Position, i64>,
    /// The compaction horizon, when the scan reads compacted deletes: the
    /// packages before it are snapshot packages.
    snapshot_through: Option<Position>,
}

/// An upper bound of a package's size without its changes: fixed fields,
/// every table's dictionary entry and every known site.
fn header_bound(name: &str, tables: &[Arc<TableInfo>], sites: usize, encoding: Encoding) -> usize {
    let tables: usize = tables
        .iter()
        .map(|t| 24 + t.name.len() + t.cols.iter().map(|c| c.name.len() + 4).sum::<usize>())
        .sum();
    let binary = 160 + name.len() + tables + 20 * (sites + 1);
    match encoding {
        Encoding::Binary => binary,
        Encoding::Json => 3 * binary + 200,
    }
}

impl Producer {
    /// With `records`, the compacted deletes after `start` up to it are
    /// read too, and the packages up to there are snapshot packages.
    fn open(
        ext: &Ext,
        name: &str,
        cfg: &OutboundConfig,
        start: Position,
        records: Option<Position>,
    ) -> Result<Producer> {
        let mut inner = ext.lock(OUTBOUND)?;
        inner.sync(&ext.tx)?;
        // A scan also sees this transaction's own DDL (an alter window).
        inner.refresh_tables(&ext.tx, true)?;
        // Only committed changes: rows of this connection's open write
        // transaction carry versions above the committed one and have no
        // final position yet.
        if ext.tx.pending() >= 0 {
            return Err(err!(
                "{OUTBOUND} {name}: cannot read packages inside a transaction that has written CRR changes \
                 (a rollback could un-skip rows the package already passed); commit or roll back first"
            ));
        }
        let committed = inner.db_version(&ext.tx)?;
        let tables: Vec<Arc<TableInfo>> = match &cfg.tables {
            None => inner.tables().to_vec(),
            // A table listed twice is read once.
            Some(names) => names.iter().filter_map(|n| inner.table(n)).fold(
                Vec::new(),
                |mut tables: Vec<Arc<TableInfo>>, t| {
                    if !tables.iter().any(|seen| Arc::ptr_eq(seen, &t)) {
                        tables.push(t);
                    }
                    tables
                },
            ),
        };
        // The newest position's seq costs a read of its transaction's clock
        // rows (a table seek per row): a scan through that transaction that
        // reads every clock row learns it on the way (DECISIONS D57).
        let newest = match inner.cached_newest(committed) {
            Some(p) => Ok(p),
            None if start.db_version < committed
                && records.is_none()
                && inner.has_every_clock(&tables) =>
            {
                Err(committed)
            }
            None => Ok(inner.newest_position(&ext.tx)?),
        };
        let sites = SiteMap::load(&inner)?;
        let excluded = cfg
            .exclude_sites
            .iter()
            .filter_map(|s| sites.ordinal(s))
            .collect();
        // Changes made here under an earlier site id (crsql_new_site_id)
        // are local too.
        let local = std::iter::once(0)
            .chain(
                crate::crr::former_site_ids(&inner.conn)?
                    .iter()
                    .filter_map(|s| sites.ordinal(s)),
            )
            .collect();
        drop(inner);
        // A stream that has caught up (the usual poll) reads no table: every
        // committed change lies at or before `newest` (at its version).
        let mut scanner = if newest.is_ok_and(|n| start >= n) {
            Scanner::empty()
        } else {
            // A transaction larger than a package is sent in parts, each read
            // from the middle of the transaction: through a memo of its order,
            // in windows of up to MEMO_WINDOW_PACKAGES packages' worth of rows.
            // Transactions split by max_bytes (large values) have fewer rows than
            // max_changes: past MEMO_ABOVE_ROWS rows they take the memo too.
            let window = cfg
                .max_changes
                .saturating_mul(MEMO_WINDOW_PACKAGES)
                .min(MEMO_WINDOW_MAX);
            let mut memos = ext.memos.lock().unwrap_or_else(|e| e.into_inner());
            Scanner::open_after(
                ext.db,
                &tables,
                start,
                committed,
                cfg.max_changes.min(MEMO_ABOVE_ROWS),
                window,
                &mut memos,
            )?
        };
        if let Some(through) = records {
            scanner.add_records(ext.db, &tables, start, through)?;
        }
        let header = header_bound(name, &tables, sites.count(), cfg.encoding);
        Ok(Producer {
            scanner,
            tables,
            sites,
            excluded,
            local_only: cfg.local_only,
            local,
            max_changes: cfg.max_changes,
            max_bytes: cfg.max_bytes.saturating_sub(header).max(1),
            encoding: cfg.encoding,
            pending: None,
            newest,
            snapshot_through: records,
        })
    }

    /// Read the rest of the current db_version, stopping once the included
    /// changes reach the limits.
    /// Read rows of the current db_version into `g` (a new group when None)
    /// until the group ends or its included changes reach the limits.
    fn read_group(
        &mut self,
        g: Option<Group>,
        max_changes: usize,
        max_bytes: usize,
    ) -> Result<Option<Group>> {
        let mut g = match g {
            Some(g) => g,
            None => {
                let Some(first) = self.scanner.peek_position() else {
                    return Ok(None);
                };
                Group {
                    db_version: first.db_version,
                    changes: Vec::new(),
                    bytes: 0,
                    last: first,
                    complete: false,
                }
            }
        };
        if g.complete {
            return Ok(Some(g));
        }
        loop {
            let Some(row) = self.scanner.peek() else {
                g.complete = true;
                break;
            };
            if row.db_version() != g.db_version {
                g.complete = true;
                break;
            }
            if g.changes.len() >= max_changes {
                break;
            }
            let site = row.site_ordinal();
            let included = (self.excluded.is_empty() || !self.excluded.contains(&site))
                && (!self.local_only || self.local.contains(&site));
            if included {
                let table = self
                    .tables
                    .iter()
                    .position(|t| Arc::ptr_eq(t, row.table))
                    .unwrap_or_default();
                let cid = match row.cid_index() {
                    Some(cid) => cid,
                    None => cid_of(&row)?,
                };
                let c = OwnedChange {
                    table,
                    pk: row.pk()?,
                    cid,
                    val: crate::crr::values::to_core(row.val()).to_owned_value(),
                    col_version: row.col_version(),
                    db_version: row.db_version(),
                    site,
                    cl: row.cl(),
                    seq: row.seq(),
                };
                let size = c.wire_size(self.encoding);
                // Stop before a change that would pass the byte limit; a
                // change bigger than the limit still travels alone.
                if !g.changes.is_empty() && g.bytes + size > max_bytes {
                    break;
                }
                g.bytes += size;
                g.changes.push(c);
            }
            g.last = row.position();
            self.scanner.advance()?;
        }
        Ok(Some(g))
    }

    /// The newest position when the scan started; once the scan is at its
    /// end, a deferred one comes from the rows it read (or the clock
    /// tables, if it cannot tell).
    fn newest(&mut self, ext: &Ext) -> Result<Position> {
        let p = match self.newest {
            Ok(p) => p,
            Err(v) => {
                let seen = self.scanner.max_seq_at(v);
                let mut inner = ext.lock(OUTBOUND)?;
                inner.newest_after_scan(&ext.tx, Some((v, seen)))?
            }
        };
        self.newest = Ok(p);
        Ok(p)
    }

    /// The pending group (read further, up to the limits) or the next one.
    fn take_group(&mut self, max_changes: usize, max_bytes: usize) -> Result<Option<Group>> {
        let pending = self.pending.take();
        self.read_group(pending, max_changes, max_bytes)
    }

    /// Build the next package starting after `since`, or None at the end.
    fn next(
        &mut self,
        ext: &Ext,
        name: &str,
        stream_id: &[u8],
        encoding: Encoding,
        since: Position,
    ) -> Result<Option<Row>> {
        // Starting inside a db_version means continuing a split transaction.
        let continuing = self.pending.is_none()
            && since > Position::ZERO
            && self.scanner.peek_position().map(|p| p.db_version) == Some(since.db_version);
        let Some(first) = self.take_group(self.max_changes, self.max_bytes)? else {
            // Nothing left to send, but positions beyond `since` exist (changes
            // this stream does not carry, or versions without a clock row):
            // an empty package moves the stream past them, so its lag
            // reaches 0 and later reads do not scan them again.
            let newest = self.newest(ext)?;
            if since < newest {
                let package = self.encode(
                    ext,
                    name,
                    stream_id,
                    encoding,
                    since,
                    newest,
                    None,
                    Vec::new(),
                )?;
                return Ok(Some(Row {
                    package,
                    since,
                    cursor: newest,
                    changes: 0,
                }));
            }
            return Ok(None);
        };
        let mut part = None;
        let mut cursor = first.last;
        let mut changes = Vec::new();
        let mut bytes = 0;
        if continuing || !first.complete {
            part = Some(Part {
                db_version: first.db_version,
                last: first.complete,
            });
            changes = first.changes;
        } else {
            bytes += first.bytes;
            changes.extend(first.changes);
            let mut scanned_groups = 1usize;
            while changes.len() < self.max_changes
                && bytes < self.max_bytes
                && scanned_groups < 10_000
            {
                // Read the next group only as far as it could still fit; if
                // it does not, it stays pending (partly read) for the next
                // package, so no row is read twice.
                let room = self.max_changes - changes.len();
                let room_bytes = self.max_bytes - bytes;
                let Some(g) = self.take_group(room, room_bytes)? else {
                    break;
                };
                scanned_groups += 1;
                let fits = g.complete && g.changes.len() <= room && g.bytes <= room_bytes;
                if !fits {
                    self.pending = Some(g);
                    break;
                }
                cursor = g.last;
                bytes += g.bytes;
                changes.extend(g.changes);
            }
        }
        let n = changes.len();
        let package = self.encode(ext, name, stream_id, encoding, since, cursor, part, changes)?;
        Ok(Some(Row {
            package,
            since,
            cursor,
            changes: n,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        ext: &Ext,
        name: &str,
        stream_id: &[u8],
        encoding: Encoding,
        since: Position,
        cursor: Position,
        part: Option<Part>,
        changes: Vec<OwnedChange>,
    ) -> Result<Vec<u8>> {
        let mut table_idx: HashMap<usize, u32> = HashMap::new();
        let mut tables: Vec<TableEntry> = Vec::new();
        let mut site_idx: HashMap<i64, u32> = HashMap::new();
        let mut sites: Vec<Bytes> = Vec::new();
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let t = *table_idx.entry(c.table).or_insert_with(|| {
                let info = &self.tables[c.table];
                tables.push(TableEntry {
                    name: info.name.clone(),
                    schema_hash: info.schema_hash(),
                    columns: info.cols.iter().map(|col| col.name.clone()).collect(),
                });
                tables.len() as u32 - 1
            });
            let s = match site_idx.get(&c.site) {
                Some(s) => *s,
                None => {
                    let table = &self.tables[c.table].name;
                    sites.push(Bytes::from(self.sites.site(c.site, table)?.to_vec()));
                    site_idx.insert(c.site, sites.len() as u32 - 1);
                    sites.len() as u32 - 1
                }
            };
            out.push(PkgChange {
                table: t,
                pk: Bytes::from(c.pk),
                cid: c.cid,
                val: WireValue::Owned(c.val),
                col_version: c.col_version,
                db_version: c.db_version,
                site: s,
                cl: c.cl,
                seq: c.seq,
            });
        }
        let kind = match self.snapshot_through {
            Some(through) if since < through => PackageKind::Snapshot,
            _ => PackageKind::Changes,
        };
        let pkg = Package {
            kind,
            sender: Bytes::from(ext.site_id().to_vec()),
            stream_id: Bytes::from(stream_id.to_vec()),
            stream: name.to_string(),
            since,
            cursor,
            part,
            tables,
            sites,
            changes: out,
        };
        pkg.encode(encoding)
            .map_err(|e| err!("{OUTBOUND} {name}: cannot encode a package: {e}"))
    }
}

pub struct OutboundCursor {
    ext: Arc<Ext>,
    name: String,
    cfg: OutboundConfig,
    stream_id: Vec<u8>,
    producer: Option<Producer>,
    row: Option<Row>,
    rowid: i64,
}

impl OutboundCursor {
    fn produce(&mut self, since: Position) -> Result<()> {
        let Some(p) = self.producer.as_mut() else {
            self.row = None;
            return Ok(());
        };
        self.row = p.next(
            &self.ext,
            &self.name,
            &self.stream_id,
            self.cfg.encoding,
            since,
        )?;
        if let Some(r) = &self.row {
            self.ext.note_retrieved(&self.name, r.cursor);
        }
        Ok(())
    }
}

impl TableCursor for OutboundCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &[ValueRef<'_>],
    ) -> Result<()> {
        let start = if idx_num == 1 && !args.is_empty() {
            if args[0] == ValueRef::Null {
                // `cursor > NULL` is never true: no rows.
                self.producer = None;
                self.row = None;
                return Ok(());
            }
            Some(super::position_value(
                OUTBOUND, &self.name, "cursor", args[0],
            )?)
        } else {
            None
        };
        let (start, records) = {
            let inner = self.ext.lock(OUTBOUND)?;
            let state = load_state(&inner.conn, &self.name)?
                .ok_or_else(|| err!("{OUTBOUND} {}: stored state is missing", self.name))?;
            let start = start.unwrap_or(state.position);
            // Deletes compacted after `start` are sent from their records
            // in snapshot mode, and by a stream created from nothing (its
            // peer may be a restored copy holding the deleted rows) until it
            // passes the horizon; otherwise they can no longer be sent. (A
            // stream of an active peer never lies below the horizon: it
            // holds it. One left behind by compaction is marked `resync`,
            // and other ways below it are refused: `since`, `rewind`.)
            let through = super::compact::compacted_through(&inner.conn)?.filter(|h| start < *h);
            let fresh = self.cfg.since == Position::ZERO && !state.resync;
            let records = through.filter(|_| self.cfg.resync_snapshot || fresh);
            if records.is_none()
                && !self.cfg.resync_snapshot
                && (state.resync || super::compact::is_behind(&inner.conn, start, true)?)
            {
                return Err(super::compact::resync_required(
                    OUTBOUND,
                    &self.name,
                    &inner.conn,
                )?);
            }
            (start, records)
        };
        self.rowid = 0;
        self.producer = Some(Producer::open(
            &self.ext, &self.name, &self.cfg, start, records,
        )?);
        self.produce(start)
    }

    fn next(&mut self) -> Result<()> {
        self.rowid += 1;
        let since = match &self.row {
            Some(r) => r.cursor,
            None => return Ok(()),
        };
        self.produce(since)
    }

    fn eof(&self) -> bool {
        self.row.is_none()
    }

    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()> {
        let Some(r) = &self.row else {
            return Ok(ctx.set_result(&rusqlite::types::Null)?);
        };
        match col {
            COL_PACKAGE => match self.cfg.encoding {
                Encoding::Binary => ctx.set_result(&r.package)?,
                Encoding::Json => {
                    ctx.set_result(&ToSqlOutput::Borrowed(ValueRef::Text(&r.package)))?
                }
            },
            COL_CURSOR => ctx.set_result(&r.cursor.to_string())?,
            COL_SINCE => ctx.set_result(&r.since.to_string())?,
            COL_CHANGES => ctx.set_result(&(r.changes as i64))?,
            COL_BYTES => ctx.set_result(&(r.package.len() as i64))?,
            COL_LAST_SENT => {
                let inner = self.ext.lock(OUTBOUND)?;
                let pos = load_state(&inner.conn, &self.name)?.map(|s| s.position.to_string());
                ctx.set_result(&pos)?
            }
            COL_LAST_RETRIEVED => {
                ctx.set_result(&self.ext.retrieved(&self.name).map(|p| p.to_string()))?
            }
            _ => ctx.set_result(&rusqlite::types::Null)?,
        }
        Ok(())
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.rowid)
    }
}

impl TableInfo {
    /// Hash of this table's shape, as carried in packages.
    pub fn schema_hash(&self) -> u64 {
        let pks: Vec<&str> = self.pks.iter().map(|c| c.name.as_str()).collect();
        let cols: Vec<&str> = self.cols.iter().map(|c| c.name.as_str()).collect();
        crsql_stream_core::package::schema_hash(&self.name, &pks, &cols)
    }
}
