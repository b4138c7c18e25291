//! Peers: the sites this database syncs with, as its streams know them
//! (`crsql_peers`), their expiry, and forgetting one (`crsql_forget_peer`).
//!
//! A stream knows its peer when it is inbound (the sender of the packages it
//! applied, or its `from`) or outbound with a `peer` argument or exactly one
//! `exclude_sites` site. `last_seen` is the last acknowledgement or applied
//! package of any of the peer's streams.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::Arc;

use crsql_stream_core::Position;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::IndexInfo;
use rusqlite::{Connection, OptionalExtension};

use crate::err;
use crate::error::Result;
use crate::sqlite::vtab::{Table, TableCursor};
use crate::state::Ext;

const NAME: &str = "crsql_peers";

/// `crsql_config_set` name of the expiry, and its default (30 days).
pub const PEER_EXPIRY: &str = "peer-expiry-seconds";
pub const DEFAULT_PEER_EXPIRY: i64 = 30 * 24 * 3600;

/// The stored peer expiry in seconds.
pub fn expiry_seconds(conn: &Connection) -> Result<i64> {
    let v: Option<i64> = conn
        .prepare_cached(
            "SELECT value FROM crsql_master WHERE key = 'config.peer-expiry-seconds' \
             AND typeof(value) = 'integer'",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.unwrap_or(DEFAULT_PEER_EXPIRY))
}

/// One stream, as a member of its peer's group.
/// The table's columns.
const SCHEMA: &str = "CREATE TABLE x(site_id BLOB, last_acked TEXT, last_applied TEXT, last_seen INTEGER, expired INTEGER)";

#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub outbound: bool,
    /// `last_sent` (outbound) or `last_applied` (inbound).
    pub position: Position,
}

/// The streams of one peer, or of one stream whose peer is unknown.
#[derive(Debug, Default)]
pub struct Group {
    /// The peer's site id; None for a stream that names no peer.
    pub peer: Option<Vec<u8>>,
    pub streams: Vec<Member>,
    pub last_seen: Option<i64>,
    /// Every stream of the group was forgotten with `crsql_forget_peer`.
    pub forgotten: bool,
}

impl Group {
    /// Forgotten, or not seen for longer than `expiry` seconds at `now`
    /// (an expiry of 0 expires every peer at once).
    pub fn expired(&self, now: i64, expiry: i64) -> bool {
        self.forgotten || expiry == 0 || self.last_seen.is_none_or(|seen| now - seen > expiry)
    }

    /// The positions of its outbound (`true`) or inbound streams.
    pub fn positions(&self, outbound: bool) -> impl Iterator<Item = Position> + '_ {
        self.streams
            .iter()
            .filter(move |m| m.outbound == outbound)
            .map(|m| m.position)
    }
}

/// Every stream, grouped by peer (streams naming no peer alone), ordered by
/// peer site id, with the time now.
pub fn groups(conn: &Connection) -> Result<(Vec<Group>, i64)> {
    let now: i64 = conn.query_row(&format!("SELECT {}", super::NOW), [], |r| r.get(0))?;
    let mut out: BTreeMap<Vec<u8>, Group> = BTreeMap::new();
    if !super::state_tables_exist(conn)? {
        return Ok((Vec::new(), now));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name, direction, peer, db_version, seq, last_seen, forgotten \
         FROM crsql_stream_state ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let name: String = r.get(0)?;
        let peer: Option<Vec<u8>> = r.get(2)?;
        // Known peers sort first (by site id), then streams without one.
        let key = match &peer {
            Some(p) => [&[0u8][..], p].concat(),
            None => [&[1u8][..], name.as_bytes()].concat(),
        };
        let fresh = !out.contains_key(&key);
        let g = out.entry(key).or_default();
        g.peer = peer;
        g.last_seen = g.last_seen.max(r.get(5)?);
        let forgotten = r.get::<_, i64>(6)? != 0;
        g.forgotten = forgotten && (fresh || g.forgotten);
        g.streams.push(Member {
            name,
            outbound: r.get::<_, String>(1)? == "outbound",
            position: Position::new(r.get(3)?, r.get(4)?),
        });
    }
    Ok((out.into_values().collect(), now))
}

/// `crsql_forget_peer(site_id)`: the peer's streams stop holding anything
/// back at once (as if expired) until the peer is seen again. Returns the
/// number of its streams.
pub fn forget(ext: &Ext, site: &[u8]) -> Result<i64> {
    let inner = ext.lock("crsql_forget_peer")?;
    let n = if super::state_tables_exist(&inner.conn)? {
        inner
            .conn
            .prepare_cached("UPDATE crsql_stream_state SET forgotten = 1 WHERE peer = ?1")?
            .execute([site])?
    } else {
        0
    };
    if n == 0 {
        return Err(err!(
            "crsql_forget_peer: no stream has peer {}; crsql_peers lists the known peers",
            crsql_stream_core::package::to_hex(site)
        ));
    }
    Ok(n as i64)
}

pub struct PeersTable {
    ext: Arc<Ext>,
}

impl Table for PeersTable {
    crate::sqlite::vtab::ext_eponymous!(NAME, PeersCursor, SCHEMA);

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        info.set_estimated_cost(100.0);
        Ok(())
    }

    fn open(&mut self) -> Result<PeersCursor> {
        Ok(PeersCursor {
            ext: Arc::clone(&self.ext),
            rows: Default::default(),
        })
    }
}

pub struct PeersCursor {
    ext: Arc<Ext>,
    rows: super::Listing,
}

impl TableCursor for PeersCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _args: &[ValueRef<'_>],
    ) -> Result<()> {
        let inner = self.ext.lock(NAME)?;
        let expiry = expiry_seconds(&inner.conn)?;
        let (groups, now) = groups(&inner.conn)?;
        let text = |p: Option<Position>| p.map_or(Value::Null, |p| Value::Text(p.to_string()));
        self.rows.reset(
            groups
                .iter()
                .filter_map(|g| {
                    let site = g.peer.clone()?;
                    Some(vec![
                        Value::Blob(site),
                        text(g.positions(true).max()),
                        text(g.positions(false).max()),
                        g.last_seen.map_or(Value::Null, Value::Integer),
                        Value::Integer(g.expired(now, expiry) as i64),
                    ])
                })
                .collect(),
        );
        Ok(())
    }

    super::listing_cursor!();
}
