//! The row clock of the compact CRR layout (docs/compact-layout.md).
//!
//! A row's clocks are an optional sentinel (slot [`SENTINEL_SLOT`], whose
//! col_version is the causal length) and one optional clock per non-pk
//! column (slot = the column's stable index). [`RowClocks`] is that state as
//! an explicit map. [`Stored`] is how the compact layout keeps it: one *run*
//! (clocks a write created together: one db_version and site, seqs that
//! were one contiguous range when written) in the row-clock row, and every
//! other clock in the cells table. [`Stored::expand`] gives back the map;
//! the property tests check every operation on [`Stored`] against the same
//! operation on the map, and that no two rows' runs overlap.

use std::collections::BTreeMap;

use crate::merge::MAX_CLOCK;

/// The slot of the sentinel clock (cid `-1`).
pub const SENTINEL_SLOT: i32 = -1;

/// The most column slots a run can span in [`Vers::Bits`] form.
const MAX_BITS_SLOTS: usize = 62;

/// The first byte of the offsets form of a `vers` blob (the slot form's
/// first byte is a postcard bool: 0 or 1).
const OFFSETS_TAG: u8 = 2;

/// How a run is stored in the `vers` column. Three forms, each read
/// everywhere; [`Run::vers`] writes the first that can hold the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vers {
    /// *Slot form, INTEGER*: the run's clocks sit at consecutive seqs in
    /// slot order (a slot not in the run still takes its seq), every
    /// col_version is 1, over at most 62 slots (a row inserted, or merged,
    /// its columns rewritten at most elsewhere). Bit 0 = the sentinel is in
    /// the run, bit `1 + i` = slot `i` is. The highest bit set is the last
    /// slot, at the row clock's `seq`; slot `i` is at `seq − (W − 1 − i)`
    /// with `W` the width, the sentinel at `seq − W`.
    Bits(i64),
    /// A blob: either the *slot form* (the same geometry, any col_version:
    /// postcard of `(sentinel: bool, versions: Vec<u64>)`, 0 = slot not in
    /// the run) or the *offsets form* (any seq order: byte 2, then per
    /// clock in seq order a varint `(slot + 1) << 2 | has_version << 1 |
    /// has_gap`, its col_version if not 1, and the number of seqs skipped
    /// since the previous clock if not 0; the last clock is at `seq`).
    Blob(Vec<u8>),
}

/// A stored `vers` value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersRef<'a> {
    Bits(i64),
    Blob(&'a [u8]),
}

/// One clock: what a clock row of the cr-sqlite layout holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Clock {
    pub col_version: i64,
    pub db_version: i64,
    /// Site ordinal (0 = the local site).
    pub site: i64,
    pub seq: i64,
}

/// A row's clocks by slot: the explicit per-cell state.
pub type RowClocks = BTreeMap<i32, Clock>;

/// One clock of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub slot: i32,
    /// The col_version (1 for the sentinel: its own is the causal length,
    /// which the run does not hold).
    pub col_version: i64,
    pub seq: i64,
}

/// A run: clocks of one `(db_version, site)` written with one contiguous
/// range of seqs, possibly with holes left by clocks that moved out since.
/// No other clock of the database was ever at a seq inside that range at
/// that version, so two runs' ranges never overlap (the change scan's
/// ordering argument, docs/compact-layout.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub db_version: i64,
    pub site: i64,
    /// The run's clocks in seq order (seqs strictly increasing; at least
    /// one while the run is stored).
    pub members: Vec<Member>,
}

/// Why a `vers` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("row clock blob is not a run: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> RunError {
    RunError::Malformed(what.into())
}

/// Append `v` as an unsigned LEB128 varint (postcard's encoding).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read a varint at `*at`, moving past it.
fn take_varint(blob: &[u8], at: &mut usize) -> Result<u64, RunError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *blob
            .get(*at)
            .ok_or_else(|| malformed("a varint runs past the end"))?;
        *at += 1;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(malformed("a varint beyond 64 bits"));
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed("a varint beyond 64 bits"))
}

/// A col_version read from a blob.
fn version_of(v: u64) -> Result<i64, RunError> {
    i64::try_from(v)
        .ok()
        .filter(|v| (1..=MAX_CLOCK).contains(v))
        .ok_or_else(|| malformed(format!("col_version {v} is 0 or beyond MAX_CLOCK")))
}

impl Run {
    /// The seq of the run's last clock (the row clock's `seq` column).
    pub fn seq(&self) -> i64 {
        self.members.last().map_or(0, |m| m.seq)
    }

    /// The col_version of `slot` if it is in the run (the sentinel's is the
    /// causal length, which the run does not hold: 1 stands for "present").
    pub fn version(&self, slot: i32) -> Option<i64> {
        self.members
            .iter()
            .find(|m| m.slot == slot)
            .map(|m| m.col_version)
    }

    /// How many clocks the run holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the run holds no clock.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The run's clocks in seq order; the sentinel's col_version is `cl`.
    pub fn clocks(&self, cl: i64) -> impl Iterator<Item = (i32, Clock)> + '_ {
        self.members.iter().map(move |m| {
            (
                m.slot,
                Clock {
                    col_version: if m.slot == SENTINEL_SLOT {
                        cl
                    } else {
                        m.col_version
                    },
                    db_version: self.db_version,
                    site: self.site,
                    seq: m.seq,
                },
            )
        })
    }

    /// The run's width in the slot form, if it has that geometry: every
    /// clock at `seq − (W − 1 − slot)` (the sentinel at `seq − W`), `W` =
    /// the highest column slot + 1.
    fn slot_width(&self) -> Option<usize> {
        let width = self.members.iter().map(|m| m.slot + 1).max()?;
        let last = self.seq();
        self.members
            .iter()
            .all(|m| m.seq == last - i64::from(width - 1 - m.slot))
            .then_some(width as usize)
    }

    /// The slot form's `(sentinel, versions)` of a run of width `width`.
    fn slot_form(&self, width: usize) -> (bool, Vec<i64>) {
        let mut versions = vec![0; width];
        let mut sentinel = false;
        for m in &self.members {
            match usize::try_from(m.slot) {
                Ok(i) => versions[i] = m.col_version,
                Err(_) => sentinel = true,
            }
        }
        (sentinel, versions)
    }

    /// The `vers` column's value: the slot form as an INTEGER, else as a
    /// blob, else the offsets form ([`Vers`]).
    pub fn vers(&self) -> Vers {
        let Some(width) = self.slot_width() else {
            return Vers::Blob(self.encode_offsets());
        };
        let (sentinel, versions) = self.slot_form(width);
        if width <= MAX_BITS_SLOTS && versions.iter().all(|v| *v <= 1) {
            let slots = versions
                .iter()
                .enumerate()
                .filter(|(_, v)| **v == 1)
                .fold(0i64, |bits, (i, _)| bits | 1 << (i + 1));
            return Vers::Bits(slots | i64::from(sentinel));
        }
        let versions: Vec<u64> = versions.iter().map(|v| *v as u64).collect();
        // Serializing a bool and a Vec<u64> into a Vec cannot fail.
        Vers::Blob(postcard::to_allocvec(&(sentinel, versions)).unwrap_or_default())
    }

    /// The offsets form of the run (any geometry).
    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = vec![OFFSETS_TAG];
        let mut prev: Option<i64> = None;
        for m in &self.members {
            let sentinel = m.slot == SENTINEL_SLOT;
            let version = (!sentinel && m.col_version != 1).then_some(m.col_version);
            let gap = prev.map_or(0, |p| m.seq - p - 1);
            let head = (u64::from((m.slot + 1) as u32) << 2)
                | u64::from(version.is_some()) << 1
                | u64::from(gap > 0);
            put_varint(&mut out, head);
            if let Some(v) = version {
                put_varint(&mut out, v as u64);
            }
            if gap > 0 {
                put_varint(&mut out, gap as u64);
            }
            prev = Some(m.seq);
        }
        out
    }

    /// Read a stored `vers` whose last clock is at `last`: the run's clocks
    /// in seq order, into `out` (cleared first; a buffer the caller reuses).
    pub fn decode(vers: VersRef<'_>, last: i64, out: &mut Vec<Member>) -> Result<(), RunError> {
        out.clear();
        match vers {
            VersRef::Bits(bits) => {
                if bits <= 0 {
                    return Err(malformed(format!(
                        "{bits} is not a run (an empty run, or bit 63 set)"
                    )));
                }
                let slots = bits >> 1;
                let width = 64 - slots.leading_zeros() as i32;
                let present = (0..width).filter(|i| (slots >> i) & 1 == 1);
                Self::slot_members(bits & 1 == 1, present.map(|i| (i, 1)), width, last, out);
                Ok(())
            }
            VersRef::Blob([OFFSETS_TAG, rest @ ..]) => Self::decode_offsets(rest, last, out),
            VersRef::Blob(blob) => {
                let ((sentinel, versions), rest): ((bool, Vec<u64>), &[u8]) =
                    postcard::take_from_bytes(blob).map_err(|e| malformed(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(malformed(format!("{} trailing bytes", rest.len())));
                }
                if versions.last() == Some(&0) {
                    return Err(malformed("the last slot is not in the run"));
                }
                if !sentinel && versions.is_empty() {
                    return Err(malformed("an empty run"));
                }
                let width = i32::try_from(versions.len())
                    .map_err(|_| malformed("a run wider than 2^31 slots"))?;
                let mut present = Vec::new();
                for (i, v) in versions.into_iter().enumerate() {
                    if v > 0 {
                        present.push((i as i32, version_of(v)?));
                    }
                }
                Self::slot_members(sentinel, present.into_iter(), width, last, out);
                Ok(())
            }
        }
    }

    /// The clocks of a slot-form run, in seq order (= slot order).
    fn slot_members(
        sentinel: bool,
        present: impl Iterator<Item = (i32, i64)>,
        width: i32,
        last: i64,
        out: &mut Vec<Member>,
    ) {
        let seq = |slot: i32| last - i64::from(width - 1 - slot);
        if sentinel {
            out.push(Member {
                slot: SENTINEL_SLOT,
                col_version: 1,
                seq: seq(SENTINEL_SLOT),
            });
        }
        out.extend(present.map(|(slot, col_version)| Member {
            slot,
            col_version,
            seq: seq(slot),
        }));
    }

    /// The offsets form after its tag byte.
    fn decode_offsets(blob: &[u8], last: i64, out: &mut Vec<Member>) -> Result<(), RunError> {
        // Gaps first (seqs are computed back from the last clock's).
        let mut gaps: Vec<u64> = Vec::new();
        let mut at = 0;
        while at < blob.len() {
            let head = take_varint(blob, &mut at)?;
            let slot = i32::try_from(head >> 2)
                .ok()
                .and_then(|s| s.checked_sub(1))
                .ok_or_else(|| malformed(format!("slot {} out of range", head >> 2)))?;
            let col_version = if head & 2 != 0 {
                if slot == SENTINEL_SLOT {
                    return Err(malformed("a col_version for the sentinel"));
                }
                version_of(take_varint(blob, &mut at)?)?
            } else {
                1
            };
            let gap = if head & 1 != 0 {
                match take_varint(blob, &mut at)? {
                    0 => return Err(malformed("a gap of 0 written out")),
                    g if out.is_empty() => {
                        return Err(malformed(format!("a gap of {g} before the first clock")))
                    }
                    g => g,
                }
            } else {
                0
            };
            if out.iter().any(|m| m.slot == slot) {
                return Err(malformed(format!("slot {slot} twice")));
            }
            out.push(Member {
                slot,
                col_version,
                seq: 0,
            });
            gaps.push(gap);
        }
        if out.is_empty() {
            return Err(malformed("an empty run"));
        }
        let mut seq = last;
        for (m, gap) in out.iter_mut().zip(&gaps).rev() {
            m.seq = seq;
            seq = i64::try_from(*gap)
                .ok()
                .and_then(|g| seq.checked_sub(g)?.checked_sub(1))
                .ok_or_else(|| malformed("seqs below i64::MIN"))?;
        }
        Ok(())
    }

    /// Read a stored run whose last clock is at `seq`.
    pub fn read(db_version: i64, site: i64, seq: i64, vers: VersRef<'_>) -> Result<Run, RunError> {
        let mut members = Vec::new();
        Run::decode(vers, seq, &mut members)?;
        Ok(Run {
            db_version,
            site,
            members,
        })
    }

    /// How many clocks a stored `vers` holds.
    pub fn count(vers: VersRef<'_>) -> Result<usize, RunError> {
        if let VersRef::Bits(bits) = vers {
            if bits > 0 {
                return Ok(bits.count_ones() as usize);
            }
        }
        let mut members = Vec::new();
        Run::decode(vers, 0, &mut members)?;
        Ok(members.len())
    }

    /// Take `slot` out of the run (every other clock keeps its seq).
    fn remove(&mut self, slot: i32) {
        self.members.retain(|m| m.slot != slot);
    }

    /// A run of exactly `clocks` (sorted by seq), if they were written as
    /// one contiguous range: one version and site, consecutive seqs, each
    /// slot once, no col_version 0 (it marks nothing here, but a cell
    /// zeroed by a resurrection stays in the cells table as it always did).
    /// The sentinel's col_version is not kept (it is the causal length).
    pub fn of_contiguous(clocks: &[(i32, Clock)]) -> Option<Run> {
        let (_, first) = *clocks.first()?;
        for (k, (slot, c)) in clocks.iter().enumerate() {
            if c.seq != first.seq + k as i64
                || c.db_version != first.db_version
                || c.site != first.site
                || (*slot != SENTINEL_SLOT && c.col_version <= 0)
                || clocks[..k].iter().any(|(s, _)| s == slot)
            {
                return None;
            }
        }
        Some(Run {
            db_version: first.db_version,
            site: first.site,
            members: clocks
                .iter()
                .map(|(slot, c)| Member {
                    slot: *slot,
                    col_version: if *slot == SENTINEL_SLOT {
                        1
                    } else {
                        c.col_version
                    },
                    seq: c.seq,
                })
                .collect(),
        })
    }
}

/// A row's clocks as the compact layout stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The causal length: the sentinel's col_version, else 1 when the row
    /// has any clock, else 0.
    pub cl: i64,
    pub run: Option<Run>,
    /// Clocks not in the run, by slot (the cells table).
    pub cells: BTreeMap<i32, Clock>,
}

impl Stored {
    /// Whether the row has no clock at all (no row-clock row is stored).
    pub fn is_empty(&self) -> bool {
        self.run.is_none() && self.cells.is_empty()
    }

    /// The explicit state.
    pub fn expand(&self) -> RowClocks {
        self.clocks().collect()
    }

    /// Every clock of the row by slot: the cells table's, then the run's
    /// (a slot in both takes the run's, the later one).
    pub fn clocks(&self) -> impl Iterator<Item = (i32, Clock)> + '_ {
        let cells = self.cells.iter().map(|(slot, c)| (*slot, *c));
        cells.chain(self.run.iter().flat_map(|r| r.clocks(self.cl)))
    }

    /// Record clocks written together (each slot at most once; the
    /// sentinel's col_version is the new causal length). They replace the
    /// row's clocks of the same slots. Clocks at consecutive seqs (a new
    /// row, an update of every column, a delete's sentinel, a primary-key
    /// move) become the run when that leaves fewer clocks in the cells
    /// table than keeping the old run.
    pub fn write(&mut self, writes: &[(i32, Clock)]) {
        // Usually in seq order already (a merged change's clocks are).
        let sorted;
        let writes = if writes.is_sorted_by_key(|(_, c)| c.seq) {
            writes
        } else {
            let mut copy = writes.to_vec();
            copy.sort_by_key(|(_, c)| c.seq);
            sorted = copy;
            &sorted
        };
        for (slot, c) in writes {
            self.cells.remove(slot);
            if let Some(run) = &mut self.run {
                run.remove(*slot);
            }
            if *slot == SENTINEL_SLOT {
                self.cl = c.col_version;
            }
        }
        if self.run.as_ref().is_some_and(Run::is_empty) {
            self.run = None;
        }
        let more = Run::of_contiguous(writes);
        if let (Some(run), Some(more)) = (&mut self.run, &more) {
            // Clocks right after the run's last one (the next seq, the same
            // version and site: a row merged change by change, whatever the
            // slots) join it. Nothing else can be at those seqs, so the
            // run's range still overlaps no other run's.
            if more.db_version == run.db_version
                && more.site == run.site
                && more.members[0].seq == run.seq() + 1
            {
                run.members.extend_from_slice(&more.members);
                self.fix_cl();
                return;
            }
        }
        let kept = self.run.as_ref().map_or(0, Run::len);
        match more {
            Some(new_run) if kept < writes.len() => {
                if let Some(old) = self.run.take() {
                    self.cells.extend(old.clocks(self.cl));
                }
                self.run = Some(new_run);
            }
            _ => self.cells.extend(writes.iter().copied()),
        }
        self.fix_cl();
    }

    /// Remove every clock but the sentinel (a delete, before its sentinel
    /// is written).
    pub fn clear_cells(&mut self) {
        self.cells.retain(|slot, _| *slot == SENTINEL_SLOT);
        if let Some(run) = &mut self.run {
            run.members.retain(|m| m.slot == SENTINEL_SLOT);
            if run.is_empty() {
                self.run = None;
            }
        }
        self.fix_cl();
    }

    /// Store an explicit state (a conversion from the cr-sqlite layout):
    /// the longest group of clocks of one version and site at consecutive
    /// seqs (whatever their slots) is the run, the rest cells. Such a group
    /// holds every seq of its range, so no other run can overlap it.
    pub fn from_clocks(clocks: &RowClocks) -> Stored {
        let mut groups: BTreeMap<(i64, i64), Vec<(i32, Clock)>> = BTreeMap::new();
        // A clock at col_version 0 (a cell zeroed by a resurrection) stays
        // in the cells table, as the writes keep it.
        for (slot, c) in clocks
            .iter()
            .filter(|(slot, c)| **slot == SENTINEL_SLOT || c.col_version > 0)
        {
            groups
                .entry((c.db_version, c.site))
                .or_default()
                .push((*slot, *c));
        }
        // Within a group, in seq order, stretches of consecutive seqs; the
        // longest one wins (the first found on a tie).
        let mut best: &[(i32, Clock)] = &[];
        for group in groups.values_mut() {
            group.sort_by_key(|(_, c)| c.seq);
            let mut start = 0;
            for i in 1..=group.len() {
                if i == group.len() || group[i].1.seq != group[i - 1].1.seq + 1 {
                    if i - start > best.len() {
                        best = &group[start..i];
                    }
                    start = i;
                }
            }
        }
        let run = Run::of_contiguous(best);
        let mut out = Stored {
            cl: clocks.get(&SENTINEL_SLOT).map_or(0, |c| c.col_version),
            cells: clocks.clone(),
            run: None,
        };
        if let Some(run) = &run {
            for m in &run.members {
                out.cells.remove(&m.slot);
            }
        }
        out.run = run;
        out.fix_cl();
        out
    }

    /// `cl` without a sentinel: 1 while the row has a clock, else 0.
    fn fix_cl(&mut self) {
        let has_sentinel = self.cells.contains_key(&SENTINEL_SLOT)
            || self
                .run
                .as_ref()
                .is_some_and(|r| r.version(SENTINEL_SLOT).is_some());
        if !has_sentinel {
            self.cl = i64::from(!self.is_empty());
        }
    }
}

#[cfg(test)]
mod tests;
