//! The merger on a compact CRR (`crr::compact`, docs/compact-layout.md):
//! the row is read as one `Stored` (row clock and cells), so every clock is
//! known at once, and written back through `Stored::write`, which stores
//! the clocks one flush wins together as a run when they are consecutive
//! (a remote insert is). Decisions, versions, seqs and site ordinals are
//! the merger's, unchanged.

use std::collections::HashMap;

use crsql_stream_core::rowclock::{self, SENTINEL_SLOT};

use super::{Clock, Row, Site, Slot};
use crate::crr::compact::local;
use crate::err;
use crate::error::Result;
use crate::state::{Ext, Inner};

/// Fill a freshly loaded `row` of a compact CRR from its stored clocks.
/// A row with no clock is left without a key (the caller then looks for a
/// compacted delete, as for the cr-sqlite layout).
pub(super) fn load(inner: &Inner, row: &mut Row<'_>) -> Result<()> {
    let t = std::sync::Arc::clone(&row.t);
    let c = t
        .compact
        .as_ref()
        .ok_or_else(|| err!("crsql_stream: {} is not a compact CRR", t.name))?;
    let stored = local::load(inner, &t, c, &row.pks)?;
    if stored.is_empty() {
        return Ok(());
    }
    let state = stored.expand();
    for (i, s) in row.cells.iter_mut().enumerate() {
        *s = match state.get(&(i as i32)) {
            Some(c) => Slot::Present(Clock {
                col_version: c.col_version,
                db_version: c.db_version,
                seq: c.seq,
                site: Site::Ordinal(c.site),
                dirty: false,
            }),
            None => Slot::Absent,
        };
    }
    row.others = Some(Vec::new());
    row.key = Some(0);
    row.cl = stored.cl;
    row.compact = Some(stored);
    Ok(())
}

/// Write the clocks the row's changes won (after its base-table write).
pub(super) fn write_clocks<'a>(
    ext: &Ext,
    inner: &Inner,
    sites: &mut HashMap<&'a [u8], i64>,
    row: &mut Row<'a>,
) -> Result<()> {
    let t = std::sync::Arc::clone(&row.t);
    let c = t
        .compact
        .as_ref()
        .ok_or_else(|| err!("crsql_stream: {} is not a compact CRR", t.name))?;
    if row.key.is_none() {
        // The row has clocks again: its compacted record goes.
        crate::streams::compact::take_compacted(inner, &t.name, row.pk)?;
        row.key = Some(0);
    }
    let mut ordinals = Vec::with_capacity(row.new_sites.len());
    for site in row.new_sites.drain(..) {
        let o = inner.site_ordinal(site, true)?.unwrap_or(0);
        sites.insert(site, o);
        ordinals.push(o);
    }
    let written = |slot: i32, clock: &mut Clock| {
        let site = match clock.site {
            Site::Ordinal(o) => o,
            Site::New(i) => ordinals.get(i).copied().unwrap_or(0),
        };
        clock.site = Site::Ordinal(site);
        clock.dirty = false;
        (
            slot,
            rowclock::Clock {
                col_version: clock.col_version,
                db_version: clock.db_version,
                site,
                seq: clock.seq,
            },
        )
    };
    let mut writes = Vec::new();
    if let Some(s) = row.sentinel.as_mut().filter(|s| s.dirty) {
        writes.push(written(SENTINEL_SLOT, s));
    }
    for (i, s) in row.cells.iter_mut().enumerate() {
        if let Slot::Present(clock) = s {
            if clock.dirty {
                writes.push(written(i as i32, clock));
            }
        }
    }
    let before = row.compact.take().unwrap_or_default();
    let mut after = before.clone();
    if row.drop_cells {
        after.clear_cells();
        row.drop_cells = false;
    }
    after.write(&writes);
    local::save(ext, inner, &t, c, &row.pks, &before, &after)?;
    row.compact = Some(after);
    row.dirty = false;
    Ok(())
}
