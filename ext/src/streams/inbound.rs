//! `crsql_InboundStream`: applies packages from one outbound stream of one
//! sender, in order, exactly once in effect.
//!
//! `INSERT INTO t(package) VALUES (?)` checks, in order: the package decodes
//! and its checksum matches; it comes from the expected sender and stream;
//! it is not already covered (then it is a no-op); it does not leave a gap;
//! every table is allowed and has the sender's schema. Only then are its
//! changes merged, and `last_applied` moves to its cursor, in the same
//! statement: an error anywhere leaves data and position untouched.

use std::ffi::c_int;
use std::sync::Arc;

use crsql_stream_core::package::{to_hex, Package, TableEntry};
use crsql_stream_core::Position;
use rusqlite::types::ValueRef;
use rusqlite::vtab::{Context, IndexInfo, VTabConnection, VTabKind};
use rusqlite::{params, Connection, OptionalExtension};

use super::batch::MergeBatch;
use super::pending::Known;
use super::{
    load_state, parse_args, parse_position, parse_sites, parse_tables, pending, StreamState,
    INBOUND,
};
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::vtab::{Table, TableCursor};
use crate::state::{Ext, Inner};

const COL_LAST_APPLIED: c_int = 0;
const COL_PACKAGE: c_int = 1;
const COL_SENDER: c_int = 2;

/// Arguments of `CREATE VIRTUAL TABLE ... USING crsql_InboundStream(...)`.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub from: Option<[u8; 16]>,
    pub since: Position,
    pub tables: Option<Vec<String>>,
}

impl InboundConfig {
    pub fn parse(table: &str, args: &[&str]) -> Result<InboundConfig> {
        let mut cfg = InboundConfig {
            from: None,
            since: Position::ZERO,
            tables: None,
        };
        for (k, v) in parse_args(INBOUND, table, args)? {
            match k.as_str() {
                "from" => {
                    let sites = parse_sites(INBOUND, table, "from", &v)?;
                    if sites.len() != 1 {
                        return Err(err!(
                            "{INBOUND} {table}: from must be exactly one site id, got {v:?}"
                        ));
                    }
                    cfg.from = Some(sites[0].0);
                }
                "since" => cfg.since = parse_position(INBOUND, table, "since", &v)?,
                "tables" => {
                    cfg.tables = Some(parse_tables(INBOUND, table, &v)?);
                }
                _ => {
                    return Err(err!(
                        "{INBOUND} {table}: unknown argument {k:?} (expected from, since, tables)"
                    ))
                }
            }
        }
        Ok(cfg)
    }
}

pub struct InboundTable {
    ext: Arc<Ext>,
    name: String,
    cfg: InboundConfig,
}

impl Table for InboundTable {
    type Aux = Arc<Ext>;
    type Cursor = InboundCursor;
    const NAME: &'static str = INBOUND;
    const KIND: VTabKind = VTabKind::Default;

    fn connect(
        _db: &mut VTabConnection,
        aux: Option<&Arc<Ext>>,
        create: bool,
        schema: &str,
        name: &str,
        args: &[&str],
    ) -> Result<(String, Self)> {
        super::require_main(INBOUND, schema, name)?;
        let ext = super::ext_of(INBOUND, aux)?;
        let cfg = InboundConfig::parse(name, args)?;
        {
            let mut inner = ext.lock(INBOUND)?;
            if create {
                super::check_new_name(INBOUND, name)?;
                super::check_crrs(&ext, &mut inner, INBOUND, name, cfg.tables.as_ref())?;
                let from = cfg.from.map(|f| f.to_vec());
                super::insert_state(
                    &inner.conn,
                    name,
                    "inbound",
                    None,
                    from.as_deref(),
                    cfg.since,
                )?;
            } else {
                // Without state the table still connects (so DROP works);
                // applying and reading report the missing state.
                super::find_state(&inner.conn, name, "inbound")?;
            }
        }
        Ok((
            "CREATE TABLE x(last_applied TEXT, package BLOB HIDDEN, sender TEXT HIDDEN)".into(),
            InboundTable {
                ext,
                name: name.to_string(),
                cfg,
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        info.set_estimated_cost(1.0);
        Ok(())
    }

    fn open(&mut self) -> Result<InboundCursor> {
        Ok(InboundCursor {
            ext: Arc::clone(&self.ext),
            name: self.name.clone(),
            state: None,
        })
    }

    fn insert(&mut self, args: &[ValueRef<'_>]) -> Result<i64> {
        let bytes = match args.get(COL_PACKAGE as usize).copied() {
            Some(ValueRef::Blob(b)) | Some(ValueRef::Text(b)) => b,
            _ => {
                return Err(err!(
                    "{INBOUND} {}: INSERT INTO {}(package) VALUES (?) needs a package (BLOB or JSON TEXT)",
                    self.name,
                    self.name
                ))
            }
        };
        apply_package(&self.ext, &self.name, &self.cfg, bytes)?;
        Ok(0)
    }

    fn delete(&mut self) -> Result<()> {
        Err(err!(
            "{INBOUND} {}: DELETE is not supported; DROP TABLE removes the stream",
            self.name
        ))
    }

    fn update(&mut self) -> Result<()> {
        Err(err!(
            "{INBOUND} {}: UPDATE is not supported; apply packages with INSERT",
            self.name
        ))
    }

    fn destroy(&self) -> Result<()> {
        let inner = self.ext.lock(INBOUND)?;
        super::delete_state(&inner.conn, &self.name)
    }
}

fn hex(b: &[u8]) -> String {
    to_hex(b)
}

/// Apply one package to the inbound stream `name` (see the module docs).
///
/// The merges run as ONE nested `INSERT INTO crsql_internal_merge(package)
/// SELECT ...` statement (`super::batch`). SQLite gives that nested
/// statement its own statement journal, so a change that fails half-way
/// through a package rolls back every change of the package, even inside
/// the caller's explicit transaction (a single-row INSERT into a virtual
/// table gets no statement journal, and SAVEPOINT cannot be opened while
/// the caller's INSERT runs). Positions are written only afterwards.
fn apply_package(ext: &Ext, name: &str, cfg: &InboundConfig, bytes: &[u8]) -> Result<()> {
    let pkg = Package::decode(bytes).map_err(|e| err!("{INBOUND} {name}: {e}"))?;
    let (staged_dbv, known, applied) = {
        let mut inner = ext.lock(INBOUND)?;
        let Some(Checked {
            last,
            known,
            applied,
        }) = check_package(ext, &mut inner, name, cfg, &pkg)?
        else {
            return Ok(()); // already covered: duplicates are no-ops
        };
        (staged_db_version(&inner.conn, name, last)?, known, applied)
    };
    if let Some(part) = pkg.part {
        // Nothing staged and a package applied since the stream was
        // created: `last_applied` ended the transaction as the sender then
        // packed it, and this part is a tail of it that a later write at
        // the sender has since moved to a newer version (a stale or
        // duplicated delivery). Its changes merge like any others.
        if pkg.since.db_version == part.db_version && staged_dbv.is_none() && !applied {
            return Err(missing_first_parts(name, &pkg, part.db_version));
        }
    }
    let (cursor, sender, stream_id) = (pkg.cursor, pkg.sender.0.to_vec(), pkg.stream_id.0.to_vec());
    let stage_this = matches!(pkg.part, Some(part) if !part.last);
    if stage_this {
        // A new split transaction: staged parts of an older one (whose other
        // changes were superseded at the sender) are applied first.
        if staged_dbv.is_some() && staged_dbv != pkg.part.map(|p| p.db_version) {
            merge_staged(ext, name)?;
        }
        stage(ext, name, bytes)?;
    } else if staged_dbv.is_some() {
        // The last part: the whole transaction, in part order, at once. The
        // merge is one journaled statement, but the caller's single-row
        // INSERT has no journal to undo the staging of this part: a refused
        // merge takes it back itself.
        let part = stage(ext, name, bytes)?;
        if let Err(e) = merge_staged(ext, name) {
            let inner = ext.lock(INBOUND)?;
            inner
                .conn
                .prepare_cached("DELETE FROM crsql_stream_staging WHERE name = ?1 AND part = ?2")?
                .execute(params![name, part])?;
            return Err(e);
        }
    } else {
        merge_package(ext, name, "", pkg.into_owned(), known)?;
    }
    let inner = ext.lock(INBOUND)?;
    inner
        .conn
        .prepare_cached(
            "UPDATE crsql_stream_state SET db_version = ?2, seq = ?3, peer = ?4, stream_id = ?5 WHERE name = ?1",
        )?
        .execute(params![name, cursor.db_version, cursor.seq, sender, stream_id])?;
    super::touch(&inner.conn, name)
}

/// A part that continues a split transaction (its `since` lies inside it)
/// reached a stream that holds none of the transaction's earlier parts: the
/// stream was created at a position inside the transaction, and the parts
/// before it were staged by a stream that no longer exists. Merging the
/// rest alone would lose the first parts for good, so the package is
/// refused, with the way to have the transaction sent whole: both ends
/// start again from the end of the version before it.
fn missing_first_parts(name: &str, pkg: &Package, v: i64) -> Error {
    let before = Position::new(v - 1, i64::MAX);
    err!(
        "{INBOUND} {name}: this package continues transaction {v} of the sender (it starts \
         after {}), but this stream holds none of its earlier parts: it was created inside \
         that transaction, and the parts before were staged by a stream that no longer \
         exists. Nothing was applied. Have the transaction sent whole: re-create this stream \
         with since = '{before}' and, on the sender, run INSERT INTO {}(rewind) VALUES \
         ('{before}') (docs/operations.md, \"Restoring a database\")",
        pkg.since,
        pkg.stream
    )
}

/// Sender, stream, position and schema checks. Returns the stream's
/// What [`check_package`] found of a package the stream can apply.
struct Checked {
    /// The stream's `last_applied`.
    last: Position,
    /// The filter of the changes we can apply now ([`pending::known_filter`]).
    known: Option<Known>,
    /// Whether the stream applied a package since it was created (it then
    /// follows a stream id).
    applied: bool,
}

/// The [`Checked`] state of a package, or None when it is already covered.
fn check_package(
    ext: &Ext,
    inner: &mut Inner,
    name: &str,
    cfg: &InboundConfig,
    pkg: &Package,
) -> Result<Option<Checked>> {
    let state = load_state(&inner.conn, name)?.ok_or_else(|| {
        err!("{INBOUND} {name}: stored state is missing; DROP and re-create the table")
    })?;
    let sender: &[u8] = &pkg.sender.0;
    if sender == ext.site_id().as_slice() {
        return Err(err!(
            "{INBOUND} {name}: the package was produced by this database itself (site {})",
            hex(sender)
        ));
    }
    let expected = cfg.from.map(|f| f.to_vec()).or_else(|| state.peer.clone());
    if let Some(exp) = &expected {
        if exp.as_slice() != sender {
            return Err(err!(
                "{INBOUND} {name}: wrong sender: this stream follows site {}, the package comes from site {}; \
                 if that peer was restored and given a new site id (crsql_new_site_id), follow it with a new \
                 inbound stream (docs/operations.md, \"Restoring a database\")",
                hex(exp),
                hex(sender)
            ));
        }
    }
    if let Some(id) = &state.stream_id {
        if id.as_slice() != &pkg.stream_id.0[..] {
            return Err(err!(
                "{INBOUND} {name}: wrong stream: this table follows stream id {}, the package comes from stream {:?} (id {})",
                hex(id),
                pkg.stream,
                hex(&pkg.stream_id.0)
            ));
        }
    }
    let last = state.position;
    if pkg.cursor <= last {
        return Ok(None);
    }
    if pkg.since > last {
        return Err(err!(
            "{INBOUND} {name}: gap: expected a package starting at {last}, got {} (package covers {} to {}); \
             if this database was restored from a backup, the peer moves its outbound stream back with \
             INSERT INTO <its stream>(rewind) VALUES ('{last}') (docs/operations.md, \"Restoring a database\")",
            pkg.since,
            pkg.since,
            pkg.cursor
        ));
    }
    let known = check_tables(ext, inner, name, cfg, pkg)?;
    Ok(Some(Checked {
        last,
        known,
        applied: state.stream_id.is_some(),
    }))
}

/// Merge the packages that `sql` (an `INSERT INTO crsql_internal_merge
/// (package) SELECT ...` with `?1` bound to `arg`) hands to
/// `crsql_internal_merge` (see [`apply_package`] for why one statement).
/// With a `known` filter (from [`pending::known_filter`]) only the changes
/// it admits are merged; the others, for columns or tables this database
/// does not have yet, wait in `crsql_pending_changes`.
fn merge_from(
    ext: &Ext,
    name: &str,
    context: &str,
    sql: &str,
    arg: &dyn rusqlite::ToSql,
    batch: MergeBatch,
) -> Result<()> {
    let conn = ext.db.connection()?;
    if batch.known.is_some() {
        conn.execute_batch(pending::PENDING_DDL)?;
    }
    ext.begin_merge_batch(batch);
    let r = conn.execute(sql, [arg]);
    ext.end_merge_batch();
    r.map_err(|e| Error::prefixed(&format!("{INBOUND} {name}: {context}"), e))?;
    Ok(())
}

/// Merge one package.
fn merge_package(
    ext: &Ext,
    name: &str,
    context: &str,
    package: Package<'static>,
    known: Option<Known>,
) -> Result<()> {
    let batch = MergeBatch {
        known,
        package: Some(package),
        ..MergeBatch::default()
    };
    let null: Option<&[u8]> = None;
    merge_from(ext, name, context, MERGE_HANDED_OVER, &null, batch)
}

/// The package handed over in the [`MergeBatch`].
const MERGE_HANDED_OVER: &str = "INSERT INTO crsql_internal_merge (package) SELECT ?1";

/// Every staged part of stream `?1`, in part order.
const MERGE_STAGED_PARTS: &str = "INSERT INTO crsql_internal_merge (package) \
     SELECT s.package FROM crsql_stream_staging AS s WHERE s.name = ?1 ORDER BY s.part";

/// The staged parts handed over in the [`MergeBatch`], by index (`?1`
/// parts, in part order).
const MERGE_HANDED_OVER_PARTS: &str = "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL \
     SELECT i + 1 FROM k WHERE i + 1 < ?1) INSERT INTO crsql_internal_merge (package) SELECT i FROM k";

/// Staged parts up to this many bytes in all are merged from memory.
const MERGE_FROM_MEMORY_MAX: i64 = 32 << 20;

/// Merge every staged part of `name` in part order, in one statement, then
/// clear them. Parts up to [`MERGE_FROM_MEMORY_MAX`] bytes in all are read
/// into memory, encoded, and their rows deleted first, so the merge reuses
/// the pages they held: the file does not keep the staged size as free
/// pages (DECISIONS D26); each is decoded when it is merged, so memory is
/// their bytes plus one decoded part. Larger ones are streamed from the
/// staging table (memory: one part at a time; no limit on the number of
/// parts).
fn merge_staged(ext: &Ext, name: &str) -> Result<()> {
    const CONTEXT: &str = "merging the staged parts of a split transaction: ";
    let staged: Vec<(i64, Vec<u8>)> = {
        let inner = ext.lock(INBOUND)?;
        let total: i64 = inner
            .conn
            .prepare_cached(
                "SELECT COALESCE(sum(length(package)), 0) FROM crsql_stream_staging WHERE name = ?1",
            )?
            .query_row([name], |r| r.get(0))?;
        if total > MERGE_FROM_MEMORY_MAX {
            Vec::new()
        } else {
            let mut stmt = inner.conn.prepare_cached(
                "SELECT part, package FROM crsql_stream_staging WHERE name = ?1 ORDER BY part",
            )?;
            let rows = stmt
                .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows
        }
    };
    let clear = |ext: &Ext| -> Result<()> {
        let inner = ext.lock(INBOUND)?;
        inner
            .conn
            .prepare_cached("DELETE FROM crsql_stream_staging WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    };
    let stream_staged = |ext: &Ext| -> Result<()> {
        let known = {
            let mut inner = ext.lock(INBOUND)?;
            let tables = staged_tables(&inner.conn, name, |b| {
                Package::header(b).ok().map(|h| h.tables)
            })?;
            staged_known(ext, &mut inner, name, &tables, |conn| {
                staged_tables(conn, name, |b| Package::decode(b).ok().map(|p| p.tables))
            })?
        };
        let batch = MergeBatch {
            known,
            ..MergeBatch::default()
        };
        merge_from(ext, name, CONTEXT, MERGE_STAGED_PARTS, &name, batch)?;
        clear(ext)
    };
    if staged.is_empty() {
        return stream_staged(ext);
    }
    // The parts, if they make one package: each starting at or after the
    // previous one's cursor (so their changes are in position order), which
    // a package that completes the transaction from an earlier position (a
    // replay overlapping the staged parts) breaks. Else, or for a part
    // whose header does not read, the statement over the staging table does
    // the merge (and reports the error). Only headers are read here (each
    // part was validated when it was staged, and is decoded and validated
    // again when it merges): a part whose changes do not decode fails the
    // merge, one statement, with the same error as the statement over the
    // staging table, and the parts are staged again.
    let mut tables: Vec<TableEntry> = Vec::new();
    let mut previous: Option<Position> = None;
    for (_, bytes) in &staged {
        let Ok(h) = Package::header(bytes) else {
            return stream_staged(ext);
        };
        if previous.is_some_and(|c| h.since < c) {
            return stream_staged(ext);
        }
        previous = Some(h.cursor);
        union_tables(&mut tables, h.tables);
    }
    let known = {
        let mut inner = ext.lock(INBOUND)?;
        staged_known(ext, &mut inner, name, &tables, |_| {
            let mut whole = Vec::new();
            for (_, bytes) in &staged {
                if let Ok(p) = Package::decode(bytes) {
                    union_tables(&mut whole, p.tables);
                }
            }
            Ok(whole)
        })?
    };
    clear(ext)?;
    let (numbers, bytes): (Vec<i64>, Vec<Vec<u8>>) = staged.into_iter().unzip();
    let parts: Arc<[Vec<u8>]> = bytes.into();
    let count = parts.len() as i64;
    let batch = MergeBatch {
        known,
        parts: Arc::clone(&parts),
        ..MergeBatch::default()
    };
    let merged = merge_from(ext, name, CONTEXT, MERGE_HANDED_OVER_PARTS, &count, batch);
    if merged.is_err() {
        // Nothing was merged (one statement): the parts stay staged. (If
        // SQLite rolled the whole transaction back, as it may on an I/O
        // error or a full disk, they are back already.)
        let inner = ext.lock(INBOUND)?;
        let mut put = inner.conn.prepare_cached(
            "INSERT OR IGNORE INTO crsql_stream_staging (name, part, package) VALUES (?1, ?2, ?3)",
        )?;
        for (part, bytes) in numbers.iter().zip(parts.iter()) {
            put.execute(params![name, part, bytes])?;
        }
    }
    merged
}

/// The tables of every staged part of `name` that `read` reads (its header,
/// or the whole part), one part in memory at a time.
fn staged_tables(
    conn: &Connection,
    name: &str,
    read: impl Fn(&[u8]) -> Option<Vec<TableEntry>>,
) -> Result<Vec<TableEntry>> {
    let mut tables: Vec<TableEntry> = Vec::new();
    let mut stmt =
        conn.prepare_cached("SELECT package FROM crsql_stream_staging WHERE name = ?1")?;
    let mut rows = stmt.query([name])?;
    while let Some(row) = rows.next()? {
        if let Some(more) = read(row.get_ref(0)?.as_blob().unwrap_or_default()) {
            union_tables(&mut tables, more);
        }
    }
    Ok(tables)
}

/// The known-columns filter ([`pending::known_filter`]) of the staged
/// parts' `tables`, read from their headers. If it refuses them, it is
/// asked again of the tables of the parts that decode whole (`whole`),
/// which is what it was asked before the check read headers only (D59): a
/// part whose header reads but whose changes do not decode (edited by
/// hand, or staged by a faulty build) then fails its merge with the decode
/// error, not with a schema error about its own table entries.
fn staged_known(
    ext: &Ext,
    inner: &mut Inner,
    name: &str,
    tables: &[TableEntry],
    whole: impl FnOnce(&Connection) -> Result<Vec<TableEntry>>,
) -> Result<Option<Known>> {
    let stream = format!("{INBOUND} {name}");
    match pending::known_filter(ext, inner, &stream, tables) {
        Ok(known) => Ok(known),
        Err(e) => {
            let decoded = whole(&inner.conn)?;
            if decoded.as_slice() == tables {
                return Err(e);
            }
            pending::known_filter(ext, inner, &stream, &decoded)
        }
    }
}

/// Add to `tables` those of `more` it does not hold yet.
fn union_tables(tables: &mut Vec<TableEntry>, more: Vec<TableEntry>) {
    for t in more {
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
}

/// Keep a part of a split transaction until its last part arrives; returns
/// its part number.
fn stage(ext: &Ext, name: &str, bytes: &[u8]) -> Result<i64> {
    let inner = ext.lock(INBOUND)?;
    let part = inner
        .conn
        .prepare_cached(
            "INSERT INTO crsql_stream_staging (name, part, package) VALUES \
             (?1, (SELECT COALESCE(max(part), -1) + 1 FROM crsql_stream_staging WHERE name = ?1), ?2) \
             RETURNING part",
        )?
        .query_row(params![name, bytes], |r| r.get(0))?;
    Ok(part)
}

/// Refuse a package naming a table that is not allowed, or whose primary
/// key differs from ours; return the filter of the changes we can apply now
/// ([`pending::known_filter`]).
fn check_tables(
    ext: &Ext,
    inner: &mut Inner,
    name: &str,
    cfg: &InboundConfig,
    pkg: &Package,
) -> Result<Option<Known>> {
    for t in &pkg.tables {
        if let Some(allowed) = &cfg.tables {
            if !allowed.iter().any(|a| a == &t.name) {
                return Err(err!(
                    "{INBOUND} {name}: the package touches table {}, which is not in this stream's tables ({})",
                    t.name,
                    allowed.join(",")
                ));
            }
        }
    }
    // Columns and tables we do not have yet wait (crsql_pending_changes);
    // a primary key that differs is refused here.
    pending::known_filter(ext, inner, &format!("{INBOUND} {name}"), &pkg.tables)
}

/// The db_version of the split transaction whose parts are staged, if any.
/// Every staged part moved `last_applied` to its cursor, and any other
/// applied package clears the staging table, so while parts are staged
/// `last_applied` lies in their db_version: no staged part is decoded.
fn staged_db_version(conn: &Connection, name: &str, last_applied: Position) -> Result<Option<i64>> {
    let any = conn
        .prepare_cached("SELECT 1 FROM crsql_stream_staging WHERE name = ?1 LIMIT 1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(any.then_some(last_applied.db_version))
}

pub struct InboundCursor {
    ext: Arc<Ext>,
    name: String,
    state: Option<StreamState>,
}

impl TableCursor for InboundCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _args: &[ValueRef<'_>],
    ) -> Result<()> {
        let inner = self.ext.lock(INBOUND)?;
        self.state = Some(load_state(&inner.conn, &self.name)?.ok_or_else(|| {
            Error::Msg(format!("{INBOUND} {}: stored state is missing", self.name))
        })?);
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.state = None;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.state.is_none()
    }

    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()> {
        let Some(s) = &self.state else {
            return Ok(ctx.set_result(&rusqlite::types::Null)?);
        };
        match col {
            COL_LAST_APPLIED => ctx.set_result(&s.position.to_string())?,
            COL_SENDER => ctx.set_result(&s.peer.as_deref().map(hex))?,
            _ => ctx.set_result(&rusqlite::types::Null)?,
        }
        Ok(())
    }

    fn rowid(&self) -> Result<i64> {
        Ok(0)
    }
}
