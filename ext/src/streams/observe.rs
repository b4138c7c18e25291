//! The eponymous `crsql_streams` table: every stream of the database, with
//! its positions and how far behind it is.

use std::ffi::c_int;
use std::sync::Arc;

use crsql_stream_core::package::to_hex;
use crsql_stream_core::Position;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{Context, IndexInfo, VTabConnection, VTabKind};

use crate::error::Result;
use crate::sqlite::vtab::{Table, TableCursor};
use crate::state::Ext;

const NAME: &str = "crsql_streams";

pub struct StreamsTable {
    ext: Arc<Ext>,
}

impl Table for StreamsTable {
    type Aux = Arc<Ext>;
    type Cursor = StreamsCursor;
    const NAME: &'static str = NAME;
    const KIND: VTabKind = VTabKind::EponymousOnly;

    fn connect(
        _db: &mut VTabConnection,
        aux: Option<&Arc<Ext>>,
        _create: bool,
        _schema: &str,
        _name: &str,
        _args: &[&str],
    ) -> Result<(String, Self)> {
        let ext = super::ext_of(NAME, aux)?;
        Ok((
            "CREATE TABLE x(name TEXT COLLATE NOCASE, direction TEXT, peer TEXT, last_sent TEXT, last_retrieved TEXT, \
             last_applied TEXT, lag_versions INTEGER)"
                .into(),
            StreamsTable { ext },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        info.set_estimated_cost(100.0);
        Ok(())
    }

    fn open(&mut self) -> Result<StreamsCursor> {
        Ok(StreamsCursor {
            ext: Arc::clone(&self.ext),
            rows: Default::default(),
        })
    }
}

pub struct StreamsCursor {
    ext: Arc<Ext>,
    rows: super::Listing,
}

fn text(p: Position) -> Value {
    Value::Text(p.to_string())
}

impl TableCursor for StreamsCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _args: &[ValueRef<'_>],
    ) -> Result<()> {
        let mut rows = Vec::new();
        let mut inner = self.ext.lock(NAME)?;
        if !super::state_tables_exist(&inner.conn)? {
            return Ok(());
        }
        let db_version = inner.db_version(&self.ext.tx)?;
        let raw: Vec<(String, super::StreamState)> = inner
            .conn
            .prepare_cached(
                "SELECT name, direction, stream_id, peer, db_version, seq FROM crsql_stream_state ORDER BY name",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    super::StreamState {
                        direction: r.get(1)?,
                        stream_id: r.get(2)?,
                        peer: r.get(3)?,
                        position: Position::new(r.get(4)?, r.get(5)?),
                        resync: false,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (name, state) in raw {
            let (direction, pos, dbv) =
                (state.direction, state.position, state.position.db_version);
            let peer = state
                .peer
                .map(|p| Value::Text(to_hex(&p)))
                .unwrap_or(Value::Null);
            let row = if direction == "outbound" {
                let retrieved = self.ext.retrieved(&name).map(text).unwrap_or(Value::Null);
                [
                    Value::Text(name),
                    Value::Text(direction),
                    peer,
                    text(pos),
                    retrieved,
                    Value::Null,
                    Value::Integer((db_version - dbv).max(0)),
                ]
            } else {
                [
                    Value::Text(name),
                    Value::Text(direction),
                    peer,
                    Value::Null,
                    Value::Null,
                    text(pos),
                    Value::Null,
                ]
            };
            rows.push(row.to_vec());
        }
        self.rows.reset(rows);
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.rows.next();
        Ok(())
    }

    fn eof(&self) -> bool {
        self.rows.eof()
    }

    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()> {
        Ok(ctx.set_result(&self.rows.column(col))?)
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.rows.rowid())
    }
}
