//! Pieces shared by the generated-history tests (convergence.rs,
//! stream_convergence.rs, stream_crash.rs): a CRR described by name, pk
//! columns and value columns with the SQL it needs, stream positions, and
//! values compared exactly (storage class and real bits).

use std::fmt;

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::Layout;

pub struct TableDef {
    pub name: &'static str,
    pub pks: &'static [&'static str],
    pub cols: &'static [&'static str],
}

pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl TableDef {
    pub fn pk_list(&self) -> String {
        self.pks
            .iter()
            .map(|p| quote(p))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn pk_where(&self, first_param: usize) -> String {
        self.pks
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{} = ?{}", quote(p), first_param + i))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    pub fn insert_sql(&self, mode: InsertMode) -> String {
        let all: Vec<String> = self.pks.iter().chain(self.cols).map(|c| quote(c)).collect();
        let qs: Vec<String> = (1..=all.len()).map(|i| format!("?{i}")).collect();
        let verb = match mode {
            InsertMode::Plain | InsertMode::Upsert => "INSERT",
            InsertMode::OrIgnore => "INSERT OR IGNORE",
            InsertMode::OrReplace => "INSERT OR REPLACE",
        };
        let mut sql = format!(
            "{verb} INTO {} ({}) VALUES ({})",
            quote(self.name),
            all.join(", "),
            qs.join(", ")
        );
        if mode == InsertMode::Upsert {
            if self.cols.is_empty() {
                sql += &format!(" ON CONFLICT ({}) DO NOTHING", self.pk_list());
            } else {
                let set: Vec<String> = self
                    .cols
                    .iter()
                    .map(|c| format!("{0} = excluded.{0}", quote(c)))
                    .collect();
                sql += &format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    self.pk_list(),
                    set.join(", ")
                );
            }
        }
        sql
    }

    pub fn select_all(&self) -> String {
        format!(
            "SELECT * FROM {} ORDER BY {}",
            quote(self.name),
            self.pk_list()
        )
    }

    pub fn select_keys(&self) -> String {
        format!(
            "SELECT {0} FROM {1} ORDER BY {0}",
            self.pk_list(),
            quote(self.name)
        )
    }

    /// Keys the replica has seen (its pks lookaside table, or the row clocks
    /// of a compact table) but no longer has.
    pub fn select_dead_keys(&self, layout: Layout) -> String {
        let order: Vec<String> = (1..=self.pks.len()).map(|i| i.to_string()).collect();
        let keys = match layout {
            Layout::Crsqlite => "__crsql_pks",
            Layout::Compact => "__crsql_rows",
        };
        format!(
            "SELECT {0} FROM {1} EXCEPT SELECT {0} FROM {2} ORDER BY {3}",
            self.pk_list(),
            quote(&format!("{}{keys}", self.name)),
            quote(self.name),
            order.join(", ")
        )
    }

    pub fn exists_sql(&self) -> String {
        format!(
            "SELECT count(*) FROM {} WHERE {}",
            quote(self.name),
            self.pk_where(1)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertMode {
    /// Plain INSERT, skipped when the row exists (it would fail).
    Plain,
    OrIgnore,
    OrReplace,
    /// INSERT … ON CONFLICT DO UPDATE SET every column.
    Upsert,
}

/// A stream position `[db_version, seq]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos(pub i64, pub i64);

impl Pos {
    pub const ZERO: Pos = Pos(0, 0);

    pub fn parse(s: &str) -> Pos {
        let (dv, seq): (i64, i64) =
            serde_json::from_str(s).unwrap_or_else(|e| panic!("bad position {s:?}: {e}"));
        Pos(dv, seq)
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{},{}]", self.0, self.1)
    }
}

/// A value compared exactly: reals by their bits, and the storage class always.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exact {
    Null,
    Integer(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<Value> for Exact {
    fn from(v: Value) -> Exact {
        match v {
            Value::Null => Exact::Null,
            Value::Integer(i) => Exact::Integer(i),
            Value::Real(r) => Exact::Real(r.to_bits()),
            Value::Text(s) => Exact::Text(s),
            Value::Blob(b) => Exact::Blob(b),
        }
    }
}

impl fmt::Debug for Exact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exact::Null => write!(f, "NULL"),
            Exact::Integer(i) => write!(f, "{i}"),
            Exact::Real(bits) => write!(f, "{:?}", f64::from_bits(*bits)),
            Exact::Text(s) => write!(f, "{s:?}"),
            Exact::Blob(b) => {
                write!(f, "x'")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))?;
                write!(f, "'")
            }
        }
    }
}

/// How generated-history tests link their peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Star,
    Line,
    Mesh,
}

/// Directed links `(sender, receiver)` of a topology.
pub fn links_of(n: usize, topology: Topology) -> Vec<(usize, usize)> {
    let mut undirected = Vec::new();
    match topology {
        Topology::Star => (1..n).for_each(|i| undirected.push((0, i))),
        Topology::Line => (1..n).for_each(|i| undirected.push((i - 1, i))),
        Topology::Mesh => {
            for i in 0..n {
                for j in i + 1..n {
                    undirected.push((i, j));
                }
            }
        }
    }
    undirected
        .into_iter()
        .flat_map(|(a, b)| [(a, b), (b, a)])
        .collect()
}

/// `crsql_changes` of `tables` without the local positions, in a form that
/// converged peers share whatever their layouts: every cell's value,
/// version, origin (with `origin`) and row causal length, and every row's
/// causal length. Peers that wrote equal values at equal versions
/// concurrently keep each their own origin (the merge of an equal value is
/// a no-op, cr-sqlite's rule), so the origin is only comparable between
/// peers with one writer.
/// Sentinels count through the causal length only: a primary-key change
/// writes a sentinel for the new key that a receiver creating the row from
/// its cells does not keep. A compacted delete (`crsql_compact`) counts
/// with its record's causal length, as the merge rules use it.
pub fn changes_without_positions(
    conn: &Connection,
    tables: &[&str],
    origin: bool,
) -> Vec<Vec<Exact>> {
    let compacted: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'crsql_tombstones'",
            [],
            |r| r.get(0),
        )
        .expect("sqlite_master");
    let records = if compacted {
        "UNION ALL SELECT tbl, pk, cl FROM crsql_tombstones"
    } else {
        ""
    };
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "''")))
        .collect();
    let names = names.join(", ");
    let site = if origin { "site_id" } else { "NULL" };
    let sql = format!(
        "SELECT \"table\", pk, cid, val, col_version, {site}, cl FROM crsql_changes \
         WHERE \"table\" IN ({names}) AND cid != '-1' \
         UNION ALL \
         SELECT t, pk, NULL, NULL, NULL, NULL, max(cl) FROM \
         (SELECT \"table\" AS t, pk, cl FROM crsql_changes {records}) \
         WHERE t IN ({names}) GROUP BY 1, 2 \
         ORDER BY 1, 2, 3"
    );
    let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = stmt
        .query_map([], |r| {
            (0..7)
                .map(|i| r.get::<_, Value>(i).map(Exact::from))
                .collect()
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<Vec<Exact>>>>())
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows
}
