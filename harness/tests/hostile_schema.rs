//! Differential "hostile schema" property test (issue 14).
//!
//! Each case creates three replicas (database files in a temporary
//! directory) holding the same 1–3 CRRs with awkward schemas:
//!
//! - table and column names with quotes (`'` and `"`), spaces, dots, commas,
//!   unicode, SQL keywords (`select`, `key`, `order`), the names of the
//!   clock layout and of `crsql_changes` (`col_name`, `db_version`, `seq`,
//!   `site_id`, `cl`, `__crsql_key` as a non-pk column, `rowid`), `-1` as a
//!   primary-key column and a table named like a clock table
//!   (`z__crsql_clock`);
//! - composite primary keys of TEXT, INTEGER, BLOB and untyped columns,
//!   value columns of every affinity (and `ANY`, `VARCHAR(3)`), DEFAULTs
//!   (i64 bounds, `-0.0`, text, blob), NOT NULL columns with a default,
//!   `WITHOUT ROWID`, `STRICT` and a VIRTUAL generated column.
//!
//! Every replica has an outbound stream to each other replica (with or
//! without `exclude_sites`, small `max_changes`, sometimes `max_bytes` or the
//! JSON encoding) and an inbound stream from each. A random history
//! interleaves:
//!
//! - write transactions (autocommit, COMMIT, ROLLBACK, or a ROLLBACK TO a
//!   savepoint) of INSERT with every conflict clause (plain, OR ABORT / FAIL /
//!   IGNORE / REPLACE / ROLLBACK, `REPLACE INTO`), multi-row VALUES with
//!   columns left to their defaults, `ON CONFLICT DO UPDATE` (also changing
//!   the primary key) and `ON CONFLICT DO NOTHING`, UPDATE with every
//!   conflict clause (including `UPDATE OR REPLACE` moving a row onto an
//!   existing key, on one row or all of them), and DELETE, with i64 bounds,
//!   0, -1, NULL, reals (-0.0, ±inf, NaN, subnormals), numeric-looking text
//!   and blobs in every value column;
//! - `PRAGMA recursive_triggers` switched on and off, and restarts;
//! - transport steps: fetching packages (from `last_sent` or after the last
//!   fetched cursor), delivering them in or out of order, dropped,
//!   duplicated or inside a rolled-back transaction, acknowledgements, pumps;
//! - alter windows (`crsql_begin_alter`; ADD COLUMN with defaults, DROP
//!   COLUMN, a column dropped and added again; writes, deletes and inserts
//!   inside the window, before and after the DDL; sometimes first a
//!   `crsql_commit_alter` refused because of a column named `-1` or a unique
//!   index, then fixed; `crsql_commit_alter`) and drop/re-create
//!   (`DROP TABLE`, `CREATE TABLE` with the same primary key and another
//!   column set, rows written before and after `crsql_as_crr`; sometimes
//!   first with another primary key, which `crsql_as_crr` must refuse),
//!   each applied on every replica after a barrier (a full sync), either on
//!   all replicas at once or staggered: while schemas differ, packages that
//!   touch the table must be refused with "schema mismatch" exactly when
//!   the schema hashes differ, and are sent again later;
//! - `crsql_as_crr` on tables it must refuse (a non-pk column `-1`, a pk
//!   column `__crsql_key`, a unique column, nullable and partly nullable
//!   keys, a foreign key, NOT NULL without DEFAULT, AUTOINCREMENT, a
//!   2049-byte column name, no primary key, a CRR's name spelled in another
//!   case), also inside a transaction after a write, and `DROP COLUMN` of a
//!   CRR outside an alter window.
//!
//! Every statement that fails (a refusal of SQLite's or of the extension)
//! must change nothing: tables, `crsql_changes`, `crsql_db_version()` and
//! the schema are compared before and after (for `OR ROLLBACK`, with the
//! state at BEGIN; `OR FAIL` may keep earlier rows of its statement; inside
//! alter windows the clock tables are compared instead of `crsql_changes`).
//! The only failures accepted are SQLite's constraint and type errors, the
//! refusals listed above, gaps and schema mismatches. `crsql_db_version()`
//! never goes backwards. At the end the staggered schema changes are
//! finished, every link is synced until quiet, and all replicas must have
//! the same schema, identical tables (values compared exactly, storage class
//! included; -0.0 equals 0.0 unless merge-equal-values is on, which half
//! of the cases set) and the same CRDT state in `crsql_changes` (see
//! `crdt_state` for what is compared and why).
//!
//! Bugs this test found are described below (`BUG_…`). All but one are
//! fixed (regression tests in `divergences.rs::found_by_hostile_schema`),
//! and the generator exercises them again: tables named like clock tables,
//! columns added after a generated column, re-creation without a column,
//! `UPDATE OR REPLACE` after schema changes with recursive triggers, and
//! acknowledgements after a column is dropped. Still open:
//! BUG_STAGED_PARTS_AFTER_SCHEMA_CHANGE (the generator stays clear of it);
//! the comparisons still tolerate the two `crsql_changes` errors that are
//! fixed (BUG_CHANGES_…), which no longer occur.
//!
//! Runs `PROPTEST_CASES` cases (default 150, about 20 s on two cores); the
//! ignored `soak_…` test runs 2000 by default with longer histories (`make
//! soak` runs 3000). The RNG seed is printed (with `--nocapture`, and in
//! every failure); `HOSTILE_SEED=<u64>` replays it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crsql_stream_core::package::{schema_hash, Package};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use crsql_stream_harness::tables::{quote, Exact, Pos};
use crsql_stream_harness::{close, open};

const REPLICAS: usize = 3;

// Bugs this test found (reported with issue 14), kept out of the checks
// until they are fixed:
//
// BUG_CHANGES_AFTER_RECREATE_WITH_OTHER_PK: after `DROP TABLE t` of a CRR
// and `CREATE TABLE t` with another primary key (before `crsql_as_crr`
// refuses it), every read of `crsql_changes` and of every outbound stream
// fails with `no such column: p.<new pk>`, for all CRRs. The refusal of
// `crsql_as_crr` there is checked on the clock tables instead.
//
// BUG_CHANGES_STALE_IN_ALTER_WINDOW: inside a `crsql_begin_alter` window,
// once `crsql_changes` has been read, `ALTER TABLE … DROP COLUMN c` makes
// every later read of `crsql_changes` in the window fail with `no such
// column: b.c` (the CRR metadata is checked once per transaction). Refused
// statements in a window are checked on the clock tables instead.
//
// (Fixed: BUG_STAGED_PARTS_AFTER_SCHEMA_CHANGE, staged parts of a split
// transaction carrying a column both databases dropped meanwhile left the
// stream stuck; those changes now wait in crsql_pending_changes, and
// staggered schema changes are generated with split transactions too.)
//
// BUG_TABLE_NAMED_LIKE_A_CLOCK_TABLE: any table (a CRR or not) whose name
// ends in `__crsql_clock` and that has a column `db_version` is taken for a
// clock table: `crsql_db_version()` becomes the largest value of that
// column, every outbound stream read fails with `no such column: seq`, a
// TEXT value there makes every CRR write fail (`Invalid column type Text
// … max(v)`) and a value of 2^62 makes them refused (`beyond the largest
// version`). The table `z__crsql_clock` is generated without such a column.
//
// BUG_ACK_AFTER_COMPACTION: when `crsql_commit_alter` drops the column whose
// clocks held the newest positions, acknowledging a cursor the stream
// produced before (even one already acknowledged, which the contract calls
// a harmless repeat) is refused: `cannot acknowledge [1,1]: the newest
// change of this database is at [1,0]`. Such refusals are accepted (and
// must change nothing); the full syncs acknowledge the last cursor read.
//
// BUG_RECREATE_WITHOUT_A_COLUMN: `DROP TABLE t; CREATE TABLE t` with the same
// primary key but without a column `v`, then `crsql_as_crr('t')`: the clocks
// of `v` are removed before the old rows are tombstoned, so (a) a row whose
// only clocks were cells of `v` (any row inserted by a plain INSERT: it has
// no sentinel) gets no tombstone and stays on every peer, and (b)
// `crsql_db_version()` goes backwards (2 -> 0 when the newest clocks were
// cells of `v`), so the next local write takes a version peers have already
// synced past and never reaches them. Re-created tables keep every column
// here (they may still gain columns).
const KEEP_ALL_COLUMNS_ON_RECREATE: bool = false;
//
// BUG_REPLACE_AFTER_SCHEMA_CHANGE: with `PRAGMA recursive_triggers = ON`,
// once a CRR row has been deleted (a DELETE, or the REPLACE of an earlier
// `UPDATE OR REPLACE`), then any schema change on the connection (even
// `CREATE TABLE zz (x)`), the next `UPDATE OR REPLACE t SET id = 'q' WHERE
// id = 'u'` onto an existing key fails with `abort due to ROLLBACK` and
// rolls back the caller's whole transaction: its earlier writes are lost
// and the following COMMIT fails (`no transaction is active`). Setting the
// pragma again after the schema change avoids it; the test does that
// (`after_schema_change`).
//
// BUG_GENERATED_COLUMN_AFFINITY: in a table with a VIRTUAL generated column
// followed by other columns (ALTER TABLE ADD COLUMN always adds them after
// it), a merged value for such a column that lands on an existing row is
// stored with the affinity of the column declared before it: `v` untyped
// after `r REAL` receives 7 and stores 7.0 (the replica that wrote it keeps
// 7), and in a STRICT table the merge of an INTEGER column can fail (`cannot
// store REAL value in INTEGER column`), leaving the stream stuck. The merge's
// `ON CONFLICT DO UPDATE SET c = excluded.c` hits an SQLite bug (SQLite
// 3.40.1 alone: `CREATE TABLE t (id INTEGER PRIMARY KEY, g AS ('x'), r REAL,
// v); INSERT INTO t (id) VALUES (1); INSERT INTO t (id, v) VALUES (1, 7) ON
// CONFLICT (id) DO UPDATE SET v = excluded.v;` stores 7.0); binding the
// value (`SET c = ?`) would avoid it. Generated columns here are always
// the last column: tables that have one get no ADD COLUMN.

// ---------------------------------------------------------------------------
// Names

const TABLE_NAMES: &[&str] = &[
    "select",
    "it's",
    "say \"hi\"",
    "sp ace",
    "ünï cödé",
    "🦀",
    "a.b",
    "a,b",
    "-1",
    "key",
    "order",
    "z__crsql_clock",
    "T",
    "crsql",
];

const PK_NAMES: &[&str] = &[
    "id",
    "key",
    "select",
    "-1",
    "ünï",
    "it's",
    "q\"q",
    "sp ace",
    "pk",
    "seq",
    "col_name",
    "db_version",
    "site_id",
    "cl",
    "k",
    "rowid",
];

const COL_NAMES: &[&str] = &[
    "select",
    "key",
    "col_name",
    "db_version",
    "seq",
    "site_id",
    "col_version",
    "cl",
    "val",
    "cid",
    "pk",
    "table",
    "__crsql_key",
    "it's",
    "say \"hi\"",
    "sp ace",
    "ünï",
    "🦀",
    "rowid",
    "oid",
    "k",
    "v:k",
    "NEW",
    "excluded",
    "-2",
    "1",
    "a.b",
    "[x]",
    "`b`",
    "__crsql_clock",
    "-1 ",
    "null",
];

const GEN_NAMES: &[&str] = &["gen", "g e n", "typeof"];

/// Column types; in STRICT tables the ones STRICT does not know become ANY.
const COL_TYPES: &[&str] = &[
    "",
    "INTEGER",
    "TEXT",
    "REAL",
    "BLOB",
    "NUMERIC",
    "ANY",
    "VARCHAR(3)",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Null,
    Int,
    Real,
    Text,
    Blob,
}

const DEFAULTS: &[(&str, Class)] = &[
    ("0", Class::Int),
    ("-1", Class::Int),
    ("9223372036854775807", Class::Int),
    ("-9223372036854775808", Class::Int),
    ("1.5", Class::Real),
    ("-0.0", Class::Real),
    ("'dflt'", Class::Text),
    ("'it''s'", Class::Text),
    ("''", Class::Text),
    ("x'00ff'", Class::Blob),
    ("NULL", Class::Null),
];

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Column names a table must not get (BUG_TABLE_NAMED_LIKE_A_CLOCK_TABLE).
fn reserved(table: &str) -> BTreeSet<String> {
    // Fixed: only tables with the clock layout's columns count as clock
    // tables, so nothing is reserved any more.
    let _ = table;
    BTreeSet::new()
}

// ---------------------------------------------------------------------------
// Schema model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PkType {
    Integer,
    Text,
    Blob,
    Untyped,
}

impl PkType {
    fn decl(self, strict: bool) -> &'static str {
        match self {
            PkType::Integer => "INTEGER",
            PkType::Text => "TEXT",
            PkType::Blob => "BLOB",
            PkType::Untyped if strict => "ANY",
            PkType::Untyped => "",
        }
    }

    fn domain(self) -> Vec<Value> {
        match self {
            PkType::Integer => vec![
                Value::Integer(0),
                Value::Integer(i64::MIN),
                Value::Integer(-1),
                Value::Integer(i64::MAX),
                Value::Integer(1),
            ],
            PkType::Text => vec![
                Value::Text("a".into()),
                Value::Text("".into()),
                Value::Text("it's \"q\"".into()),
                Value::Text("ünï 🦀".into()),
                Value::Text("select".into()),
            ],
            PkType::Blob => vec![
                Value::Blob(vec![0]),
                Value::Blob(vec![]),
                Value::Blob(vec![0xff, 1]),
                Value::Blob(vec![0xde, 0xad, 0xbe, 0xef]),
                Value::Blob(vec![0, 1]),
            ],
            PkType::Untyped => vec![
                Value::Integer(1),
                Value::Text("1".into()),
                Value::Blob(vec![1]),
                Value::Real(2.5),
                Value::Integer(i64::MIN),
            ],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct PkCol {
    name: String,
    ty: PkType,
}

#[derive(Clone, Debug, PartialEq)]
struct Col {
    name: String,
    ty: &'static str,
    notnull: bool,
    dflt: Option<&'static str>,
}

impl Col {
    fn def_sql(&self, strict: bool) -> String {
        let mut s = format!("{} {}", quote(&self.name), col_type(self.ty, strict));
        if self.notnull {
            s += " NOT NULL";
        }
        if let Some(d) = self.dflt {
            s += &format!(" DEFAULT {d}");
        }
        s
    }
}

fn col_type(ty: &'static str, strict: bool) -> &'static str {
    if strict && !matches!(ty, "INTEGER" | "TEXT" | "REAL" | "BLOB" | "ANY") {
        "ANY"
    } else {
        ty
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Table {
    name: String,
    pks: Vec<PkCol>,
    cols: Vec<Col>,
    without_rowid: bool,
    strict: bool,
    generated: Option<String>,
}

impl Table {
    fn create_sql(&self) -> String {
        let mut defs: Vec<String> = self
            .pks
            .iter()
            .map(|p| format!("{} {} NOT NULL", quote(&p.name), p.ty.decl(self.strict)))
            .collect();
        defs.extend(self.cols.iter().map(|c| c.def_sql(self.strict)));
        if let Some(g) = &self.generated {
            defs.push(format!(
                "{} TEXT GENERATED ALWAYS AS (typeof({})) VIRTUAL",
                quote(g),
                quote(&self.pks[0].name)
            ));
        }
        defs.push(format!("PRIMARY KEY ({})", self.pk_list()));
        let mut opts = Vec::new();
        if self.without_rowid {
            opts.push("WITHOUT ROWID");
        }
        if self.strict {
            opts.push("STRICT");
        }
        format!(
            "CREATE TABLE {} ({}) {}",
            quote(&self.name),
            defs.join(", "),
            opts.join(", ")
        )
    }

    fn pk_list(&self) -> String {
        self.pks
            .iter()
            .map(|p| quote(&p.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn hash(&self) -> u64 {
        let pks: Vec<&str> = self.pks.iter().map(|p| p.name.as_str()).collect();
        let cols: Vec<&str> = self.cols.iter().map(|c| c.name.as_str()).collect();
        schema_hash(&self.name, &pks, &cols)
    }

    /// Every name of the table, lower-cased (SQLite compares ASCII letters
    /// without case), and the names it must not get.
    fn names(&self) -> BTreeSet<String> {
        reserved(&self.name)
            .into_iter()
            .chain(
                self.pks
                    .iter()
                    .map(|p| lower(&p.name))
                    .chain(self.cols.iter().map(|c| lower(&c.name)))
                    .chain(self.generated.iter().map(|g| lower(g))),
            )
            .collect()
    }

    /// Primary key number `i` (modulo the key domain).
    fn key(&self, i: usize) -> Vec<Value> {
        let per = match self.pks.len() {
            1 => 5,
            2 => 3,
            _ => 2,
        };
        let mut i = i;
        self.pks
            .iter()
            .map(|p| {
                let v = p.ty.domain()[i % per].clone();
                i /= per;
                v
            })
            .collect()
    }

    /// All columns a statement may write: pks, then value columns.
    fn writable(&self) -> Vec<String> {
        self.pks
            .iter()
            .map(|p| p.name.clone())
            .chain(self.cols.iter().map(|c| c.name.clone()))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Generated schemas

#[derive(Clone, Debug)]
struct ColGen {
    name: usize,
    ty: usize,
    dflt: Option<usize>,
    notnull: bool,
}

#[derive(Clone, Debug)]
struct TableGen {
    name: usize,
    pks: Vec<(usize, usize)>,
    cols: Vec<ColGen>,
    without_rowid: bool,
    strict: bool,
    generated: Option<usize>,
}

fn default_fits(class: Class, ty: &str, strict: bool) -> bool {
    if !strict {
        return true;
    }
    matches!(
        (col_type(ty_static(ty), true), class),
        (_, Class::Null)
            | ("ANY", _)
            | ("INTEGER", Class::Int)
            | ("REAL", Class::Int | Class::Real)
            | ("TEXT", Class::Text)
            | ("BLOB", Class::Blob)
    )
}

fn ty_static(ty: &str) -> &'static str {
    COL_TYPES.iter().find(|t| **t == ty).copied().unwrap_or("")
}

/// A concrete column from a generated one, or None when its name is taken.
fn make_col(g: &ColGen, taken: &BTreeSet<String>, strict: bool) -> Option<Col> {
    let mut name = None;
    for k in 0..COL_NAMES.len() {
        let n = COL_NAMES[(g.name + k) % COL_NAMES.len()];
        if !taken.contains(&lower(n)) {
            name = Some(n);
            break;
        }
    }
    let name = name?;
    let ty = COL_TYPES[g.ty % COL_TYPES.len()];
    let mut dflt = g.dflt.map(|d| DEFAULTS[d % DEFAULTS.len()]);
    if let Some((_, class)) = dflt {
        if !default_fits(class, ty, strict) {
            dflt = None;
        }
    }
    let notnull = g.notnull && matches!(dflt, Some((_, c)) if c != Class::Null);
    Some(Col {
        name: name.to_string(),
        ty,
        notnull,
        dflt: dflt.map(|(d, _)| d),
    })
}

fn make_tables(gens: &[TableGen]) -> Vec<Table> {
    let mut used_tables = BTreeSet::new();
    let mut out = Vec::new();
    for g in gens {
        let name = (0..TABLE_NAMES.len())
            .map(|k| TABLE_NAMES[(g.name + k) % TABLE_NAMES.len()])
            .find(|n| !used_tables.contains(&lower(n)))
            .unwrap();
        used_tables.insert(lower(name));
        let mut taken = reserved(name);
        let mut pks = Vec::new();
        for &(n, ty) in &g.pks {
            let pn = (0..PK_NAMES.len())
                .map(|k| PK_NAMES[(n + k) % PK_NAMES.len()])
                .find(|n| !taken.contains(&lower(n)))
                .unwrap();
            taken.insert(lower(pn));
            pks.push(PkCol {
                name: pn.to_string(),
                ty: [PkType::Integer, PkType::Text, PkType::Blob, PkType::Untyped][ty % 4],
            });
        }
        let mut cols = Vec::new();
        for c in &g.cols {
            if let Some(col) = make_col(c, &taken, g.strict) {
                taken.insert(lower(&col.name));
                cols.push(col);
            }
        }
        let generated = g.generated.and_then(|i| {
            (0..GEN_NAMES.len())
                .map(|k| GEN_NAMES[(i + k) % GEN_NAMES.len()])
                .find(|n| !taken.contains(&lower(n)))
                .map(String::from)
        });
        out.push(Table {
            name: name.to_string(),
            pks,
            cols,
            without_rowid: g.without_rowid,
            strict: g.strict,
            generated,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Generated operations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conflict {
    None,
    Abort,
    Fail,
    Ignore,
    Replace,
    Rollback,
}

impl Conflict {
    fn sql(self) -> &'static str {
        match self {
            Conflict::None => "",
            Conflict::Abort => " OR ABORT",
            Conflict::Fail => " OR FAIL",
            Conflict::Ignore => " OR IGNORE",
            Conflict::Replace => " OR REPLACE",
            Conflict::Rollback => " OR ROLLBACK",
        }
    }
}

#[derive(Clone, Debug)]
enum SetVal {
    Val(Value),
    /// Another column of the row (pks and value columns, modulo their count).
    Col(usize),
    /// `excluded.<column>` (upserts only; a plain value elsewhere).
    Excluded(usize),
}

#[derive(Clone, Debug)]
enum InsVerb {
    Plain(Conflict),
    ReplaceInto,
    /// `ON CONFLICT [(pks)] DO UPDATE SET …`, possibly moving the row to
    /// another key.
    Upsert {
        sets: Vec<(usize, SetVal)>,
        pk_to: Option<usize>,
        target: bool,
    },
    UpsertNothing {
        target: bool,
    },
}

#[derive(Clone, Debug)]
enum Target {
    Row(Index),
    Key(usize),
    All,
    ColIs(usize, Value),
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        t: Index,
        verb: InsVerb,
        rows: Vec<(usize, Vec<Value>)>,
        omit: u8,
    },
    Update {
        t: Index,
        verb: Conflict,
        target: Target,
        sets: Vec<(usize, SetVal)>,
        /// Move the row(s) to key `.0`; `.1`: change only the first pk column.
        pk_to: Option<(usize, bool)>,
    },
    Delete {
        t: Index,
        target: Target,
    },
}

#[derive(Clone, Copy, Debug)]
enum TxMode {
    Auto,
    Commit,
    Rollback,
    /// `SAVEPOINT` after this many ops, `ROLLBACK TO` it at the end, COMMIT.
    PartialRollback(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Apply,
    Drop,
    Duplicate,
    RolledBack,
}

#[derive(Clone, Copy, Debug)]
enum AlterRefusal {
    /// ADD COLUMN "-1": commit_alter refuses, DROP COLUMN fixes it.
    Minus1,
    /// A unique index: commit_alter refuses, DROP INDEX fixes it.
    UniqueIndex,
}

#[derive(Clone, Debug)]
struct AlterGen {
    t: Index,
    drops: Vec<Index>,
    adds: Vec<ColGen>,
    /// Add a column with the name of the first dropped one.
    readd: bool,
    refuse: Option<AlterRefusal>,
    in_tx: bool,
    /// Per replica: ops before and after the DDL, inside the window.
    ops: Vec<(Vec<Op>, Vec<Op>)>,
    /// Apply on this many replicas now (the rest later), or on all.
    stagger: Option<usize>,
    order: usize,
}

#[derive(Clone, Debug)]
struct RecreateGen {
    t: Index,
    keep: u8,
    adds: Vec<ColGen>,
    flip_rowid: bool,
    wrong_pk_first: bool,
    in_tx: bool,
    /// Per replica: ops before `crsql_as_crr` (untracked) and after.
    ops: Vec<(Vec<Op>, Vec<Op>)>,
    stagger: Option<usize>,
    order: usize,
}

#[derive(Clone, Copy, Debug)]
enum BadKind {
    Minus1Col,
    CrsqlKeyPk,
    UniqueCol,
    NullablePk,
    NullableCompositePk,
    ForeignKey,
    NotNullNoDefault,
    Autoincrement,
    LongColName,
    NoPk,
    /// `crsql_as_crr` on an existing CRR's name in another letter case.
    Respell,
}

#[derive(Clone, Debug)]
enum Step {
    Write {
        r: Index,
        ops: Vec<Op>,
        tx: TxMode,
    },
    Fetch {
        link: Index,
        limit: usize,
        resume: bool,
    },
    Deliver {
        link: Index,
        pick: Option<Index>,
        fate: Fate,
    },
    Pump {
        link: Index,
        limit: usize,
    },
    Ack {
        link: Index,
    },
    Recursive {
        r: Index,
        on: bool,
    },
    Restart {
        r: Index,
    },
    Barrier,
    Alter(AlterGen),
    Recreate(RecreateGen),
    RefusedCrr {
        r: Index,
        kind: BadKind,
        t: Index,
        before: Option<Op>,
    },
    /// `ALTER TABLE … DROP COLUMN` of a CRR outside an alter window.
    RefusedDropColumn {
        r: Index,
        t: Index,
        col: Index,
    },
}

#[derive(Clone, Copy, Debug)]
struct LinkCfg {
    exclude: bool,
    max_changes: Option<usize>,
    max_bytes: Option<usize>,
    json: bool,
}

#[derive(Clone, Debug)]
struct Case {
    tables: Vec<TableGen>,
    mev: bool,
    /// Links may split transactions into parts (`max_changes`, `max_bytes`).
    split: bool,
    links: Vec<LinkCfg>,
    steps: Vec<Step>,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(Value::Null),
        4 => prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            2,
            (1 << 53) + 1,
            i64::MAX - 1,
            i64::MAX
        ])
        .prop_map(Value::Integer),
        3 => prop::sample::select(vec![
            0.0,
            -0.0,
            1.5,
            2.0,
            -2.5e-300,
            5e-324,
            1e308,
            9.223372036854776e18,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN
        ])
        .prop_map(Value::Real),
        3 => prop::sample::select(vec![
            "", "a", "12", " 7", "1e3", "0x10", "-0", "1.5", "ünï", "it's", "say \"hi\"", "a\0b",
            "9223372036854775808", "select"
        ])
        .prop_map(|s| Value::Text(s.into())),
        2 => prop::collection::vec(any::<u8>(), 0..6).prop_map(Value::Blob),
    ]
}

fn conflict() -> impl Strategy<Value = Conflict> {
    prop_oneof![
        3 => Just(Conflict::None),
        1 => Just(Conflict::Abort),
        1 => Just(Conflict::Fail),
        2 => Just(Conflict::Ignore),
        3 => Just(Conflict::Replace),
        1 => Just(Conflict::Rollback),
    ]
}

fn setval() -> impl Strategy<Value = SetVal> {
    prop_oneof![
        5 => value().prop_map(SetVal::Val),
        1 => (0..8usize).prop_map(SetVal::Col),
        2 => (0..8usize).prop_map(SetVal::Excluded),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<Index>().prop_map(Target::Row),
        2 => (0..16usize).prop_map(Target::Key),
        1 => Just(Target::All),
        1 => (0..8usize, value()).prop_map(|(c, v)| Target::ColIs(c, v)),
    ]
}

fn ins_verb() -> impl Strategy<Value = InsVerb> {
    prop_oneof![
        6 => conflict().prop_map(InsVerb::Plain),
        1 => Just(InsVerb::ReplaceInto),
        3 => (
            prop::collection::vec((0..8usize, setval()), 0..3),
            prop::option::weighted(0.15, 0..16usize),
            any::<bool>()
        )
            .prop_map(|(sets, pk_to, target)| InsVerb::Upsert { sets, pk_to, target }),
        1 => any::<bool>().prop_map(|target| InsVerb::UpsertNothing { target }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            any::<Index>(),
            ins_verb(),
            prop::collection::vec((0..16usize, prop::collection::vec(value(), 6)), 1..3),
            any::<u8>(),
            any::<u8>()
        )
            .prop_map(|(t, verb, rows, a, b)| Op::Insert { t, verb, rows, omit: a & b }),
        5 => (
            any::<Index>(),
            conflict(),
            target(),
            prop::collection::vec((0..8usize, setval()), 0..3),
            prop::option::weighted(0.3, (0..16usize, any::<bool>()))
        )
            .prop_map(|(t, verb, target, sets, pk_to)| Op::Update { t, verb, target, sets, pk_to }),
        2 => (any::<Index>(), target()).prop_map(|(t, target)| Op::Delete { t, target }),
    ]
}

fn col_gen() -> impl Strategy<Value = ColGen> {
    (
        0..COL_NAMES.len(),
        0..COL_TYPES.len(),
        prop::option::weighted(0.5, 0..DEFAULTS.len()),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(name, ty, dflt, notnull)| ColGen {
            name,
            ty,
            dflt,
            notnull,
        })
}

fn table_gen() -> impl Strategy<Value = TableGen> {
    (
        0..TABLE_NAMES.len(),
        prop::collection::vec((0..PK_NAMES.len(), 0..4usize), 1..=3),
        prop::collection::vec(col_gen(), 0..=5),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.15, 0..GEN_NAMES.len()),
    )
        .prop_map(
            |(name, pks, cols, without_rowid, strict, generated)| TableGen {
                name,
                pks,
                cols,
                without_rowid,
                strict,
                generated,
            },
        )
}

fn window_ops() -> impl Strategy<Value = Vec<(Vec<Op>, Vec<Op>)>> {
    prop::collection::vec(
        (
            prop::collection::vec(op(), 0..3),
            prop::collection::vec(op(), 0..4),
        ),
        REPLICAS,
    )
}

fn stagger() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.35, 1..REPLICAS)
}

fn alter_gen() -> impl Strategy<Value = AlterGen> {
    (
        any::<Index>(),
        prop::collection::vec(any::<Index>(), 0..=1),
        prop::collection::vec(col_gen(), 0..=2),
        prop::bool::weighted(0.2),
        prop::option::weighted(
            0.3,
            prop_oneof![Just(AlterRefusal::Minus1), Just(AlterRefusal::UniqueIndex)],
        ),
        any::<bool>(),
        window_ops(),
        stagger(),
        0..REPLICAS,
    )
        .prop_map(
            |(t, drops, adds, readd, refuse, in_tx, ops, stagger, order)| AlterGen {
                t,
                drops,
                adds,
                readd,
                refuse,
                in_tx,
                ops,
                stagger,
                order,
            },
        )
}

fn recreate_gen() -> impl Strategy<Value = RecreateGen> {
    (
        any::<Index>(),
        any::<u8>(),
        prop::collection::vec(col_gen(), 0..=1),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
        any::<bool>(),
        window_ops(),
        stagger(),
        0..REPLICAS,
    )
        .prop_map(
            |(t, keep, adds, flip_rowid, wrong_pk_first, in_tx, ops, stagger, order)| RecreateGen {
                t,
                keep,
                adds,
                flip_rowid,
                wrong_pk_first,
                in_tx,
                ops,
                stagger,
                order,
            },
        )
}

fn bad_kind() -> impl Strategy<Value = BadKind> {
    prop::sample::select(vec![
        BadKind::Minus1Col,
        BadKind::Minus1Col,
        BadKind::CrsqlKeyPk,
        BadKind::CrsqlKeyPk,
        BadKind::UniqueCol,
        BadKind::NullablePk,
        BadKind::NullableCompositePk,
        BadKind::ForeignKey,
        BadKind::NotNullNoDefault,
        BadKind::Autoincrement,
        BadKind::LongColName,
        BadKind::NoPk,
        BadKind::Respell,
        BadKind::Respell,
    ])
}

fn step() -> impl Strategy<Value = Step> {
    let fate = prop_oneof![
        10 => Just(Fate::Apply),
        2 => Just(Fate::Drop),
        2 => Just(Fate::Duplicate),
        1 => Just(Fate::RolledBack),
    ];
    let tx = prop_oneof![
        3 => Just(TxMode::Auto),
        4 => Just(TxMode::Commit),
        1 => Just(TxMode::Rollback),
        1 => (0..4usize).prop_map(TxMode::PartialRollback),
    ];
    prop_oneof![
        10 => (any::<Index>(), prop::collection::vec(op(), 1..6), tx)
            .prop_map(|(r, ops, tx)| Step::Write { r, ops, tx }),
        5 => (any::<Index>(), 1..5usize, prop::bool::weighted(0.4))
            .prop_map(|(link, limit, resume)| Step::Fetch { link, limit, resume }),
        8 => (any::<Index>(), prop::option::weighted(0.3, any::<Index>()), fate)
            .prop_map(|(link, pick, fate)| Step::Deliver { link, pick, fate }),
        3 => (any::<Index>(), 1..6usize).prop_map(|(link, limit)| Step::Pump { link, limit }),
        2 => any::<Index>().prop_map(|link| Step::Ack { link }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(r, on)| Step::Recursive { r, on }),
        1 => any::<Index>().prop_map(|r| Step::Restart { r }),
        1 => Just(Step::Barrier),
        2 => alter_gen().prop_map(Step::Alter),
        1 => recreate_gen().prop_map(Step::Recreate),
        1 => (any::<Index>(), bad_kind(), any::<Index>(), prop::option::weighted(0.4, op()))
            .prop_map(|(r, kind, t, before)| Step::RefusedCrr { r, kind, t, before }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(r, t, col)| Step::RefusedDropColumn { r, t, col }),
    ]
}

fn link_cfg() -> impl Strategy<Value = LinkCfg> {
    (
        prop::bool::weighted(0.7),
        prop::option::weighted(0.7, 1..=4usize),
        prop::option::weighted(0.15, 200..600usize),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(exclude, max_changes, max_bytes, json)| LinkCfg {
            exclude,
            max_changes,
            max_bytes,
            json,
        })
}

fn case(max_steps: usize) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(table_gen(), 1..=3),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(link_cfg(), REPLICAS * (REPLICAS - 1)),
        prop::collection::vec(step(), 1..max_steps),
    )
        .prop_map(|(tables, mev, split, links, steps)| Case {
            tables,
            mev,
            split,
            links,
            steps,
        })
}

// ---------------------------------------------------------------------------
// Statistics over all cases, printed at the end

#[derive(Clone, Copy)]
enum Stat {
    Statements,
    SqliteRefusals,
    RolledBackTx,
    Applied,
    Covered,
    Gaps,
    SchemaMismatches,
    Dropped,
    Alters,
    CommitAlterRefusals,
    Recreates,
    WrongPkRefusals,
    CrrRefusals,
    DropColumnRefusals,
    Staggered,
    FinalPackages,
    AcksRefusedAfterCompaction,
    ConstraintRefusals,
}

const STATS: [(Stat, &str); 18] = [
    (Stat::Statements, "statements"),
    (Stat::SqliteRefusals, "statements refused by SQLite"),
    (Stat::RolledBackTx, "transactions ended by OR ROLLBACK"),
    (Stat::Applied, "packages applied"),
    (Stat::Covered, "duplicates"),
    (Stat::Gaps, "gaps refused"),
    (
        Stat::SchemaMismatches,
        "packages applied while schemas differed",
    ),
    (Stat::Dropped, "dropped"),
    (Stat::Alters, "alter windows"),
    (Stat::CommitAlterRefusals, "commit_alter refusals"),
    (Stat::Recreates, "drop/re-creates"),
    (Stat::WrongPkRefusals, "re-creates with another pk refused"),
    (Stat::CrrRefusals, "crsql_as_crr refusals"),
    (
        Stat::DropColumnRefusals,
        "DROP COLUMN outside a window refused",
    ),
    (Stat::Staggered, "staggered schema changes"),
    (Stat::FinalPackages, "packages in final syncs"),
    (
        Stat::AcksRefusedAfterCompaction,
        "acknowledgements refused after a compaction (BUG_ACK_AFTER_COMPACTION)",
    ),
    (
        Stat::ConstraintRefusals,
        "packages refused by a column constraint the sender's schema lacks",
    ),
];

static COUNTS: [AtomicUsize; 18] = [const { AtomicUsize::new(0) }; 18];

fn count(s: Stat) {
    COUNTS[s as usize].fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// SQL helpers

fn try_rows(c: &Connection, sql: &str, args: &[Value]) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut stmt = c.prepare(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(params_from_iter(args))?;
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

fn rows(c: &Connection, sql: &str, args: &[Value]) -> Vec<Vec<Value>> {
    try_rows(c, sql, args).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn exact(rows: Vec<Vec<Value>>) -> Vec<Vec<Exact>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(Exact::from).collect())
        .collect()
}

fn message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        other => other.to_string(),
    }
}

/// SQLite's own refusals of a statement (constraints and types).
fn sqlite_refusal(msg: &str) -> bool {
    msg.contains("constraint failed")
        || msg.contains("cannot store")
        || msg.contains("datatype mismatch")
}

/// Bind `v` as the next numbered parameter.
fn arg(v: Value, args: &mut Vec<Value>) -> String {
    args.push(v);
    format!("?{}", args.len())
}

fn flip_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Everything a refused statement must leave as it was.
#[derive(PartialEq)]
struct Snap {
    tables: Vec<(String, Vec<Vec<Exact>>)>,
    /// `crsql_changes`, or its error (see `Net::snap_raw`).
    changes: Result<Vec<Vec<Exact>>, String>,
    db_version: i64,
    master: Vec<Vec<Exact>>,
    /// The rows of every clock and pks table (only for schema refusals).
    raw: Vec<(String, Vec<Vec<Exact>>)>,
}

impl fmt::Debug for Snap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "db_version {}", self.db_version)?;
        for (t, rows) in &self.tables {
            writeln!(f, "table {t:?}: {rows:?}")?;
        }
        match &self.changes {
            Ok(changes) => {
                writeln!(f, "crsql_changes:")?;
                for c in changes {
                    writeln!(f, "  {c:?}")?;
                }
            }
            Err(e) => writeln!(f, "crsql_changes: error {e}")?,
        }
        for (t, rows) in &self.raw {
            writeln!(f, "{t:?}: {rows:?}")?;
        }
        writeln!(f, "schema: {:?}", self.master)
    }
}

/// The rows of a table, sorted (`SELECT *`, so generated columns too).
fn dump_table(c: &Connection, name: &str) -> Option<Vec<Vec<Exact>>> {
    let exists: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    if exists == 0 {
        return None;
    }
    let mut v = exact(rows(c, &format!("SELECT * FROM {}", quote(name)), &[]));
    v.sort();
    Some(v)
}

const SELECT_CHANGES: &str =
    "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes";

fn changes(c: &Connection) -> Vec<Vec<Value>> {
    rows(c, SELECT_CHANGES, &[])
}

fn snap(c: &Connection, tables: &[Table], raw: bool) -> Snap {
    let changes = try_rows(c, SELECT_CHANGES, &[])
        .map(|rows| {
            let mut v = exact(rows);
            v.sort();
            v
        })
        .map_err(|e| message(&e));
    let raw = if raw {
        rows(
            c,
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND (name LIKE '%\\_\\_crsql\\_clock' ESCAPE '\\' OR name LIKE '%\\_\\_crsql\\_pks' ESCAPE '\\') ORDER BY name",
            &[],
        )
        .into_iter()
        .map(|r| match &r[0] {
            Value::Text(name) => (name.clone(), dump_table(c, name).unwrap()),
            other => panic!("table name {other:?}"),
        })
        .collect()
    } else {
        Vec::new()
    };
    Snap {
        tables: tables
            .iter()
            .filter_map(|t| dump_table(c, &t.name).map(|d| (t.name.clone(), d)))
            .collect(),
        changes,
        db_version: c
            .query_row("SELECT crsql_db_version()", [], |r| r.get(0))
            .unwrap(),
        master: exact(rows(
            c,
            "SELECT type, name, tbl_name, sql FROM sqlite_master \
             UNION ALL SELECT type, name, tbl_name, sql FROM sqlite_temp_master ORDER BY 1, 2",
            &[],
        )),
        raw,
    }
}

// ---------------------------------------------------------------------------
// Replicas and links

struct Replica {
    path: PathBuf,
    conn: Option<Connection>,
    site_hex: String,
    /// The schema this replica has now (differs from the others only while
    /// a staggered change is pending).
    tables: Vec<Table>,
    last_db_version: i64,
    /// `PRAGMA recursive_triggers` is on (off after a restart).
    recursive: bool,
}

fn open_replica(path: &Path) -> Connection {
    let conn = open(path);
    conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
    conn
}

impl Replica {
    fn c(&self) -> &Connection {
        self.conn.as_ref().expect("replica is open")
    }

    fn db_version(&self) -> i64 {
        self.c()
            .query_row("SELECT crsql_db_version()", [], |r| r.get(0))
            .unwrap()
    }

    fn table(&self, t: &Index) -> Option<usize> {
        (!self.tables.is_empty()).then(|| t.index(self.tables.len()))
    }

    fn last_applied(&self, inbound: &str) -> Pos {
        let s: String = self
            .c()
            .query_row(
                &format!("SELECT last_applied FROM {}", quote(inbound)),
                [],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("last_applied of {inbound}: {e}"));
        Pos::parse(&s)
    }
}

#[derive(Clone)]
struct Wire {
    data: Value,
    since: Pos,
    cursor: Pos,
    /// (table, schema hash) of each table the package names.
    tables: Vec<(String, u64)>,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} → {})", self.since, self.cursor)
    }
}

struct Link {
    from: usize,
    to: usize,
    out: String,
    inb: String,
    in_flight: Vec<Wire>,
    fetched: Option<Pos>,
}

/// A schema change resolved against the replicas' schema, waiting to be
/// applied on some replicas.
#[derive(Clone, Debug)]
enum Plan {
    Alter {
        t: usize,
        drops: Vec<String>,
        adds: Vec<Col>,
        refuse: Option<AlterRefusal>,
        in_tx: bool,
        new: Table,
    },
    Recreate {
        t: usize,
        new: Table,
        wrong_pk_first: bool,
        in_tx: bool,
    },
}

struct Pending {
    plan: Plan,
    todo: Vec<usize>,
    ops: Vec<(Vec<Op>, Vec<Op>)>,
}

struct Net {
    reps: Vec<Replica>,
    links: Vec<Link>,
    mev: bool,
    pending: Vec<Pending>,
    log: Vec<String>,
}

/// What a statement's failure may have changed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpCtx {
    /// A tracked write outside an alter window.
    Normal,
    /// Inside an alter window or before `crsql_as_crr` of a re-created table:
    /// no OR ROLLBACK (it would end the window).
    Window,
}

impl Net {
    fn new(dir: &Path, case: &Case) -> Net {
        let tables = make_tables(&case.tables);
        let mut reps = Vec::new();
        for i in 0..REPLICAS {
            let path = dir.join(format!("r{i}.db"));
            let conn = open_replica(&path);
            if case.mev {
                conn.query_row(
                    "SELECT crsql_config_set('merge-equal-values', 1)",
                    [],
                    |_| Ok(()),
                )
                .unwrap();
            }
            for t in &tables {
                let sql = t.create_sql();
                conn.execute_batch(&sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let as_crr = || -> rusqlite::Result<String> {
                    conn.query_row("SELECT crsql_as_crr(?1)", [&t.name], |r| r.get(0))
                };
                let ok = as_crr()
                    .unwrap_or_else(|e| panic!("crsql_as_crr({:?}) after {sql}: {e}", t.name));
                assert_eq!(ok, "OK");
            }
            let site_hex: String = conn
                .query_row("SELECT hex(crsql_site_id())", [], |r| r.get(0))
                .unwrap();
            reps.push(Replica {
                path,
                conn: Some(conn),
                site_hex,
                tables: tables.clone(),
                last_db_version: 0,
                recursive: false,
            });
        }
        let mut links = Vec::new();
        let mut cfgs = case.links.iter();
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                if from == to {
                    continue;
                }
                let cfg = cfgs.next().unwrap();
                let out = format!("to_r{to}");
                let inb = format!("from_r{from}");
                let mut args = Vec::new();
                if cfg.exclude {
                    args.push(format!("exclude_sites = '{}'", reps[to].site_hex));
                }
                if let (Some(m), true) = (cfg.max_changes, case.split) {
                    args.push(format!("max_changes = {m}"));
                }
                if let (Some(b), true) = (cfg.max_bytes, case.split) {
                    args.push(format!("max_bytes = {b}"));
                }
                if cfg.json {
                    args.push("encoding = 'json'".into());
                }
                reps[from]
                    .c()
                    .execute_batch(&format!(
                        "CREATE VIRTUAL TABLE {out} USING crsql_OutboundStream({})",
                        args.join(", ")
                    ))
                    .unwrap();
                reps[to]
                    .c()
                    .execute_batch(&format!(
                        "CREATE VIRTUAL TABLE {inb} USING crsql_InboundStream(from = '{}')",
                        reps[from].site_hex
                    ))
                    .unwrap();
                links.push(Link {
                    from,
                    to,
                    out,
                    inb,
                    in_flight: Vec::new(),
                    fetched: None,
                });
            }
        }
        let mut net = Net {
            reps,
            links,
            mev: case.mev,
            pending: Vec::new(),
            log: Vec::new(),
        };
        for r in 0..REPLICAS {
            net.reps[r].last_db_version = net.reps[r].db_version();
        }
        net
    }

    fn fail(&self, msg: String) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(40).rev().collect();
        panic!("{msg}\nlast events:\n{tail:#?}");
    }

    /// The state of replica `r`; `crsql_changes` must be readable.
    fn snap(&self, r: usize) -> Snap {
        let s = snap(self.reps[r].c(), &self.reps[r].tables, false);
        if let Err(e) = &s.changes {
            self.fail(format!("r{r}: reading crsql_changes failed: {e}"));
        }
        s
    }

    /// The state of replica `r` with the clock tables read directly, for the
    /// refusals of schema changes. `crsql_changes` may fail here (see
    /// BUG_CHANGES_AFTER_RECREATE_WITH_OTHER_PK); inside an alter window it
    /// is not compared at all (`in_window`): it may be stale there
    /// (BUG_CHANGES_STALE_IN_ALTER_WINDOW), and while the window holds a
    /// column named "-1" it reports that column's value as the `val` of
    /// sentinel rows once its metadata is re-read; the clock tables and
    /// the base tables it is made of are compared instead.
    fn snap_raw(&self, r: usize, in_window: bool) -> Snap {
        let mut s = snap(self.reps[r].c(), &self.reps[r].tables, true);
        if in_window {
            s.changes = Err("not compared in an alter window".into());
        }
        s
    }

    fn expect_same(&self, what: &str, before: &Snap, after: &Snap) {
        // With the clock tables read directly, a `crsql_changes` that failed
        // on one side (the stale metadata of BUG_CHANGES_STALE_IN_ALTER_WINDOW
        // or BUG_CHANGES_AFTER_RECREATE_WITH_OTHER_PK) is not compared.
        let changes_comparable =
            before.raw.is_empty() || (before.changes.is_ok() && after.changes.is_ok());
        let same = before.tables == after.tables
            && before.db_version == after.db_version
            && before.master == after.master
            && before.raw == after.raw
            && (!changes_comparable || before.changes == after.changes);
        if !same {
            self.fail(format!(
                "{what} changed the database:\nbefore:\n{before:?}\nafter:\n{after:?}"
            ));
        }
    }

    // -- statements ---------------------------------------------------------

    /// Resolve an op against replica `r`'s schema and rows: SQL and arguments,
    /// or None when it has nothing to act on.
    fn resolve(&self, r: usize, op: &Op, ctx: OpCtx) -> Option<(String, Vec<Value>, Conflict)> {
        let rep = &self.reps[r];
        let t = match op {
            Op::Insert { t, .. } | Op::Update { t, .. } | Op::Delete { t, .. } => rep.table(t)?,
        };
        let tab = &rep.tables[t];
        let tq = quote(&tab.name);
        let writable = tab.writable();
        let fix = |c: Conflict| {
            if ctx == OpCtx::Window && c == Conflict::Rollback {
                Conflict::Abort
            } else {
                c
            }
        };
        let mut args: Vec<Value> = Vec::new();
        let set_expr = |col: &str, v: &SetVal, args: &mut Vec<Value>, upsert: bool| {
            let rhs = match v {
                SetVal::Val(x) => arg(x.clone(), args),
                SetVal::Col(j) => quote(&writable[j % writable.len()]),
                SetVal::Excluded(j) if upsert => {
                    format!("excluded.{}", quote(&writable[j % writable.len()]))
                }
                SetVal::Excluded(j) => quote(&writable[j % writable.len()]),
            };
            format!("{} = {rhs}", quote(col))
        };
        let key_where = |k: Vec<Value>, args: &mut Vec<Value>| {
            tab.pks
                .iter()
                .zip(k)
                .map(|(p, v)| format!("{} = {}", quote(&p.name), arg(v, args)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        // WHERE clause of a target: None when the table has no row to pick.
        let where_of = |target: &Target, args: &mut Vec<Value>| -> Option<String> {
            match target {
                Target::Row(i) => {
                    let keys = rows(
                        rep.c(),
                        &format!("SELECT {0} FROM {tq} ORDER BY {0}", tab.pk_list()),
                        &[],
                    );
                    if keys.is_empty() {
                        return None;
                    }
                    Some(key_where(keys[i.index(keys.len())].clone(), args))
                }
                Target::Key(i) => Some(key_where(tab.key(*i), args)),
                Target::All => Some("1".into()),
                Target::ColIs(c, v) => {
                    let col = &writable[c % writable.len()];
                    Some(format!("{} IS {}", quote(col), arg(v.clone(), args)))
                }
            }
        };
        match op {
            Op::Insert {
                verb, rows, omit, ..
            } => {
                let cols: Vec<usize> = (0..tab.cols.len())
                    .filter(|j| omit & (1 << (j % 8)) == 0)
                    .collect();
                let names: Vec<String> = tab
                    .pks
                    .iter()
                    .map(|p| quote(&p.name))
                    .chain(cols.iter().map(|&j| quote(&tab.cols[j].name)))
                    .collect();
                let mut tuples = Vec::new();
                for (key, vals) in rows {
                    let mut items: Vec<String> = Vec::new();
                    for v in tab.key(*key) {
                        items.push(arg(v, &mut args));
                    }
                    for &j in &cols {
                        items.push(arg(vals[j % vals.len()].clone(), &mut args));
                    }
                    tuples.push(format!("({})", items.join(", ")));
                }
                let (head, conflict) = match verb {
                    InsVerb::Plain(c) => {
                        let c = fix(*c);
                        (format!("INSERT{} INTO", c.sql()), c)
                    }
                    InsVerb::ReplaceInto => ("REPLACE INTO".to_string(), Conflict::Replace),
                    // An upsert resolves its conflicts itself, like OR IGNORE.
                    _ => ("INSERT INTO".to_string(), Conflict::Ignore),
                };
                let mut sql = format!(
                    "{head} {tq} ({}) VALUES {}",
                    names.join(", "),
                    tuples.join(", ")
                );
                match verb {
                    InsVerb::Upsert {
                        sets,
                        pk_to,
                        target,
                    } => {
                        let tgt = if *target {
                            format!(" ({})", tab.pk_list())
                        } else {
                            String::new()
                        };
                        let mut items = Vec::new();
                        let mut seen = BTreeSet::new();
                        if !tab.cols.is_empty() {
                            for (c, v) in sets {
                                let j = c % tab.cols.len();
                                if seen.insert(j) {
                                    items.push(set_expr(&tab.cols[j].name, v, &mut args, true));
                                }
                            }
                        }
                        if let Some(k) = pk_to {
                            for (p, v) in tab.pks.iter().zip(tab.key(*k)) {
                                let a = arg(v, &mut args);
                                items.push(format!("{} = {a}", quote(&p.name)));
                            }
                        }
                        if items.is_empty() {
                            sql += &format!(" ON CONFLICT{tgt} DO NOTHING");
                        } else {
                            sql += &format!(" ON CONFLICT{tgt} DO UPDATE SET {}", items.join(", "));
                        }
                    }
                    InsVerb::UpsertNothing { target } => {
                        if *target {
                            sql += &format!(" ON CONFLICT ({}) DO NOTHING", tab.pk_list());
                        } else {
                            sql += " ON CONFLICT DO NOTHING";
                        }
                    }
                    _ => {}
                }
                Some((sql, args, conflict))
            }
            Op::Update {
                verb,
                target,
                sets,
                pk_to,
                ..
            } => {
                let verb = fix(*verb);
                let mut items = Vec::new();
                let mut seen = BTreeSet::new();
                if !tab.cols.is_empty() {
                    for (c, v) in sets {
                        let j = c % tab.cols.len();
                        if seen.insert(j) {
                            items.push(set_expr(&tab.cols[j].name, v, &mut args, false));
                        }
                    }
                }
                if let Some((k, partial)) = pk_to {
                    let n = if *partial { 1 } else { tab.pks.len() };
                    for (p, v) in tab.pks.iter().zip(tab.key(*k)).take(n) {
                        let a = arg(v, &mut args);
                        items.push(format!("{} = {a}", quote(&p.name)));
                    }
                }
                if items.is_empty() {
                    // A no-op update (it still uses up a db_version, Q14).
                    let p = quote(&tab.pks[0].name);
                    items.push(format!("{p} = {p}"));
                }
                let w = where_of(target, &mut args)?;
                Some((
                    format!(
                        "UPDATE{} {tq} SET {} WHERE {w}",
                        verb.sql(),
                        items.join(", ")
                    ),
                    args,
                    verb,
                ))
            }
            Op::Delete { target, .. } => {
                let w = where_of(target, &mut args)?;
                Some((format!("DELETE FROM {tq} WHERE {w}"), args, Conflict::None))
            }
        }
    }

    /// Run one op on replica `r`. A failed statement must be one of SQLite's
    /// refusals, and must change nothing (`tx_start`: the state at BEGIN,
    /// for OR ROLLBACK).
    fn run_op(&mut self, r: usize, op: &Op, ctx: OpCtx, tx_start: Option<&Snap>) {
        let Some((sql, args, conflict)) = self.resolve(r, op, ctx) else {
            return;
        };
        count(Stat::Statements);
        // In a window the clock tables are compared directly (no trigger
        // writes them there): BUG_CHANGES_STALE_IN_ALTER_WINDOW.
        let snap_of = |net: &Net| {
            if ctx == OpCtx::Window {
                net.snap_raw(r, true)
            } else {
                net.snap(r)
            }
        };
        let before = snap_of(self);
        let c = self.reps[r].c();
        let in_tx = !c.is_autocommit();
        let res = c
            .prepare(&sql)
            .and_then(|mut s| s.execute(params_from_iter(args.iter())));
        let e = match res {
            Ok(n) => {
                self.log.push(format!("r{r}: {sql} {args:?}: {n} rows"));
                return;
            }
            Err(e) => e,
        };
        let msg = message(&e);
        self.log
            .push(format!("r{r}: {sql} {args:?}: refused: {msg}"));
        if !sqlite_refusal(&msg) {
            self.fail(format!(
                "r{r}: `{sql}` with {args:?} failed unexpectedly: {msg}"
            ));
        }
        count(Stat::SqliteRefusals);
        let after = snap_of(self);
        let ended = in_tx && self.reps[r].c().is_autocommit();
        if ended {
            count(Stat::RolledBackTx);
            if conflict != Conflict::Rollback {
                self.fail(format!("r{r}: `{sql}` ({msg}) ended the transaction"));
            }
            if let Some(start) = tx_start {
                self.expect_same(
                    &format!("r{r}: `{sql}` ({msg}), with the transaction rolled back"),
                    start,
                    &after,
                );
            }
        } else if conflict == Conflict::Fail {
            // OR FAIL keeps what the statement did before the failing row.
        } else if msg.contains("cannot store") {
            // SQLite's own behaviour, without the extension (3.40.1 and the
            // bundled one): a STRICT type error is not statement-atomic
            // inside a transaction, whatever the conflict clause. `CREATE
            // TABLE t (id ANY PRIMARY KEY, s TEXT) STRICT; INSERT INTO t
            // VALUES (1, NULL), (x'01', NULL); BEGIN; UPDATE t SET s = id;`
            // fails on the second row and keeps s = '1' in the first. The
            // triggers recorded the rows that stay, so replicas still agree.
        } else {
            self.expect_same(
                &format!("r{r}: refused `{sql}` {args:?} ({msg})"),
                &before,
                &after,
            );
        }
    }

    fn write(&mut self, r: usize, ops: &[Op], tx: TxMode) {
        let exec = |net: &Net, sql: &str| {
            net.reps[r]
                .c()
                .execute_batch(sql)
                .unwrap_or_else(|e| net.fail(format!("r{r}: {sql}: {e}")));
        };
        match tx {
            TxMode::Auto => ops
                .iter()
                .for_each(|op| self.run_op(r, op, OpCtx::Normal, None)),
            TxMode::Commit | TxMode::Rollback | TxMode::PartialRollback(_) => {
                exec(self, "BEGIN");
                let start = self.snap(r);
                let split = match tx {
                    TxMode::PartialRollback(k) => Some(k.min(ops.len())),
                    _ => None,
                };
                let mut sp: Option<Snap> = None;
                for (i, op) in ops.iter().enumerate() {
                    let open = !self.reps[r].c().is_autocommit();
                    if split == Some(i) && open {
                        exec(self, "SAVEPOINT hostile_sp");
                        sp = Some(self.snap(r));
                    }
                    let start_ref = if open { Some(&start) } else { None };
                    self.run_op(r, op, OpCtx::Normal, start_ref);
                }
                let open = !self.reps[r].c().is_autocommit();
                if !open {
                    self.log.push(format!(
                        "r{r}: the transaction was rolled back by OR ROLLBACK"
                    ));
                    return;
                }
                if let Some(sp) = sp {
                    exec(self, "ROLLBACK TO hostile_sp");
                    let now = self.snap(r);
                    self.expect_same(&format!("r{r}: ROLLBACK TO a savepoint"), &sp, &now);
                    exec(self, "RELEASE hostile_sp");
                }
                match tx {
                    TxMode::Rollback => {
                        exec(self, "ROLLBACK");
                        // The state at BEGIN, read outside a transaction.
                        let now = self.snap(r);
                        self.expect_same(&format!("r{r}: ROLLBACK"), &start, &now);
                    }
                    _ => exec(self, "COMMIT"),
                }
            }
        }
    }

    // -- streams ------------------------------------------------------------

    fn fetch(&mut self, li: usize, limit: usize, resume: bool) {
        let link = &self.links[li];
        let sender = &self.reps[link.from];
        let (sql, args) = match (resume, link.fetched) {
            (true, Some(p)) => (
                format!(
                    "SELECT package, since, cursor FROM {} WHERE cursor > ?1 LIMIT {limit}",
                    link.out
                ),
                vec![Value::Text(p.to_string())],
            ),
            _ => (
                format!(
                    "SELECT package, since, cursor FROM {} LIMIT {limit}",
                    link.out
                ),
                vec![],
            ),
        };
        let got = match try_rows(sender.c(), &sql, &args) {
            Ok(rows) => rows,
            Err(e) => self.fail(format!("link {li}: {sql}: {e}")),
        };
        let wires: Vec<Wire> = got.into_iter().map(wire).collect();
        self.log.push(format!(
            "link {li} (r{} → r{}): fetched {wires:?}",
            link.from, link.to
        ));
        let link = &mut self.links[li];
        if let Some(w) = wires.last() {
            link.fetched = Some(w.cursor);
        }
        link.in_flight.extend(wires);
    }

    /// The tables of a package whose schema differs from the receiver's.
    fn mismatched(&self, to: usize, w: &Wire) -> Vec<String> {
        w.tables
            .iter()
            .filter(
                |(name, hash)| match self.reps[to].tables.iter().find(|t| &t.name == name) {
                    Some(t) => t.hash() != *hash,
                    None => true,
                },
            )
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn deliver_at(&mut self, li: usize, i: usize, fate: Fate) {
        let link = &mut self.links[li];
        let w = if fate == Fate::Duplicate {
            link.in_flight[i].clone()
        } else {
            link.in_flight.remove(i)
        };
        let (from, to) = (link.from, link.to);
        let inb = link.inb.clone();
        if fate == Fate::Drop {
            count(Stat::Dropped);
            self.log
                .push(format!("link {li} (r{from} → r{to}): dropped {w:?}"));
            return;
        }
        let before_pos = self.reps[to].last_applied(&inb);
        let covered = w.cursor <= before_pos;
        let gap = !covered && w.since > before_pos;
        let mismatch = if covered || gap {
            Vec::new()
        } else {
            self.mismatched(to, &w)
        };
        // Tables of the package whose columns have the same names on both
        // sides but other types, defaults or constraints (a staggered change
        // that dropped and added a column of the same name): the schema hash
        // covers names only, so such a package passes the schema check and
        // its merge may be refused by SQLite (NOT NULL, STRICT), atomically;
        // it applies once both sides have the same schema.
        let constraints_differ = w.tables.iter().any(|(name, _)| {
            let find = |r: usize| self.reps[r].tables.iter().find(|t| &t.name == name);
            find(from) != find(to)
        });
        let before = self.snap(to);
        let c = self.reps[to].c();
        let rollback = fate == Fate::RolledBack;
        if rollback {
            c.execute_batch("BEGIN").unwrap();
        }
        let res = c.execute(
            &format!("INSERT INTO {}(package) VALUES (?1)", quote(&inb)),
            [&w.data],
        );
        let what = format!(
            "link {li} (r{from} → r{to}): delivering {w:?} at last_applied {before_pos} ({fate:?})"
        );
        let refused = res.is_err();
        match &res {
            Ok(_) if covered => count(Stat::Covered),
            Ok(_) if !gap && mismatch.is_empty() => count(Stat::Applied),
            Err(e) if gap && message(e).contains("gap") => count(Stat::Gaps),
            // Schemas differ: what the receiver lacks waits in
            // crsql_pending_changes, the rest applies.
            Ok(_) if !gap => count(Stat::SchemaMismatches),
            Err(e) if !gap && constraints_differ && sqlite_refusal(&message(e)) => {
                count(Stat::ConstraintRefusals)
            }
            Ok(_) => self.fail(format!(
                "{what}: accepted (gap {gap}, schema differs for {mismatch:?})"
            )),
            Err(e) => self.fail(format!(
                "{what}: refused: {} (gap {gap}, schema differs for {mismatch:?})",
                message(e)
            )),
        }
        if rollback {
            self.reps[to].c().execute_batch("ROLLBACK").unwrap();
        }
        self.log.push(format!(
            "{what}: {}",
            match &res {
                Ok(_) => "ok".to_string(),
                Err(e) => message(e),
            }
        ));
        if covered || refused || rollback {
            let after = self.snap(to);
            self.expect_same(&what, &before, &after);
            let now = self.reps[to].last_applied(&inb);
            if now != before_pos {
                self.fail(format!("{what}: last_applied moved to {now}"));
            }
        }
        if refused {
            // The transport rewinds: the sender resumes at the receiver's position.
            self.ack(li);
        }
    }

    /// Acknowledge the receiver's `last_applied` on the sender.
    fn ack(&mut self, li: usize) {
        let link = &self.links[li];
        let pos = self.reps[link.to].last_applied(&link.inb);
        self.ack_position(li, pos);
    }

    /// Acknowledge `pos`, a cursor the sender's stream produced. Refused
    /// only in one case, where it must change nothing:
    /// BUG_ACK_AFTER_COMPACTION.
    fn ack_position(&mut self, li: usize, pos: Pos) {
        let link = &self.links[li];
        let sender = &self.reps[link.from];
        let res = sender.c().execute(
            &format!("INSERT INTO {}(last_sent) VALUES (?1)", quote(&link.out)),
            [pos.to_string()],
        );
        if let Err(e) = res {
            // Fixed (BUG_ACK_AFTER_COMPACTION): an acknowledged position
            // stays acknowledgeable.
            self.fail(format!("acknowledging {pos} on link {li}: {}", message(&e)));
        }
        self.log.push(format!("link {li}: acknowledged {pos}"));
        self.links[li].fetched = None;
    }

    /// Sync every link (ack, read everything, apply everything, ack the
    /// last cursor read) until a round moves no package. Schemas must be
    /// equal.
    fn quiesce(&mut self, final_sync: bool) {
        for _round in 0..64 {
            let mut moved = 0;
            for li in 0..self.links.len() {
                self.ack(li);
                let link = &self.links[li];
                let got = rows(
                    self.reps[link.from].c(),
                    &format!("SELECT package, since, cursor FROM {}", link.out),
                    &[],
                );
                let recv = &self.reps[link.to];
                let mut last = None;
                for r in got {
                    let w = wire(r);
                    if let Err(e) = recv.c().execute(
                        &format!("INSERT INTO {}(package) VALUES (?1)", quote(&link.inb)),
                        [&w.data],
                    ) {
                        self.fail(format!(
                            "sync of link {li} (r{} → r{}): applying {w:?} failed: {}",
                            link.from,
                            link.to,
                            message(&e)
                        ));
                    }
                    last = Some(w.cursor);
                    moved += 1;
                    if final_sync {
                        count(Stat::FinalPackages);
                    }
                }
                if let Some(p) = last {
                    self.ack_position(li, p);
                }
            }
            if moved == 0 {
                self.log.push("full sync done".into());
                return;
            }
        }
        self.fail("a full sync did not become quiet within 64 rounds".into());
    }

    fn check_versions(&mut self) {
        for r in 0..REPLICAS {
            if !self.reps[r].c().is_autocommit() {
                continue;
            }
            let v = self.reps[r].db_version();
            if v < self.reps[r].last_db_version {
                self.fail(format!(
                    "r{r}: crsql_db_version() went back from {} to {v}",
                    self.reps[r].last_db_version
                ));
            }
            self.reps[r].last_db_version = v;
        }
    }

    // -- schema changes -----------------------------------------------------

    /// Apply the pending schema changes on the replicas that lack them.
    fn finish_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            for &r in &p.todo {
                self.apply_plan(r, &p.plan, &p.ops[r]);
            }
        }
    }

    fn barrier(&mut self) {
        self.finish_pending();
        self.quiesce(false);
    }

    fn schedule(
        &mut self,
        plan: Plan,
        ops: Vec<(Vec<Op>, Vec<Op>)>,
        stagger: Option<usize>,
        order: usize,
    ) {
        let all: Vec<usize> = (0..REPLICAS).map(|i| (i + order) % REPLICAS).collect();
        // (Also when links split transactions: staged parts carrying a
        // column the receiver dropped meanwhile merge, the changes to that
        // column waiting in crsql_pending_changes.)
        let now = stagger.unwrap_or(REPLICAS);
        if now < REPLICAS {
            count(Stat::Staggered);
        }
        for &r in &all[..now] {
            self.apply_plan(r, &plan, &ops[r]);
        }
        if now < REPLICAS {
            self.pending.push(Pending {
                plan,
                todo: all[now..].to_vec(),
                ops,
            });
        }
    }

    fn alter(&mut self, g: &AlterGen) {
        self.barrier();
        let Some(t) = self.reps[0].table(&g.t) else {
            return;
        };
        let old = self.reps[0].tables[t].clone();
        let mut new = old.clone();
        let mut drops = Vec::new();
        for d in &g.drops {
            if new.cols.is_empty() {
                break;
            }
            let c = new.cols.remove(d.index(new.cols.len()));
            drops.push(c.name);
        }
        let mut adds = Vec::new();
        let mut taken = new.names();
        if g.readd {
            if let (Some(name), Some(gen)) = (drops.first(), g.adds.first()) {
                let mut col = make_col(gen, &BTreeSet::new(), new.strict).unwrap();
                col.name = name.clone();
                taken.insert(lower(name));
                adds.push(col);
            }
        }
        for gen in g.adds.iter().skip(adds.len()) {
            if let Some(col) = make_col(gen, &taken, new.strict) {
                taken.insert(lower(&col.name));
                adds.push(col);
            }
        }
        new.cols.extend(adds.iter().cloned());
        count(Stat::Alters);
        let plan = Plan::Alter {
            t,
            drops,
            adds,
            refuse: g.refuse,
            in_tx: g.in_tx,
            new,
        };
        self.log.push(format!("schema change {plan:?}"));
        self.schedule(plan, g.ops.clone(), g.stagger, g.order);
    }

    fn recreate(&mut self, g: &RecreateGen) {
        self.barrier();
        let Some(t) = self.reps[0].table(&g.t) else {
            return;
        };
        let old = self.reps[0].tables[t].clone();
        let mut new = old.clone();
        new.cols = old
            .cols
            .iter()
            .enumerate()
            // Every column is kept: BUG_RECREATE_WITHOUT_A_COLUMN.
            .filter(|(i, _)| KEEP_ALL_COLUMNS_ON_RECREATE || g.keep & (1 << (i % 8)) != 0)
            .map(|(_, c)| c.clone())
            .collect();
        let mut taken = new.names();
        for gen in &g.adds {
            if let Some(col) = make_col(gen, &taken, new.strict) {
                taken.insert(lower(&col.name));
                new.cols.push(col);
            }
        }
        if g.flip_rowid {
            new.without_rowid = !new.without_rowid;
        }
        count(Stat::Recreates);
        let plan = Plan::Recreate {
            t,
            new,
            wrong_pk_first: g.wrong_pk_first,
            in_tx: g.in_tx,
        };
        self.log.push(format!("schema change {plan:?}"));
        self.schedule(plan, g.ops.clone(), g.stagger, g.order);
    }

    fn sql(&self, r: usize, sql: &str) {
        self.reps[r]
            .c()
            .execute_batch(sql)
            .unwrap_or_else(|e| self.fail(format!("r{r}: {sql}: {}", message(&e))));
        if ["CREATE", "DROP", "ALTER"]
            .iter()
            .any(|k| sql.starts_with(k))
        {
            self.after_schema_change(r);
        }
    }

    /// `SELECT crsql_…(?1)`: the schema functions (they change the schema).
    fn select1(&self, r: usize, sql: &str, arg: &str) -> rusqlite::Result<Value> {
        let res = self.reps[r].c().query_row(sql, [arg], |row| row.get(0));
        self.after_schema_change(r);
        res
    }

    /// With recursive triggers on, the first `UPDATE OR REPLACE` that moves
    /// a row onto an existing key after a schema change fails and rolls
    /// back the caller's transaction: BUG_REPLACE_AFTER_SCHEMA_CHANGE.
    /// Setting the pragma again after the change avoids it.
    fn after_schema_change(&self, _r: usize) {
        // Fixed: nothing to do any more (kept as the hook it was).
    }

    fn apply_plan(&mut self, r: usize, plan: &Plan, ops: &(Vec<Op>, Vec<Op>)) {
        self.log.push(format!("r{r}: applying {plan:?}"));
        match plan {
            Plan::Alter {
                t,
                drops,
                adds,
                refuse,
                in_tx,
                new,
            } => {
                let name = new.name.clone();
                let tq = quote(&name);
                if *in_tx {
                    self.sql(r, "BEGIN");
                }
                if let Err(e) = self.select1(r, "SELECT crsql_begin_alter(?1)", &name) {
                    self.fail(format!("r{r}: crsql_begin_alter({name:?}): {e}"));
                }
                for op in &ops.0 {
                    self.run_op(r, op, OpCtx::Window, None);
                }
                for d in drops {
                    self.sql(r, &format!("ALTER TABLE {tq} DROP COLUMN {}", quote(d)));
                }
                for a in adds {
                    self.sql(
                        r,
                        &format!("ALTER TABLE {tq} ADD COLUMN {}", a.def_sql(new.strict)),
                    );
                }
                self.reps[r].tables[*t] = new.clone();
                for op in &ops.1 {
                    self.run_op(r, op, OpCtx::Window, None);
                }
                if let Some(refusal) = refuse {
                    // A pk column may be named "-1" already.
                    let refusal = match refusal {
                        AlterRefusal::Minus1 if new.names().contains("-1") => {
                            AlterRefusal::UniqueIndex
                        }
                        r => *r,
                    };
                    let (bad, undo, expect) = match refusal {
                        AlterRefusal::Minus1 => (
                            format!("ALTER TABLE {tq} ADD COLUMN \"-1\" TEXT DEFAULT 'x'"),
                            format!("ALTER TABLE {tq} DROP COLUMN \"-1\""),
                            "column named \"-1\"",
                        ),
                        AlterRefusal::UniqueIndex => (
                            format!(
                                "CREATE UNIQUE INDEX \"uniq ' idx\" ON {tq} ({})",
                                new.pk_list()
                            ),
                            "DROP INDEX \"uniq ' idx\"".to_string(),
                            "unique indices",
                        ),
                    };
                    self.sql(r, &bad);
                    let before = self.snap_raw(r, true);
                    match self.select1(r, "SELECT crsql_commit_alter(?1)", &name) {
                        Ok(v) => self.fail(format!(
                            "r{r}: crsql_commit_alter({name:?}) after `{bad}` returned {v:?}"
                        )),
                        Err(e) if message(&e).contains(expect) => {}
                        Err(e) => self.fail(format!(
                            "r{r}: crsql_commit_alter({name:?}) after `{bad}`: unexpected error {}",
                            message(&e)
                        )),
                    }
                    let after = self.snap_raw(r, true);
                    self.expect_same(
                        &format!("r{r}: refused crsql_commit_alter after `{bad}`"),
                        &before,
                        &after,
                    );
                    count(Stat::CommitAlterRefusals);
                    self.sql(r, &undo);
                }
                if let Err(e) = self.select1(r, "SELECT crsql_commit_alter(?1)", &name) {
                    self.fail(format!(
                        "r{r}: crsql_commit_alter({name:?}): {}",
                        message(&e)
                    ));
                }
                if *in_tx {
                    self.sql(r, "COMMIT");
                }
            }
            Plan::Recreate {
                t,
                new,
                wrong_pk_first,
                in_tx,
            } => {
                let name = new.name.clone();
                let tq = quote(&name);
                if *in_tx {
                    self.sql(r, "BEGIN");
                }
                self.sql(r, &format!("DROP TABLE {tq}"));
                if *wrong_pk_first {
                    self.sql(
                        r,
                        &format!("CREATE TABLE {tq} (\"other pk\" TEXT PRIMARY KEY NOT NULL, v)"),
                    );
                    let before = self.snap_raw(r, false);
                    match self.select1(r, "SELECT crsql_as_crr(?1)", &name) {
                        Ok(v) => self.fail(format!(
                            "r{r}: crsql_as_crr({name:?}) with another primary key returned {v:?}"
                        )),
                        Err(e) if message(&e).contains("was dropped while it was a CRR") => {}
                        Err(e) => self.fail(format!(
                            "r{r}: crsql_as_crr({name:?}) with another primary key: unexpected error {}",
                            message(&e)
                        )),
                    }
                    let after = self.snap_raw(r, false);
                    self.expect_same(
                        &format!("r{r}: crsql_as_crr({name:?}) refused for another primary key"),
                        &before,
                        &after,
                    );
                    count(Stat::WrongPkRefusals);
                    self.sql(r, &format!("DROP TABLE {tq}"));
                }
                self.sql(r, &new.create_sql());
                self.reps[r].tables[*t] = new.clone();
                for op in &ops.0 {
                    self.run_op(r, op, OpCtx::Window, None);
                }
                match self.select1(r, "SELECT crsql_as_crr(?1)", &name) {
                    Ok(Value::Text(s)) if s == "OK" => {}
                    other => self.fail(format!(
                        "r{r}: crsql_as_crr({name:?}) of the re-created table: {other:?}"
                    )),
                }
                for op in &ops.1 {
                    self.run_op(r, op, OpCtx::Window, None);
                }
                if *in_tx {
                    self.sql(r, "COMMIT");
                }
            }
        }
    }

    // -- refusals of crsql_as_crr and DDL -----------------------------------

    fn refused_crr(&mut self, r: usize, kind: BadKind, t: &Index, before_op: Option<&Op>) {
        let in_tx = before_op.is_some();
        if in_tx {
            self.sql(r, "BEGIN");
            let start = self.snap(r);
            self.run_op(r, before_op.unwrap(), OpCtx::Normal, Some(&start));
            if self.reps[r].c().is_autocommit() {
                return;
            }
        }
        let bad = "bad ' \" tbl";
        let bq = quote(bad);
        let long = "c".repeat(2049);
        let (create, name, expect): (Option<String>, String, &str) = match kind {
            BadKind::Minus1Col => (
                Some(format!(
                    "CREATE TABLE {bq} (id TEXT PRIMARY KEY NOT NULL, \"-1\" INTEGER, v)"
                )),
                bad.into(),
                "column named \"-1\"",
            ),
            BadKind::CrsqlKeyPk => (
                Some(format!(
                    "CREATE TABLE {bq} (\"__CRSQL_Key\" TEXT PRIMARY KEY NOT NULL, v)"
                )),
                bad.into(),
                "__crsql_key",
            ),
            BadKind::UniqueCol => (
                Some(format!(
                    "CREATE TABLE {bq} (id TEXT PRIMARY KEY NOT NULL, v UNIQUE)"
                )),
                bad.into(),
                "unique indices",
            ),
            BadKind::NullablePk => (
                Some(format!("CREATE TABLE {bq} (id TEXT PRIMARY KEY, v)")),
                bad.into(),
                "no primary key or primary key is nullable",
            ),
            BadKind::NullableCompositePk => (
                Some(format!(
                    "CREATE TABLE {bq} (a TEXT NOT NULL, b TEXT, v, PRIMARY KEY (a, b))"
                )),
                bad.into(),
                "composite primary key part of which is nullable",
            ),
            BadKind::ForeignKey => (
                Some(format!(
                    "CREATE TABLE {bq} (id TEXT PRIMARY KEY NOT NULL, v REFERENCES {}(x))",
                    quote(&self.reps[r].tables[0].name)
                )),
                bad.into(),
                "foreign key",
            ),
            BadKind::NotNullNoDefault => (
                Some(format!(
                    "CREATE TABLE {bq} (id TEXT PRIMARY KEY NOT NULL, v NOT NULL)"
                )),
                bad.into(),
                "NOT NULL column without a DEFAULT",
            ),
            BadKind::Autoincrement => (
                Some(format!(
                    "CREATE TABLE {bq} (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, v)"
                )),
                bad.into(),
                "auto-increment",
            ),
            BadKind::LongColName => (
                Some(format!(
                    "CREATE TABLE {bq} (id TEXT PRIMARY KEY NOT NULL, \"{long}\")"
                )),
                bad.into(),
                "2049 bytes",
            ),
            BadKind::NoPk => (
                Some(format!("CREATE TABLE {bq} (a, b)")),
                bad.into(),
                "no primary key",
            ),
            BadKind::Respell => {
                let i = t.index(self.reps[r].tables.len());
                (
                    None,
                    flip_case(&self.reps[r].tables[i].name),
                    "is not a CRR after creating its clock tables",
                )
            }
        };
        if let Some(sql) = &create {
            self.sql(r, sql);
        }
        let before = self.snap_raw(r, false);
        let res = self.select1(r, "SELECT crsql_as_crr(?1)", &name);
        let respelled_same = create.is_none() && self.reps[r].tables.iter().any(|t| t.name == name);
        match res {
            Ok(Value::Text(s)) if respelled_same && s == "OK" => {}
            Ok(v) => self.fail(format!(
                "r{r}: crsql_as_crr({name:?}) ({kind:?}) returned {v:?}"
            )),
            Err(e) if message(&e).contains(expect) => count(Stat::CrrRefusals),
            Err(e) => self.fail(format!(
                "r{r}: crsql_as_crr({name:?}) ({kind:?}): unexpected error {}",
                message(&e)
            )),
        }
        let after = self.snap_raw(r, false);
        self.expect_same(
            &format!("r{r}: refused crsql_as_crr({kind:?})"),
            &before,
            &after,
        );
        self.log
            .push(format!("r{r}: crsql_as_crr refused ({kind:?})"));
        if create.is_some() {
            self.sql(r, &format!("DROP TABLE {bq}"));
        }
        if in_tx {
            self.sql(r, "COMMIT");
        }
    }

    fn refused_drop_column(&mut self, r: usize, t: &Index, col: &Index) {
        let tab = &self.reps[r].tables[t.index(self.reps[r].tables.len())];
        if tab.cols.is_empty() {
            return;
        }
        let c = &tab.cols[col.index(tab.cols.len())];
        // The triggers name every column as NEW."c", which SQLite resolves
        // to the rowid once a column named rowid, oid or _rowid_ is gone: that
        // DROP COLUMN is accepted (misuse, which nothing can refuse).
        if ["rowid", "oid", "_rowid_"].contains(&lower(&c.name).as_str()) {
            return;
        }
        let sql = format!(
            "ALTER TABLE {} DROP COLUMN {}",
            quote(&tab.name),
            quote(&c.name)
        );
        let before = self.snap_raw(r, false);
        match self.reps[r].c().execute_batch(&sql) {
            Ok(()) => self.fail(format!(
                "r{r}: `{sql}` outside an alter window was accepted"
            )),
            Err(e) => {
                self.log
                    .push(format!("r{r}: {sql}: refused: {}", message(&e)));
            }
        }
        let after = self.snap_raw(r, false);
        self.expect_same(&format!("r{r}: refused `{sql}`"), &before, &after);
        count(Stat::DropColumnRefusals);
    }

    // -- the history --------------------------------------------------------

    fn step(&mut self, step: &Step) {
        match step {
            Step::Write { r, ops, tx } => {
                let r = r.index(REPLICAS);
                self.write(r, ops, *tx);
            }
            Step::Fetch {
                link,
                limit,
                resume,
            } => self.fetch(link.index(self.links.len()), *limit, *resume),
            Step::Deliver { link, pick, fate } => {
                let busy: Vec<usize> = (0..self.links.len())
                    .filter(|&l| !self.links[l].in_flight.is_empty())
                    .collect();
                if busy.is_empty() {
                    return;
                }
                let li = busy[link.index(busy.len())];
                let i = pick.map_or(0, |p| p.index(self.links[li].in_flight.len()));
                self.deliver_at(li, i, *fate);
            }
            Step::Pump { link, limit } => {
                let li = link.index(self.links.len());
                let pending = self.links[li].in_flight.len();
                self.fetch(li, *limit, false);
                while self.links[li].in_flight.len() > pending {
                    self.deliver_at(li, pending, Fate::Apply);
                }
                self.ack(li);
            }
            Step::Ack { link } => self.ack(link.index(self.links.len())),
            Step::Recursive { r, on } => {
                let r = r.index(REPLICAS);
                self.reps[r].recursive = *on;
                self.sql(
                    r,
                    &format!(
                        "PRAGMA recursive_triggers = {}",
                        if *on { "ON" } else { "OFF" }
                    ),
                );
                self.log.push(format!("r{r}: recursive_triggers {on}"));
            }
            Step::Restart { r } => {
                let r = r.index(REPLICAS);
                let rep = &mut self.reps[r];
                close(rep.conn.take().unwrap());
                rep.conn = Some(open_replica(&rep.path));
                rep.recursive = false;
                self.log.push(format!("r{r}: restarted"));
            }
            Step::Barrier => self.barrier(),
            Step::Alter(g) => self.alter(g),
            Step::Recreate(g) => self.recreate(g),
            Step::RefusedCrr { r, kind, t, before } => {
                self.refused_crr(r.index(REPLICAS), *kind, t, before.as_ref())
            }
            Step::RefusedDropColumn { r, t, col } => {
                self.refused_drop_column(r.index(REPLICAS), t, col)
            }
        }
        self.check_versions();
    }

    // -- the end ------------------------------------------------------------

    fn check_converged(&self) {
        let schema = |r: usize| -> Vec<Vec<Exact>> {
            self.reps[r]
                .tables
                .iter()
                .flat_map(|t| {
                    exact(rows(
                        self.reps[r].c(),
                        "SELECT ?1, name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1)",
                        &[Value::Text(t.name.clone())],
                    ))
                })
                .collect()
        };
        let norm = |rows: Vec<Vec<Exact>>| -> Vec<Vec<Exact>> {
            let mut rows: Vec<Vec<Exact>> = rows
                .into_iter()
                .map(|r| r.into_iter().map(|v| self.norm(v)).collect())
                .collect();
            rows.sort();
            rows
        };
        let s0 = schema(0);
        let state0 = crdt_state(self.reps[0].c(), self.mev);
        for r in 0..REPLICAS {
            if self.reps[r].tables != self.reps[0].tables {
                self.fail(format!("r{r}: the schema model differs from r0's"));
            }
            let s = schema(r);
            if s != s0 {
                self.fail(format!("schemas of r0 and r{r} differ:\n{s0:?}\n{s:?}"));
            }
            for t in &self.reps[0].tables {
                let a = norm(dump_table(self.reps[0].c(), &t.name).unwrap());
                let b = norm(dump_table(self.reps[r].c(), &t.name).unwrap());
                if a != b {
                    self.fail(format!(
                        "table {:?} differs between r0 and r{r}:\nr0: {a:?}\nr{r}: {b:?}\nr0 changes: {:?}\nr{r} changes: {:?}",
                        t.name,
                        exact(changes(self.reps[0].c())),
                        exact(changes(self.reps[r].c()))
                    ));
                }
            }
            let state = crdt_state(self.reps[r].c(), self.mev);
            if state != state0 {
                let only0: Vec<_> = state0.difference(&state).collect();
                let only_r: Vec<_> = state.difference(&state0).collect();
                self.fail(format!(
                    "crsql_changes of r0 and r{r} differ:\nonly in r0: {only0:?}\nonly in r{r}: {only_r:?}"
                ));
            }
            // Positions are unique.
            let mut pos: Vec<(i64, i64)> = rows(
                self.reps[r].c(),
                "SELECT db_version, seq FROM crsql_changes",
                &[],
            )
            .into_iter()
            .map(|row| match (&row[0], &row[1]) {
                (Value::Integer(a), Value::Integer(b)) => (*a, *b),
                other => panic!("position {other:?}"),
            })
            .collect();
            let n = pos.len();
            pos.sort();
            pos.dedup();
            if pos.len() != n {
                self.fail(format!("r{r}: duplicate (db_version, seq) positions"));
            }
        }
    }

    /// -0.0 and 0.0 compare equal, so without merge-equal-values a merge
    /// between them is a no-op and replicas may keep either (by design,
    /// convergence.rs); with merge-equal-values the site id decides.
    fn norm(&self, v: Exact) -> Exact {
        norm_zero(v, self.mev)
    }
}

fn norm_zero(v: Exact, mev: bool) -> Exact {
    match v {
        Exact::Real(bits) if !mev && f64::from_bits(bits) == 0.0 => Exact::Real(0f64.to_bits()),
        v => v,
    }
}

/// What `crsql_changes` says about the CRDT state, compared across
/// replicas: per row, its causal length; per cell, its col_version, value
/// and (with merge-equal-values, where ties have one winner) its site.
/// Left out: local db_version and seq; whether a live row has a sentinel
/// clock (a sentinel with the causal length a row already has is not
/// merged, so one replica may record cl 1 in a sentinel and another only in
/// its cells); the site of a sentinel (two replicas that delete or re-insert
/// the same row concurrently each record their own, and an equal causal
/// length is never merged); the site of a cell without merge-equal-values
/// (equal values are not merged).
fn crdt_state(c: &Connection, mev: bool) -> BTreeSet<Vec<Exact>> {
    let mut out = BTreeSet::new();
    for row in changes(c) {
        let [table, pk, cid, val, col_version, _db_version, site_id, cl, _seq]: [Value; 9] =
            row.try_into().unwrap();
        let cid_is_sentinel = matches!(&cid, Value::Text(s) if s == "-1");
        out.insert(vec![
            Exact::Text("row".into()),
            table.clone().into(),
            pk.clone().into(),
            cl.into(),
        ]);
        if !cid_is_sentinel {
            out.insert(vec![
                Exact::Text("cell".into()),
                table.into(),
                pk.into(),
                cid.into(),
                col_version.into(),
                norm_zero(val.into(), mev),
                if mev { site_id.into() } else { Exact::Null },
            ]);
        }
    }
    out
}

fn wire(r: Vec<Value>) -> Wire {
    let text = |v: &Value| match v {
        Value::Text(s) => Pos::parse(s),
        other => panic!("a position column is not text: {other:?}"),
    };
    let (since, cursor) = (text(&r[1]), text(&r[2]));
    let bytes = match &r[0] {
        Value::Blob(b) => b.clone(),
        Value::Text(t) => t.clone().into_bytes(),
        other => panic!("package is neither blob nor text: {other:?}"),
    };
    let pkg = Package::decode(&bytes)
        .unwrap_or_else(|e| panic!("a produced package does not decode: {e}"));
    Wire {
        data: r[0].clone(),
        since,
        cursor,
        tables: pkg
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.schema_hash))
            .collect(),
    }
}

fn run(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(dir.path(), case);
    for step in &case.steps {
        net.log.push(format!("step {step:?}"));
        net.step(step);
    }
    net.finish_pending();
    net.quiesce(true);
    net.check_converged();
    for rep in &mut net.reps {
        close(rep.conn.take().unwrap());
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run_all(default_cases: u32, max_steps: usize) {
    let config = Config {
        cases: cases(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 2000,
        ..Config::default()
    };
    // A seed of our own (printed), so that any failure can be replayed.
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let start = Instant::now();
    let result = runner.run(&case(max_steps), |c| {
        run(&c);
        Ok(())
    });
    let stats: Vec<String> = STATS
        .iter()
        .map(|(s, name)| format!("{} {name}", COUNTS[*s as usize].load(Ordering::Relaxed)))
        .collect();
    eprintln!(
        "hostile_schema: {} cases (HOSTILE_SEED={seed}) in {:?}: {}",
        config.cases,
        start.elapsed(),
        stats.join(", ")
    );
    if let Err(e) = result {
        panic!(
            "{e}\nreplay with HOSTILE_SEED={seed} PROPTEST_CASES={}",
            config.cases
        );
    }
}

#[test]
fn hostile_schemas_converge_and_refused_statements_change_nothing() {
    run_all(150, 80);
}

#[test]
#[ignore = "long; run by make soak"]
fn soak_hostile_schemas_converge_over_long_histories() {
    run_all(2000, 150);
}
