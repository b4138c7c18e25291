//! Helpers for `tests/fixtures.rs`: reading the cr-sqlite 0.16 golden
//! fixtures (values as `{"type", "value"}`), setting fixed site ids, reading
//! tables and `crsql_changes`, and the comparisons used by the tests.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crsql_stream_harness::{close, open};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ToSql};
use serde_json::Value as Json;

/// The query every `changes` list of the fixtures was read with.
pub const CHANGES_QUERY: &str =
    "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
     FROM crsql_changes ORDER BY db_version, seq, \"table\", pk, cid";

/// Column positions of a `crsql_changes` row.
pub const C_TABLE: usize = 0;
pub const C_PK: usize = 1;
pub const C_CID: usize = 2;
pub const C_COL_VERSION: usize = 4;
pub const C_DB_VERSION: usize = 5;
pub const C_SITE_ID: usize = 6;
pub const C_CL: usize = 7;
pub const C_SEQ: usize = 8;

/// One SQLite value. Reals compare by their bits, so `-0.0 != 0.0`.
#[derive(Clone)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl PartialEq for Val {
    fn eq(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Int(a), Val::Int(b)) => a == b,
            (Val::Real(a), Val::Real(b)) => a.to_bits() == b.to_bits(),
            (Val::Text(a), Val::Text(b)) => a == b,
            (Val::Blob(a), Val::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Null => write!(f, "NULL"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Real(r) => write!(f, "{r:?}r(bits {:016x})", r.to_bits()),
            Val::Text(t) => write!(f, "{t:?}"),
            Val::Blob(b) => write!(f, "X'{}'", hex(b)),
        }
    }
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Real(r) => ValueRef::Real(*r),
            Val::Text(t) => ValueRef::Text(t.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Val {
    /// Parse `{"type": T, "value": V}` as the fixtures README describes.
    pub fn from_json(j: &Json) -> Val {
        let ty = j["type"]
            .as_str()
            .unwrap_or_else(|| panic!("value without a type: {j}"));
        let v = &j["value"];
        match ty {
            "null" => {
                assert!(v.is_null(), "null value with a payload: {j}");
                Val::Null
            }
            "integer" => Val::Int(
                v.as_i64()
                    .unwrap_or_else(|| panic!("integer out of i64 range: {j}")),
            ),
            "real" => {
                let s = v
                    .as_str()
                    .unwrap_or_else(|| panic!("real not given as a repr string: {j}"));
                Val::Real(
                    s.parse::<f64>()
                        .unwrap_or_else(|e| panic!("bad real {s:?}: {e}")),
                )
            }
            "text" => Val::Text(
                v.as_str()
                    .unwrap_or_else(|| panic!("bad text: {j}"))
                    .to_string(),
            ),
            "blob" => Val::Blob(unhex(v.as_str().unwrap_or_else(|| panic!("bad blob: {j}")))),
            other => panic!("unknown value type {other:?} in {j}"),
        }
    }

    pub fn from_ref(v: ValueRef<'_>) -> Val {
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(r) => Val::Real(r),
            ValueRef::Text(t) => Val::Text(String::from_utf8(t.to_vec()).expect("text is UTF-8")),
            ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Val::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub fn blob(&self) -> &[u8] {
        match self {
            Val::Blob(b) => b,
            other => panic!("expected a blob, got {other:?}"),
        }
    }
}

pub type Row = Vec<Val>;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
        })
        .collect()
}

/// `harness/fixtures/crsqlite-0.16`, kept in the repository; `$CRSQL_FIXTURES`
/// points the tests at another copy (e.g. a newly recorded set) instead.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("CRSQL_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/crsqlite-0.16"),
    }
}

pub fn load_json(rel: &str) -> Json {
    let path = fixtures_dir().join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

pub fn arr(j: &Json) -> &Vec<Json> {
    j.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {j}"))
}

pub fn strs(j: &Json) -> Vec<String> {
    arr(j)
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

pub fn vals(j: &Json) -> Row {
    arr(j).iter().map(Val::from_json).collect()
}

pub fn rows(j: &Json) -> Vec<Row> {
    arr(j).iter().map(vals).collect()
}

/// Run a query and return its column names and rows.
pub fn query_cols(conn: &Connection, sql: &str, params: &[Val]) -> (Vec<String>, Vec<Row>) {
    let mut stmt = conn
        .prepare(sql)
        .unwrap_or_else(|e| panic!("prepare {sql}: {e}"));
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let n = names.len();
    let out = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            (0..n)
                .map(|i| r.get_ref(i).map(Val::from_ref))
                .collect::<rusqlite::Result<Row>>()
        })
        .unwrap_or_else(|e| panic!("query {sql}: {e}"))
        .collect::<rusqlite::Result<Vec<Row>>>()
        .unwrap_or_else(|e| panic!("step {sql}: {e}"));
    (names, out)
}

pub fn query(conn: &Connection, sql: &str, params: &[Val]) -> Vec<Row> {
    query_cols(conn, sql, params).1
}

/// Run any statement (a SELECT included) to completion.
pub fn exec(conn: &Connection, sql: &str) {
    let mut stmt = conn
        .prepare(sql)
        .unwrap_or_else(|e| panic!("prepare {sql}: {e}"));
    let mut rows = stmt.query([]).unwrap_or_else(|e| panic!("run {sql}: {e}"));
    while rows
        .next()
        .unwrap_or_else(|e| panic!("run {sql}: {e}"))
        .is_some()
    {}
}

/// `BEGIN`, the statements, `COMMIT`.
pub fn run_tx(conn: &Connection, sqls: &[String]) {
    exec(conn, "BEGIN");
    for s in sqls {
        exec(conn, s);
    }
    exec(conn, "COMMIT");
}

pub fn db_version(conn: &Connection) -> i64 {
    conn.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
        .expect("crsql_db_version")
}

pub fn site_id(conn: &Connection) -> Vec<u8> {
    conn.query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .expect("crsql_site_id")
}

pub fn changes(conn: &Connection) -> Vec<Row> {
    query(conn, CHANGES_QUERY, &[])
}

/// Create a database file with a fixed site id, exactly as the fixtures
/// README describes, and return it reopened.
pub fn open_with_site(path: &Path, site: &[u8]) -> Connection {
    let conn = open(path);
    exec(&conn, "PRAGMA secure_delete = ON");
    conn.execute(
        "UPDATE crsql_site_id SET site_id = ?1 WHERE ordinal = 0",
        [site],
    )
    .expect("set site id");
    close(conn);
    let conn = open(path);
    assert_eq!(
        hex(&site_id(&conn)),
        hex(site),
        "site id after reopen of {}",
        path.display()
    );
    conn
}

/// Compare two row lists, naming the first difference.
pub fn assert_rows(ours: &[Row], expected: &[Row], ctx: &str) {
    if ours == expected {
        return;
    }
    let first = ours
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(expected.len()));
    let dump = |rs: &[Row]| {
        rs.iter()
            .map(|r| format!("  {r:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{ctx}: rows differ (ours {} rows, expected {}); first difference at index {first}:\n ours:     {:?}\n expected: {:?}\n--- ours:\n{}\n--- expected:\n{}",
        ours.len(),
        expected.len(),
        ours.get(first),
        expected.get(first),
        dump(ours),
        dump(expected)
    );
}

/// Check one table of a fixture (`columns`, `query`, `rows`) against `conn`.
pub fn assert_table(conn: &Connection, name: &str, t: &Json, ctx: &str) {
    let sql = t["query"].as_str().expect("table query");
    let (cols, ours) = query_cols(conn, sql, &[]);
    assert_eq!(cols, strs(&t["columns"]), "{ctx}: columns of {name}");
    assert_rows(&ours, &rows(&t["rows"]), &format!("{ctx}: table {name}"));
}

/// Check every table of a fixture `tables` object.
pub fn assert_tables(conn: &Connection, tables: &Json, ctx: &str) {
    let map = tables.as_object().expect("tables object");
    let ours: BTreeSet<String> = query(
        conn,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name NOT LIKE 'crsql\\_%' ESCAPE '\\' AND name NOT LIKE '%\\_\\_crsql\\_%' ESCAPE '\\'",
        &[],
    )
    .into_iter()
    .map(|r| r[0].text().to_string())
    .collect();
    let theirs: BTreeSet<String> = map.keys().cloned().collect();
    assert_eq!(ours, theirs, "{ctx}: the set of user tables");
    for (name, t) in map {
        assert_table(conn, name, t, ctx);
    }
}

/// Identity of a change row: (table, pk, cid).
pub type Key = (String, Vec<u8>, String);

pub fn key(r: &Row) -> Key {
    (
        r[C_TABLE].text().to_string(),
        r[C_PK].blob().to_vec(),
        r[C_CID].text().to_string(),
    )
}

/// Sort change rows as `ORDER BY db_version, seq, "table", pk, cid` does
/// (BINARY collation is a byte comparison, as for Rust strings).
pub fn sort_changes(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (a[C_DB_VERSION].int(), a[C_SEQ].int(), key(a)).cmp(&(
            b[C_DB_VERSION].int(),
            b[C_SEQ].int(),
            key(b),
        ))
    });
}

/// Our design: `(db_version, seq)` positions are unique within a database
/// (cr-sqlite can repeat them after merges, docs/compat.md Q17).
pub fn assert_positions_unique(rows: &[Row], ctx: &str) {
    let mut seen = HashMap::new();
    for r in rows {
        let pos = (r[C_DB_VERSION].int(), r[C_SEQ].int());
        if let Some(prev) = seen.insert(pos, key(r)) {
            panic!(
                "{ctx}: position {pos:?} is used twice: {prev:?} and {:?}",
                key(r)
            );
        }
    }
}

/// Expected changes for our extension: the fixture's rows, except that rows
/// whose `db_version` is in `merged_versions` (versions this replica handed
/// out while merging) take our `seq` (docs/compat.md Q17: we give merged changes a
/// fresh local seq, cr-sqlite keeps the sender's). Every other field stays
/// exactly the fixture's, and the result is in the order our `seq`s give.
pub fn with_merged_seqs(
    fixture: &[Row],
    ours: &[Row],
    merged_versions: &BTreeSet<i64>,
    ctx: &str,
) -> Vec<Row> {
    let ours_by_key: HashMap<Key, &Row> = ours.iter().map(|r| (key(r), r)).collect();
    let mut changed = false;
    let mut out: Vec<Row> = fixture
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if merged_versions.contains(&r[C_DB_VERSION].int()) {
                let o = ours_by_key.get(&key(&r)).unwrap_or_else(|| {
                    panic!("{ctx}: merged change {:?} is missing from ours", key(&r))
                });
                if o[C_SEQ] != r[C_SEQ] {
                    r[C_SEQ] = o[C_SEQ].clone();
                    changed = true;
                }
            }
            r
        })
        .collect();
    if changed {
        sort_changes(&mut out);
    }
    out
}

/// A primary-key change as cr-sqlite 0.16 records it (docs/compat.md Q4): the old
/// key gets a tombstone at the transaction's version, and the old key's cells
/// reappear under the new key with their clocks unchanged (old db_version
/// and seq). We re-stamp the moved cells with the transaction's version and
/// fresh seqs taken right after the tombstone's, so every later write of that
/// transaction comes `moved.len()` seqs later than in cr-sqlite.
#[derive(Debug, Clone)]
pub struct PkMove {
    pub version: i64,
    pub tombstone_seq: i64,
    /// The moved cells, under the new key.
    pub moved: Vec<Key>,
}

/// Find a primary-key move in one local transaction at `version`, from the
/// fixture's changes before and after it: cells that appear under a key they
/// did not have before while keeping an older db_version.
pub fn detect_pk_move(before: &[Row], after: &[Row], version: i64) -> Option<PkMove> {
    let before_keys: HashMap<Key, &Row> = before.iter().map(|r| (key(r), r)).collect();
    let after_keys: BTreeSet<Key> = after.iter().map(key).collect();
    let moved: Vec<&Row> = after
        .iter()
        .filter(|r| {
            r[C_CID].text() != "-1"
                && !before_keys.contains_key(&key(r))
                && r[C_DB_VERSION].int() < version
        })
        .collect();
    if moved.is_empty() {
        return None;
    }
    let clock = |r: &Row| {
        (
            r[C_TABLE].clone(),
            r[C_CID].clone(),
            r[C_COL_VERSION].clone(),
            r[C_DB_VERSION].clone(),
            r[C_SEQ].clone(),
            r[C_SITE_ID].clone(),
        )
    };
    // The old key: the cells that disappeared with exactly these clocks.
    let mut old_pks = BTreeSet::new();
    for m in &moved {
        let src = before
            .iter()
            .find(|b| clock(b) == clock(m) && !after_keys.contains(&key(b)))
            .unwrap_or_else(|| {
                panic!(
                    "moved cell {:?} has no source cell before the transaction",
                    key(m)
                )
            });
        old_pks.insert((src[C_TABLE].text().to_string(), src[C_PK].blob().to_vec()));
    }
    assert_eq!(
        old_pks.len(),
        1,
        "one primary-key change per transaction is supported: {old_pks:?}"
    );
    let (table, old_pk) = old_pks.into_iter().next().unwrap();
    let tomb = after
        .iter()
        .find(|r| {
            r[C_TABLE].text() == table
                && r[C_PK].blob() == old_pk.as_slice()
                && r[C_CID].text() == "-1"
        })
        .expect("the old key has a tombstone");
    assert_eq!(
        tomb[C_DB_VERSION].int(),
        version,
        "the tombstone is at the transaction's version"
    );
    assert_eq!(tomb[C_CL].int() % 2, 0, "the old key is deleted");
    Some(PkMove {
        version,
        tombstone_seq: tomb[C_SEQ].int(),
        moved: moved.iter().map(|r| key(r)).collect(),
    })
}

/// Clock overrides: (key, fixture col_version, db_version, seq) → our
/// (db_version, seq), for rows whose position we change on purpose.
pub type Overrides = HashMap<(Key, i64, i64, i64), (i64, i64)>;

pub fn override_key(r: &Row) -> (Key, i64, i64, i64) {
    (
        key(r),
        r[C_COL_VERSION].int(),
        r[C_DB_VERSION].int(),
        r[C_SEQ].int(),
    )
}

/// Apply recorded overrides to fixture rows; re-sorts when anything moved.
pub fn apply_overrides(rows: &[Row], ov: &Overrides) -> Vec<Row> {
    let mut changed = false;
    let mut out: Vec<Row> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(&(dv, seq)) = ov.get(&override_key(&r)) {
                r[C_DB_VERSION] = Val::Int(dv);
                r[C_SEQ] = Val::Int(seq);
                changed = true;
            }
            r
        })
        .collect();
    if changed {
        sort_changes(&mut out);
    }
    out
}

/// Turn cr-sqlite's changes after a primary-key move into ours (see
/// [`PkMove`]), check the seqs we gave the moved cells, and record the
/// overrides so later snapshots can be adjusted too.
pub fn apply_pk_move(
    fixture_after: &[Row],
    ours: &[Row],
    mv: &PkMove,
    ov: &mut Overrides,
    ctx: &str,
) -> Vec<Row> {
    let ours_by_key: HashMap<Key, &Row> = ours.iter().map(|r| (key(r), r)).collect();
    let m = mv.moved.len() as i64;
    let mut moved_seqs = BTreeSet::new();
    for r in fixture_after {
        let k = key(r);
        let (dv, seq) = if mv.moved.contains(&k) {
            // cr-sqlite: the cell keeps its old db_version and seq (Q4).
            let o = ours_by_key
                .get(&k)
                .unwrap_or_else(|| panic!("{ctx}: moved cell {k:?} is missing from ours"));
            let s = o[C_SEQ].int();
            assert!(moved_seqs.insert(s), "{ctx}: moved cells share seq {s}");
            (mv.version, s)
        } else if r[C_DB_VERSION].int() == mv.version && r[C_SEQ].int() > mv.tombstone_seq {
            // cr-sqlite: the write right after the tombstone (the new key's
            // sentinel) takes the next seq; ours come after the moved cells.
            (mv.version, r[C_SEQ].int() + m)
        } else {
            continue;
        };
        ov.insert(override_key(r), (dv, seq));
    }
    let expected_moved: BTreeSet<i64> = (mv.tombstone_seq + 1..=mv.tombstone_seq + m).collect();
    assert_eq!(
        moved_seqs, expected_moved,
        "{ctx}: the moved cells take the fresh seqs right after the old key's tombstone"
    );
    apply_overrides(fixture_after, ov)
}
