//! SQL helpers shared by the integration tests (and the benchmark): run a
//! statement and read its rows, read and merge `crsql_changes`, read clock
//! tables, and build packed primary keys from the spec (§9) rather than
//! from the extension, so the tests do not check the extension against
//! itself. Every helper panics with the failing SQL and SQLite's message.

use rusqlite::types::Value;
use rusqlite::{params, Connection, Row, Statement};

pub fn int(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn value(c: &Connection, sql: &str) -> Value {
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn text(c: &Connection, sql: &str) -> String {
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn exec(c: &Connection, sql: &str) {
    c.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Run one statement, stepping through all of its rows.
pub fn try_rows(c: &Connection, sql: &str) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut stmt = c.prepare(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(
            (0..n)
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    Ok(out)
}

pub fn rows(c: &Connection, sql: &str) -> Vec<Vec<Value>> {
    try_rows(c, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        other => other.to_string(),
    }
}

/// Run a statement that must fail; return its error message.
pub fn fails(c: &Connection, sql: &str) -> String {
    match try_rows(c, sql) {
        Ok(r) => panic!("expected `{sql}` to fail, it returned {r:?}"),
        Err(e) => message(&e),
    }
}

pub fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// DDL compared without any whitespace and without a trailing `;` (the spec
/// says the whitespace of the stored text differs from the shown DDL).
pub fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .trim_end_matches(';')
        .to_string()
}

/// The DDL of a schema object. When the suites run on the compact layout,
/// the cr-sqlite layout's own objects (`__crsql_` names) do not exist: their
/// DDL reads as empty, and [`assert_ddl`] skips them.
pub fn ddl(c: &Connection, name: &str) -> String {
    if crate::compact_layout() && name.contains("__crsql_") && !exists(c, name) {
        return String::new();
    }
    c.query_row(
        "SELECT sql FROM sqlite_master WHERE name = ?",
        [name],
        |r| r.get::<_, String>(0),
    )
    .unwrap_or_else(|e| panic!("no sqlite_master entry {name}: {e}"))
}

/// Assert the DDL of a schema object (skipped for the cr-sqlite layout's
/// own objects when the suites run on the compact layout, whose tables and
/// trigger bodies differ: docs/compact-layout.md).
pub fn assert_ddl(c: &Connection, name: &str, expected: &str) {
    if crate::compact_layout() && name.contains("__crsql_") {
        return;
    }
    assert_eq!(
        norm(&ddl(c, name)),
        norm(expected),
        "DDL of {name}: {}",
        ddl(c, name)
    );
}

pub fn exists(c: &Connection, name: &str) -> bool {
    int(
        c,
        &format!(
            "SELECT count(*) FROM sqlite_master WHERE name = '{}'",
            name.replace('\'', "''")
        ),
    ) > 0
}

pub fn site(c: &Connection) -> Vec<u8> {
    c.query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .unwrap()
}

pub fn dbv(c: &Connection) -> i64 {
    int(c, "SELECT crsql_db_version()")
}

pub fn impacted(c: &Connection) -> i64 {
    int(c, "SELECT crsql_rows_impacted()")
}

/// A clock row: (key, col_name, col_version, db_version, site_id, seq).
pub type Clock = (i64, String, i64, i64, i64, i64);

pub fn ck(key: i64, col: &str, col_version: i64, db_version: i64, site: i64, seq: i64) -> Clock {
    (key, col.to_string(), col_version, db_version, site, seq)
}

/// The clock rows of CRR `t` in the cr-sqlite layout (none when the suites
/// run on the compact layout: see `assert_internal_eq!`).
pub fn clock(c: &Connection, t: &str) -> Vec<Clock> {
    if crate::compact_layout() && !exists(c, &format!("{t}__crsql_clock")) {
        return Vec::new();
    }
    let sql = format!(
        "SELECT key, col_name, col_version, db_version, site_id, seq FROM \"{}__crsql_clock\" ORDER BY key, col_name",
        t.replace('"', "\"\"")
    );
    let mut stmt = c.prepare(&sql).unwrap();
    let v = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<Clock>>>()
        .unwrap();
    v
}

/// Clock rows without the seq (for merge results, where §15 Q17 gives merged
/// cells a fresh local seq instead of the sender's).
pub fn clock_noseq(c: &Connection, t: &str) -> Vec<(i64, String, i64, i64, i64)> {
    clock(c, t)
        .into_iter()
        .map(|(k, n, cv, dv, s, _)| (k, n, cv, dv, s))
        .collect()
}

pub fn nsq(
    key: i64,
    col: &str,
    col_version: i64,
    db_version: i64,
    site: i64,
) -> (i64, String, i64, i64, i64) {
    (key, col.to_string(), col_version, db_version, site)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: String,
    pub pk: Vec<u8>,
    pub cid: String,
    pub val: Value,
    pub col_version: i64,
    pub db_version: i64,
    pub site_id: Vec<u8>,
    pub cl: i64,
    pub seq: i64,
}

impl Change {
    /// A row of `SELECT_CHANGES` (the nine columns of crsql_changes, in order).
    pub fn from_row(r: &Row<'_>) -> rusqlite::Result<Change> {
        Ok(Change {
            table: r.get(0)?,
            pk: r.get(1)?,
            cid: r.get(2)?,
            val: r.get(3)?,
            col_version: r.get(4)?,
            db_version: r.get(5)?,
            site_id: r.get(6)?,
            cl: r.get(7)?,
            seq: r.get(8)?,
        })
    }

    /// Merge this change with a prepared `INSERT_CHANGE`.
    pub fn insert(&self, stmt: &mut Statement<'_>) -> rusqlite::Result<usize> {
        stmt.execute(params![
            self.table,
            self.pk,
            self.cid,
            self.val,
            self.col_version,
            self.db_version,
            self.site_id,
            self.cl,
            self.seq
        ])
    }
}

#[allow(clippy::too_many_arguments)]
pub fn chg(
    table: &str,
    pk: Vec<u8>,
    cid: &str,
    val: Value,
    col_version: i64,
    db_version: i64,
    site_id: &[u8],
    cl: i64,
    seq: i64,
) -> Change {
    Change {
        table: table.into(),
        pk,
        cid: cid.into(),
        val,
        col_version,
        db_version,
        site_id: site_id.to_vec(),
        cl,
        seq,
    }
}

pub const SELECT_CHANGES: &str =
    "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes";

/// Merge one change (the nine columns in `SELECT_CHANGES` order).
pub const INSERT_CHANGE: &str = "INSERT INTO crsql_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

pub fn changes_sql(c: &Connection, sql: &str) -> Vec<Change> {
    let mut stmt = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let v = stmt
        .query_map([], Change::from_row)
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    v
}

/// All changes in the default order (no ORDER BY).
pub fn changes(c: &Connection) -> Vec<Change> {
    changes_sql(c, SELECT_CHANGES)
}

pub fn changes_where(c: &Connection, clause: &str) -> Vec<Change> {
    changes_sql(c, &format!("{SELECT_CHANGES} {clause}"))
}

pub fn try_apply(c: &Connection, ch: &Change) -> rusqlite::Result<usize> {
    ch.insert(&mut c.prepare(INSERT_CHANGE)?)
}

pub fn apply(c: &Connection, ch: &Change) {
    try_apply(c, ch).unwrap_or_else(|e| panic!("merge {ch:?}: {e}"));
}

/// Merge inside an explicit transaction and return crsql_rows_impacted()
/// read before COMMIT (§7.7).
pub fn apply_counted(c: &Connection, chs: &[Change]) -> i64 {
    exec(c, "BEGIN");
    for ch in chs {
        apply(c, ch);
    }
    let n = impacted(c);
    exec(c, "COMMIT");
    n
}

/// The packed format of §9, written from the spec.
pub fn pack(vals: &[Value]) -> Vec<u8> {
    fn len_bytes(n: u64) -> usize {
        (0..=8).find(|&b| b == 8 || n < (1u64 << (8 * b))).unwrap()
    }
    let mut out = vec![vals.len() as u8];
    for v in vals {
        match v {
            Value::Null => out.push(5),
            Value::Integer(i) => {
                let n = if *i < 0 { 8 } else { len_bytes(*i as u64) };
                out.push(((n as u8) << 3) | 1);
                out.extend_from_slice(&i.to_be_bytes()[8 - n..]);
            }
            Value::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Text(s) => {
                let n = len_bytes(s.len() as u64);
                out.push(((n as u8) << 3) | 3);
                out.extend_from_slice(&(s.len() as u64).to_be_bytes()[8 - n..]);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Blob(b) => {
                let n = len_bytes(b.len() as u64);
                out.push(((n as u8) << 3) | 4);
                out.extend_from_slice(&(b.len() as u64).to_be_bytes()[8 - n..]);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

pub fn pk1(i: i64) -> Vec<u8> {
    pack(&[Value::Integer(i)])
}

pub fn t(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn i(v: i64) -> Value {
    Value::Integer(v)
}

pub const NULL: Value = Value::Null;

/// A remote site that compares greater than any local site id: a local id has
/// byte 6 = 0x4X (§3.1), so 0xFF at byte 6 decides if the first six tie.
pub const R_HIGH: [u8; 16] = [0xff; 16];
/// A remote site smaller than any local site id (byte 6 of a local id is ≥ 0x40).
pub const R_LOW: [u8; 16] = [0x00; 16];
pub const R: [u8; 16] = [0x5a; 16];

/// `foo(a PRIMARY KEY NOT NULL, b, c)` made a CRR (the table of §2.3).
pub fn foo(c: &Connection) {
    exec(
        c,
        "CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c); SELECT crsql_as_crr('foo');",
    );
}

pub fn base(c: &Connection, sql: &str) -> Vec<Vec<Value>> {
    rows(c, sql)
}

pub fn sync(from: &Connection, to: &Connection, since: i64) -> usize {
    let to_site = site(to);
    let mut stmt = from
        .prepare(&format!(
            "{SELECT_CHANGES} WHERE db_version > ? AND site_id IS NOT ?"
        ))
        .unwrap();
    let rows: Vec<Change> = stmt
        .query_map(params![since, to_site], Change::from_row)
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    exec(to, "BEGIN");
    for ch in &rows {
        apply(to, ch);
    }
    exec(to, "COMMIT");
    rows.len()
}

/// Every `(db_version, seq)` position in crsql_changes is unique.
pub fn assert_positions_unique(c: &Connection) {
    let mut pos: Vec<(i64, i64)> = changes(c).iter().map(|x| (x.db_version, x.seq)).collect();
    let n = pos.len();
    pos.sort();
    pos.dedup();
    assert_eq!(
        pos.len(),
        n,
        "duplicate (db_version, seq) positions in {:?}",
        changes(c)
    );
}

pub fn positions(c: &Connection) -> Vec<(i64, i64)> {
    changes(c).iter().map(|x| (x.db_version, x.seq)).collect()
}

/// Carry packages from outbound stream `out` on `from` to inbound stream
/// `inb` on `to` until none is left, acknowledging each with the receiver's
/// `last_applied` (as the bindings do). Returns the number of packages, or
/// the first error of a read, an apply or an acknowledgement.
pub fn pump(from: &Connection, out: &str, to: &Connection, inb: &str) -> Result<usize, String> {
    pump_at_most(from, out, to, inb, usize::MAX)
}

/// [`pump`], stopping after `max` packages.
pub fn pump_at_most(
    from: &Connection,
    out: &str,
    to: &Connection,
    inb: &str,
    max: usize,
) -> Result<usize, String> {
    let mut n = 0;
    while n < max {
        let pkg: Option<Vec<u8>> =
            match from.query_row(&format!("SELECT package FROM {out} LIMIT 1"), [], |r| {
                r.get(0)
            }) {
                Ok(p) => Some(p),
                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(message(&e)),
            };
        let Some(pkg) = pkg else { return Ok(n) };
        to.execute(&format!("INSERT INTO {inb}(package) VALUES (?1)"), [&pkg])
            .map_err(|e| message(&e))?;
        let applied: String = to
            .query_row(&format!("SELECT last_applied FROM {inb}"), [], |r| r.get(0))
            .map_err(|e| message(&e))?;
        from.execute(
            &format!("INSERT INTO {out}(last_sent) VALUES (?1)"),
            [&applied],
        )
        .map_err(|e| message(&e))?;
        n += 1;
        if n > 100_000 {
            return Err(format!("{out} -> {inb}: more than 100,000 packages"));
        }
    }
    Ok(n)
}

/// Everything a layout conversion must keep, of a database with CRRs
/// `tables`: its changes (all nine columns, in the order `crsql_changes`
/// gives them), its compaction records, its db_version and its tables.
pub fn crr_state(c: &Connection, tables: &[&str]) -> Vec<Vec<Value>> {
    let mut out = rows(c, SELECT_CHANGES);
    if exists(c, "crsql_tombstones") {
        out.push(vec![Value::Text("records".into())]);
        out.extend(rows(
            c,
            "SELECT tbl, pk, cl, db_version, seq, site_id FROM crsql_tombstones ORDER BY 1, 2",
        ));
    }
    out.push(rows(c, "SELECT crsql_db_version()").remove(0));
    for t in tables {
        out.push(vec![Value::Text(t.to_string())]);
        let single = int(c, &format!("SELECT count(*) FROM pragma_table_info('{t}')")) == 1;
        let order = if single { "1" } else { "1, 2" };
        out.extend(rows(c, &format!("SELECT * FROM \"{t}\" ORDER BY {order}")));
    }
    out
}
