//! Typed handles on `crsql_OutboundStream` and `crsql_InboundStream` tables.

use rusqlite::types::ValueRef;
use rusqlite::{ffi, params, Connection, OptionalExtension};

use crate::{hex, Cursor, SiteId};

/// How an outbound stream encodes its packages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Compact binary packages (BLOB).
    #[default]
    Binary,
    /// JSON text packages, for transports that cannot carry binary.
    Json,
}

/// Arguments of `CREATE VIRTUAL TABLE … USING crsql_OutboundStream(…)`.
/// Every field left at its default is left out, so the extension's default
/// applies (see docs/sql.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundOptions {
    /// Start position when the stream is created (default `[0,0]`).
    pub since: Option<Cursor>,
    /// Origin sites whose changes are not sent (typically the peer's own).
    pub exclude_sites: Vec<SiteId>,
    /// Only changes made at this site.
    pub local_only: bool,
    /// Only these CRRs (empty: every CRR, including later ones).
    pub tables: Vec<String>,
    /// Changes per package.
    pub max_changes: Option<u32>,
    /// Encoded bytes per package.
    pub max_bytes: Option<u64>,
    pub encoding: Encoding,
}

impl OutboundOptions {
    pub fn new() -> OutboundOptions {
        OutboundOptions::default()
    }
    pub fn since(mut self, since: Cursor) -> Self {
        self.since = Some(since);
        self
    }
    pub fn exclude_site(mut self, site: SiteId) -> Self {
        self.exclude_sites.push(site);
        self
    }
    pub fn local_only(mut self, yes: bool) -> Self {
        self.local_only = yes;
        self
    }
    pub fn tables<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.tables = tables.into_iter().map(Into::into).collect();
        self
    }
    pub fn max_changes(mut self, n: u32) -> Self {
        self.max_changes = Some(n);
        self
    }
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(c) = self.since {
            args.push(format!("since = '{c}'"));
        }
        if !self.exclude_sites.is_empty() {
            let sites: Vec<String> = self.exclude_sites.iter().map(hex).collect();
            args.push(format!("exclude_sites = '{}'", sites.join(",")));
        }
        if self.local_only {
            args.push("local_only = 1".into());
        }
        if !self.tables.is_empty() {
            args.push(format!("tables = {}", quote(&table_list(&self.tables))));
        }
        if let Some(n) = self.max_changes {
            args.push(format!("max_changes = {n}"));
        }
        if let Some(n) = self.max_bytes {
            args.push(format!("max_bytes = {n}"));
        }
        if self.encoding == Encoding::Json {
            args.push("encoding = 'json'".into());
        }
        args
    }
}

/// Arguments of `CREATE VIRTUAL TABLE … USING crsql_InboundStream(…)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboundOptions {
    /// Expected sender (default: pinned by the first package).
    pub from: Option<SiteId>,
    /// The first package must start here (default `[0,0]`).
    pub since: Option<Cursor>,
    /// Allow-list of tables; a package touching others is rejected.
    pub tables: Vec<String>,
}

impl InboundOptions {
    pub fn new() -> InboundOptions {
        InboundOptions::default()
    }
    pub fn from(mut self, site: SiteId) -> Self {
        self.from = Some(site);
        self
    }
    pub fn since(mut self, since: Cursor) -> Self {
        self.since = Some(since);
        self
    }
    pub fn tables<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.tables = tables.into_iter().map(Into::into).collect();
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(site) = &self.from {
            args.push(format!("from = '{}'", hex(site)));
        }
        if let Some(c) = self.since {
            args.push(format!("since = '{c}'"));
        }
        if !self.tables.is_empty() {
            args.push(format!("tables = {}", quote(&table_list(&self.tables))));
        }
        args
    }
}

/// One package read from an outbound stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The package itself, to move to the peer as is (JSON text as UTF-8
    /// bytes with `Encoding::Json`).
    pub bytes: Vec<u8>,
    /// Position of the last change it covers (inclusive): acknowledge this.
    pub cursor: Cursor,
    /// Position it starts after (exclusive): the previous package's cursor.
    pub since: Cursor,
    /// Number of changes in it (0 for a heartbeat over filtered changes).
    pub changes: i64,
}

/// An outbound stream of a connection (a `crsql_OutboundStream` table).
#[derive(Debug)]
pub struct Outbound<'c> {
    conn: &'c Connection,
    name: String,
}

impl<'c> Outbound<'c> {
    /// `CREATE VIRTUAL TABLE <name> USING crsql_OutboundStream(<options>)`.
    pub fn create(
        conn: &'c Connection,
        name: &str,
        options: &OutboundOptions,
    ) -> rusqlite::Result<Outbound<'c>> {
        check_tables(&options.tables)?;
        create_table(conn, name, "crsql_OutboundStream", &options.args())?;
        Ok(Outbound {
            conn,
            name: name.to_string(),
        })
    }

    /// An existing outbound stream; an error if there is none of that name.
    pub fn open(conn: &'c Connection, name: &str) -> rusqlite::Result<Outbound<'c>> {
        check_exists(conn, name, "outbound")?;
        Ok(Outbound {
            conn,
            name: name.to_string(),
        })
    }

    /// [`Outbound::open`] if the stream exists, else [`Outbound::create`].
    pub fn open_or_create(
        conn: &'c Connection,
        name: &str,
        options: &OutboundOptions,
    ) -> rusqlite::Result<Outbound<'c>> {
        if stream_direction(conn, name)?.is_some() {
            Outbound::open(conn, name)
        } else {
            Outbound::create(conn, name, options)
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn connection(&self) -> &'c Connection {
        self.conn
    }

    /// The packages after `last_sent`, in order, built lazily: each `next`
    /// builds one package (`LIMIT 1`) starting after the previous one's
    /// cursor. Stops at the first error (which it yields).
    pub fn packages(&self) -> Packages<'_> {
        Packages {
            conn: self.conn,
            name: &self.name,
            after: None,
            done: false,
        }
    }

    /// The packages after `after` instead of after `last_sent`.
    pub fn packages_after(&self, after: Cursor) -> Packages<'_> {
        Packages {
            after: Some(after),
            ..self.packages()
        }
    }

    /// The next package after `last_sent`, if any.
    pub fn next_package(&self) -> rusqlite::Result<Option<Package>> {
        self.packages().next().transpose()
    }

    /// Acknowledge everything up to `cursor` (what the peer applied): moves
    /// `last_sent`, durably. Idempotent; an older cursor changes nothing.
    pub fn ack(&self, cursor: Cursor) -> rusqlite::Result<()> {
        let sql = format!("INSERT INTO {}(last_sent) VALUES (?1)", ident(&self.name));
        self.conn.prepare_cached(&sql)?.execute([cursor])?;
        Ok(())
    }

    /// The acknowledged position.
    pub fn last_sent(&self) -> rusqlite::Result<Cursor> {
        self.conn
            .prepare_cached("SELECT last_sent FROM crsql_streams WHERE name = ?1")?
            .query_row([&self.name], |r| r.get(0))
    }

    /// The changes after `last_sent` that this stream carries (its filters
    /// applied): `lag_changes` of `crsql_streams`, exact.
    pub fn lag_changes(&self) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached("SELECT lag_changes FROM crsql_streams WHERE name = ?1")?
            .query_row([&self.name], |r| r.get::<_, Option<i64>>(0))
            .map(|n| n.unwrap_or(0).max(0) as u64)
    }

    /// The largest cursor this connection has read from the stream, if any.
    pub fn last_retrieved(&self) -> rusqlite::Result<Option<Cursor>> {
        self.conn
            .prepare_cached("SELECT last_retrieved FROM crsql_streams WHERE name = ?1")?
            .query_row([&self.name], |r| r.get(0))
    }

    /// `DROP TABLE` the stream, deleting its stored state.
    /// `DROP TABLE` the stream, deleting its stored state; an error, dropping
    /// nothing, if the table of that name is no longer an outbound stream.
    pub fn drop_stream(self) -> rusqlite::Result<()> {
        drop_table(self.conn, &self.name, "outbound")
    }
}

/// Iterator over an outbound stream's pending packages; see
/// [`Outbound::packages`].
#[derive(Debug)]
pub struct Packages<'a> {
    conn: &'a Connection,
    name: &'a str,
    after: Option<Cursor>,
    done: bool,
}

impl Packages<'_> {
    fn fetch(&self) -> rusqlite::Result<Option<Package>> {
        let cols = "package, cursor, since, changes";
        let table = ident(self.name);
        let row = |r: &rusqlite::Row<'_>| {
            let bytes = match r.get_ref(0)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                other => {
                    return Err(rusqlite::Error::InvalidColumnType(
                        0,
                        "package".into(),
                        other.data_type(),
                    ))
                }
            };
            Ok(Package {
                bytes,
                cursor: r.get(1)?,
                since: r.get(2)?,
                changes: r.get(3)?,
            })
        };
        match self.after {
            None => self
                .conn
                .prepare_cached(&format!("SELECT {cols} FROM {table} LIMIT 1"))?
                .query_row([], row),
            Some(after) => self
                .conn
                .prepare_cached(&format!(
                    "SELECT {cols} FROM {table} WHERE cursor > ?1 LIMIT 1"
                ))?
                .query_row([after], row),
        }
        .optional()
    }
}

impl Iterator for Packages<'_> {
    type Item = rusqlite::Result<Package>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.fetch() {
            Ok(Some(p)) => {
                self.after = Some(p.cursor);
                Some(Ok(p))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Packages<'_> {}

/// An inbound stream of a connection (a `crsql_InboundStream` table).
#[derive(Debug)]
pub struct Inbound<'c> {
    conn: &'c Connection,
    name: String,
}

impl<'c> Inbound<'c> {
    /// `CREATE VIRTUAL TABLE <name> USING crsql_InboundStream(<options>)`.
    pub fn create(
        conn: &'c Connection,
        name: &str,
        options: &InboundOptions,
    ) -> rusqlite::Result<Inbound<'c>> {
        check_tables(&options.tables)?;
        create_table(conn, name, "crsql_InboundStream", &options.args())?;
        Ok(Inbound {
            conn,
            name: name.to_string(),
        })
    }

    /// An existing inbound stream; an error if there is none of that name.
    pub fn open(conn: &'c Connection, name: &str) -> rusqlite::Result<Inbound<'c>> {
        check_exists(conn, name, "inbound")?;
        Ok(Inbound {
            conn,
            name: name.to_string(),
        })
    }

    /// [`Inbound::open`] if the stream exists, else [`Inbound::create`].
    pub fn open_or_create(
        conn: &'c Connection,
        name: &str,
        options: &InboundOptions,
    ) -> rusqlite::Result<Inbound<'c>> {
        if stream_direction(conn, name)?.is_some() {
            Inbound::open(conn, name)
        } else {
            Inbound::create(conn, name, options)
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn connection(&self) -> &'c Connection {
        self.conn
    }

    /// Apply one package (binary or JSON), atomically. A duplicate is a
    /// no-op; a gap, a corrupted or foreign package is an
    /// `Err(rusqlite::Error::SqliteFailure(_, Some(message)))` with the
    /// extension's message, and nothing changes.
    pub fn apply(&self, package: &[u8]) -> rusqlite::Result<()> {
        let sql = format!("INSERT INTO {}(package) VALUES (?1)", ident(&self.name));
        self.conn.prepare_cached(&sql)?.execute(params![package])?;
        Ok(())
    }

    /// Where to resume: the cursor of the last package applied (the
    /// `since` option before the first one). Send this back as the ack.
    pub fn last_applied(&self) -> rusqlite::Result<Cursor> {
        let sql = format!("SELECT last_applied FROM {}", ident(&self.name));
        self.conn.prepare_cached(&sql)?.query_row([], |r| r.get(0))
    }

    /// The sender this stream follows (`None` until the first package pins it).
    pub fn sender(&self) -> rusqlite::Result<Option<SiteId>> {
        let sql = format!("SELECT sender FROM {}", ident(&self.name));
        let hex: Option<String> = self
            .conn
            .prepare_cached(&sql)?
            .query_row([], |r| r.get(0))?;
        hex.map(|h| {
            unhex(&h).ok_or_else(|| {
                rusqlite::Error::SqliteFailure(
                    ffi::Error::new(ffi::SQLITE_MISMATCH),
                    Some(format!(
                        "crsql_stream: {}: sender {h:?} is not a site id",
                        self.name
                    )),
                )
            })
        })
        .transpose()
    }

    /// `DROP TABLE` the stream, deleting its stored state and staged parts.
    /// `DROP TABLE` the stream, deleting its stored state and staged parts;
    /// an error, dropping nothing, if the table of that name is no longer an
    /// inbound stream.
    pub fn drop_stream(self) -> rusqlite::Result<()> {
        drop_table(self.conn, &self.name, "inbound")
    }
}

fn create_table(
    conn: &Connection,
    name: &str,
    module: &str,
    args: &[String],
) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {} USING {module}({})",
        ident(name),
        args.join(", ")
    ))
}

fn drop_table(conn: &Connection, name: &str, direction: &str) -> rusqlite::Result<()> {
    check_exists(conn, name, direction)?;
    conn.execute_batch(&format!("DROP TABLE {}", ident(name)))
}

/// The `tables` argument: each name double-quoted (`""` inside), so names
/// with commas or surrounding white space pass through unchanged.
fn table_list(tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An empty name can name no table.
fn check_tables(tables: &[String]) -> rusqlite::Result<()> {
    match tables.iter().find(|t| t.is_empty()) {
        None => Ok(()),
        Some(_) => Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_MISUSE),
            Some("crsql_stream: tables: an empty name cannot be listed".to_string()),
        )),
    }
}

fn unhex(text: &str) -> Option<SiteId> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `Some("outbound" | "inbound")` for a stream of that name.
fn stream_direction(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT direction FROM crsql_streams WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

fn check_exists(conn: &Connection, name: &str, direction: &str) -> rusqlite::Result<()> {
    match stream_direction(conn, name)? {
        Some(d) if d == direction => Ok(()),
        found => Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_ERROR),
            Some(match found {
                Some(d) => format!("crsql_stream: {name} is an {d} stream, not an {direction} one"),
                None => format!("crsql_stream: no {direction} stream named {name}"),
            }),
        )),
    }
}

/// An SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
