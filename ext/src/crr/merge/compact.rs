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

/// The clocks each change of the row wrote since its last write, in the
/// order they were decided. The row is stored by replaying them, one
/// `Stored::write` per change (after `clear_cells` for a delete), so the
/// stored form (which clocks form the run, which go to the cells table) is
/// exactly the one merging the changes one by one gives: only the final
/// clocks, written together, would not form the run a one-by-one merge
/// forms when they are not consecutive (a row whose columns arrive at two
/// versions), and would leave every clock in the cells table.
#[derive(Default)]
pub(super) struct Log {
    /// Every change's clocks, one after the other.
    writes: Vec<(i32, Clock)>,
    /// Per change: where its clocks end in `writes`, and whether it
    /// cleared the row's cells first (a delete).
    changes: Vec<(usize, bool)>,
    /// The change being decided cleared the cells.
    clear: bool,
}

impl Log {
    /// The change being decided deletes the row: its cells go first.
    pub(super) fn clear_cells(&mut self) {
        self.clear = true;
    }

    /// Record the clocks the change just decided wrote: those written at a
    /// seq from `first_seq` on (seqs only grow in a transaction).
    pub(super) fn record(&mut self, first_seq: i64, sentinel: Option<&Clock>, cells: &[Slot]) {
        let start = self.writes.len();
        let fresh = |c: &Clock| c.dirty && c.seq >= first_seq;
        if let Some(s) = sentinel.filter(|s| fresh(s)) {
            self.writes.push((SENTINEL_SLOT, *s));
        }
        for (i, s) in cells.iter().enumerate() {
            if let Slot::Present(c) = s {
                if fresh(c) {
                    self.writes.push((i as i32, *c));
                }
            }
        }
        if self.writes.len() > start || self.clear {
            self.changes.push((self.writes.len(), self.clear));
        }
        self.clear = false;
    }
}

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
    let log = std::mem::take(&mut row.log);
    if log.changes.is_empty() {
        if row.drop_cells {
            after.clear_cells();
        }
        after.write(&writes);
    } else {
        // Replay the changes one by one (`Log`).
        let mut start = 0;
        for &(end, clear) in &log.changes {
            if clear {
                after.clear_cells();
            }
            writes.clear();
            writes.extend(log.writes[start..end].iter().map(|(slot, c)| {
                let mut c = *c;
                written(*slot, &mut c)
            }));
            after.write(&writes);
            start = end;
        }
    }
    row.drop_cells = false;
    local::save(ext, inner, &t, c, &row.pks, &before, &after)?;
    row.compact = Some(after);
    row.dirty = false;
    Ok(())
}
