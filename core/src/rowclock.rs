//! The row clock of the compact CRR layout (docs/compact-layout.md).
//!
//! A row's clocks are an optional sentinel (slot [`SENTINEL_SLOT`], whose
//! col_version is the causal length) and one optional clock per non-pk
//! column (slot = the column's stable index). [`RowClocks`] is that state as
//! an explicit map. [`Stored`] is how the compact layout keeps it: one *run*
//! (the clocks a write created together: one db_version and site, seqs
//! consecutive in slot order) in the row-clock row, and every other clock
//! in the cells table. [`Stored::expand`] gives back the map; the property
//! tests check every operation on [`Stored`] against the same operation on
//! the map.

use std::collections::BTreeMap;

use crate::merge::MAX_CLOCK;

/// The slot of the sentinel clock (cid `-1`).
pub const SENTINEL_SLOT: i32 = -1;

/// The most column slots a run can span in [`Vers::Bits`] form.
const MAX_BITS_SLOTS: usize = 62;

/// How a run's per-slot col_versions are stored in the `vers` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vers {
    /// Every col_version is 0 (not in the run) or 1, over at most 62
    /// slots (the common case: a row inserted, or merged, and its columns
    /// rewritten at most elsewhere): an INTEGER, bit 0 = the sentinel is in
    /// the run, bit `1 + i` = slot `i` is (at col_version 1). The highest
    /// bit set is the last slot, so the width needs no room: 1 byte of
    /// record where the blob takes 5 for a 3-column row.
    Bits(i64),
    /// Otherwise the postcard blob of [`Run::encode_vers`].
    Blob(Vec<u8>),
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

/// A run: clocks of one `(db_version, site)` at consecutive seqs in slot
/// order, possibly with holes left by clocks that moved out since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub db_version: i64,
    pub site: i64,
    /// The seq of the run's last clock (the row clock's `seq` column).
    pub seq: i64,
    /// Whether the sentinel is in the run (just before slot 0).
    pub sentinel: bool,
    /// col_version per slot, 0 for a slot not in the run; the last one is
    /// never 0.
    pub versions: Vec<i64>,
}

/// Why a `vers` blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("row clock blob is not a run: {0}")]
    Malformed(String),
}

impl Run {
    /// Width: the number of column slots the run spans.
    pub fn width(&self) -> i64 {
        self.versions.len() as i64
    }

    /// The seq of a slot of this run (whether or not it is still in it).
    pub fn seq_of(&self, slot: i32) -> i64 {
        self.seq - (self.width() - 1 - i64::from(slot))
    }

    /// The col_version of `slot` if it is in the run (the sentinel's is the
    /// causal length, which the run does not hold: 1 stands for "present").
    pub fn version(&self, slot: i32) -> Option<i64> {
        if slot == SENTINEL_SLOT {
            return self.sentinel.then_some(1);
        }
        match self.versions.get(usize::try_from(slot).ok()?) {
            Some(&v) if v > 0 => Some(v),
            _ => None,
        }
    }

    /// How many clocks the run holds.
    pub fn len(&self) -> usize {
        usize::from(self.sentinel) + self.versions.iter().filter(|v| **v > 0).count()
    }

    /// Whether the run holds no clock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The run's clocks in seq order; the sentinel's col_version is `cl`.
    pub fn clocks(&self, cl: i64) -> impl Iterator<Item = (i32, Clock)> + '_ {
        let sentinel = self.sentinel.then_some((SENTINEL_SLOT, cl));
        let cells = self
            .versions
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(i, v)| (i as i32, *v));
        sentinel.into_iter().chain(cells).map(move |(slot, v)| {
            (
                slot,
                Clock {
                    col_version: v,
                    db_version: self.db_version,
                    site: self.site,
                    seq: self.seq_of(slot),
                },
            )
        })
    }

    /// The `vers` blob: postcard of `(sentinel, versions)` (varints).
    pub fn encode_vers(&self) -> Vec<u8> {
        let versions: Vec<u64> = self.versions.iter().map(|v| *v as u64).collect();
        // Serializing a bool and a Vec<u64> into a Vec cannot fail.
        postcard::to_allocvec(&(self.sentinel, versions)).unwrap_or_default()
    }

    /// Read a `vers` blob: `(sentinel, versions)`.
    pub fn decode_vers(blob: &[u8]) -> Result<(bool, Vec<i64>), RunError> {
        let ((sentinel, versions), rest): ((bool, Vec<u64>), &[u8]) =
            postcard::take_from_bytes(blob).map_err(|e| RunError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RunError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        if versions.last() == Some(&0) {
            return Err(RunError::Malformed(
                "the last slot is not in the run".into(),
            ));
        }
        if !sentinel && versions.is_empty() {
            return Err(RunError::Malformed("an empty run".into()));
        }
        let versions = versions
            .into_iter()
            .map(|v| {
                i64::try_from(v)
                    .ok()
                    .filter(|v| *v <= MAX_CLOCK)
                    .ok_or_else(|| RunError::Malformed(format!("col_version {v} beyond MAX_CLOCK")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((sentinel, versions))
    }

    /// The `vers` column's value: [`Vers::Bits`] when it can, else the blob.
    pub fn vers(&self) -> Vers {
        match self.vers_bits() {
            Some(bits) => Vers::Bits(bits),
            None => Vers::Blob(self.encode_vers()),
        }
    }

    /// The INTEGER form of `vers` ([`Vers::Bits`]), if the run has one.
    fn vers_bits(&self) -> Option<i64> {
        if self.versions.len() > MAX_BITS_SLOTS
            || self.versions.last() == Some(&0)
            || self.versions.iter().any(|v| *v > 1)
        {
            return None;
        }
        let slots = self
            .versions
            .iter()
            .enumerate()
            .filter(|(_, v)| **v == 1)
            .fold(0i64, |bits, (i, _)| bits | 1 << (i + 1));
        Some(slots | i64::from(self.sentinel)).filter(|b| *b > 0)
    }

    /// Read the INTEGER form of `vers`: `(sentinel, versions)`.
    pub fn decode_vers_bits(bits: i64) -> Result<(bool, Vec<i64>), RunError> {
        if bits <= 0 {
            return Err(RunError::Malformed(format!(
                "{bits} is not a run (an empty run, or bit 63 set)"
            )));
        }
        let slots = bits >> 1;
        let width = 64 - slots.leading_zeros() as usize;
        let versions = (0..width).map(|i| (slots >> i) & 1).collect();
        Ok((bits & 1 == 1, versions))
    }

    /// How many clocks a run of `versions` (with or without `sentinel`) holds.
    pub fn count_of(sentinel: bool, versions: &[i64]) -> usize {
        usize::from(sentinel) + versions.iter().filter(|v| **v > 0).count()
    }

    /// Take `slot` out of the run; trailing empty slots go, keeping every
    /// remaining clock's seq (the run's seq follows its last clock).
    fn remove(&mut self, slot: i32) {
        if slot == SENTINEL_SLOT {
            self.sentinel = false;
        } else if let Some(v) = usize::try_from(slot)
            .ok()
            .and_then(|i| self.versions.get_mut(i))
        {
            *v = 0;
        }
        while self.versions.last() == Some(&0) {
            self.versions.pop();
            self.seq -= 1;
        }
    }

    /// A run of exactly `clocks` (sorted by slot), if they are consecutive:
    /// one version and site, consecutive slots at consecutive seqs. The
    /// sentinel's col_version is not kept (it is the causal length).
    pub fn of_consecutive(clocks: &[(i32, Clock)]) -> Option<Run> {
        let (first_slot, first) = *clocks.first()?;
        for (k, (slot, c)) in clocks.iter().enumerate() {
            let k = k as i64;
            if i64::from(*slot) != i64::from(first_slot) + k
                || c.seq != first.seq + k
                || c.db_version != first.db_version
                || c.site != first.site
                || (*slot != SENTINEL_SLOT && c.col_version <= 0)
            {
                return None;
            }
        }
        let (last_slot, last) = clocks[clocks.len() - 1];
        let mut versions = vec![0; usize::try_from(last_slot + 1).unwrap_or(0)];
        for (slot, c) in clocks {
            if let Ok(i) = usize::try_from(*slot) {
                versions[i] = c.col_version;
            }
        }
        Some(Run {
            db_version: first.db_version,
            site: first.site,
            seq: last.seq,
            sentinel: first_slot == SENTINEL_SLOT,
            versions,
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
        let mut out = self.cells.clone();
        if let Some(run) = &self.run {
            out.extend(run.clocks(self.cl));
        }
        out
    }

    /// Record clocks written together (each slot at most once; the
    /// sentinel's col_version is the new causal length). They replace the
    /// row's clocks of the same slots. Consecutive ones (a new row, an
    /// update of every column, a delete's sentinel) become the run when
    /// that leaves fewer clocks in the cells table than keeping the old run.
    pub fn write(&mut self, writes: &[(i32, Clock)]) {
        let mut writes = writes.to_vec();
        writes.sort_by_key(|(slot, _)| *slot);
        for (slot, c) in &writes {
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
        if let (Some(run), Some(more)) = (&mut self.run, Run::of_consecutive(&writes)) {
            // Clocks that continue the run (the next slot at the next seq,
            // the same version and site: a row merged change by change)
            // join it. Nothing else can be at those seqs, so the run's
            // range still overlaps no other run's.
            if !more.sentinel
                && more.db_version == run.db_version
                && more.site == run.site
                && writes[0].0 == run.versions.len() as i32
                && writes[0].1.seq == run.seq + 1
            {
                run.versions.extend(&more.versions[run.versions.len()..]);
                run.seq = more.seq;
                self.fix_cl();
                return;
            }
        }
        let kept = self.run.as_ref().map_or(0, Run::len);
        match Run::of_consecutive(&writes) {
            Some(new_run) if kept < writes.len() => {
                if let Some(old) = self.run.take() {
                    self.cells.extend(old.clocks(self.cl));
                }
                self.run = Some(new_run);
            }
            _ => self.cells.extend(writes),
        }
        self.fix_cl();
    }

    /// Remove every clock but the sentinel (a delete, before its sentinel
    /// is written).
    pub fn clear_cells(&mut self) {
        self.cells.retain(|slot, _| *slot == SENTINEL_SLOT);
        if let Some(run) = &mut self.run {
            if run.sentinel {
                run.seq = run.seq_of(SENTINEL_SLOT);
                run.versions.clear();
            } else {
                self.run = None;
            }
        }
        self.fix_cl();
    }

    /// Store an explicit state (a conversion from the cr-sqlite layout):
    /// the longest consecutive group of clocks is the run, the rest cells.
    pub fn from_clocks(clocks: &RowClocks) -> Stored {
        let mut groups: BTreeMap<(i64, i64, i64), Vec<(i32, Clock)>> = BTreeMap::new();
        // A clock at col_version 0 (a cell zeroed by a resurrection) cannot
        // be in a run: 0 marks a slot that is not.
        for (slot, c) in clocks
            .iter()
            .filter(|(slot, c)| **slot == SENTINEL_SLOT || c.col_version > 0)
        {
            groups
                .entry((c.db_version, c.site, c.seq - i64::from(*slot)))
                .or_default()
                .push((*slot, *c));
        }
        // Within a group, runs of consecutive slots; the longest one wins
        // (the first found on a tie).
        let mut best: Vec<(i32, Clock)> = Vec::new();
        for group in groups.values() {
            let mut start = 0;
            for i in 1..=group.len() {
                if i == group.len() || group[i].0 != group[i - 1].0 + 1 {
                    if i - start > best.len() {
                        best = group[start..i].to_vec();
                    }
                    start = i;
                }
            }
        }
        let mut out = Stored {
            cl: 0,
            run: Run::of_consecutive(&best),
            cells: clocks.clone(),
        };
        if let Some(run) = &out.run {
            for (slot, _) in run.clocks(0) {
                out.cells.remove(&slot);
            }
        }
        out.cl = clocks.get(&SENTINEL_SLOT).map_or(0, |c| c.col_version);
        out.fix_cl();
        out
    }

    /// `cl` without a sentinel: 1 while the row has a clock, else 0.
    fn fix_cl(&mut self) {
        let has_sentinel = self.cells.contains_key(&SENTINEL_SLOT)
            || self.run.as_ref().is_some_and(|r| r.sentinel);
        if !has_sentinel {
            self.cl = i64::from(!self.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A write of the model: the map with the written clocks replaced.
    fn model_write(m: &mut RowClocks, writes: &[(i32, Clock)]) {
        for (s, c) in writes {
            m.insert(*s, *c);
        }
    }

    fn model_clear(m: &mut RowClocks) {
        m.retain(|s, _| *s == SENTINEL_SLOT);
    }

    /// What the model says `cl` is.
    fn model_cl(m: &RowClocks) -> i64 {
        match m.get(&SENTINEL_SLOT) {
            Some(c) => c.col_version,
            None => i64::from(!m.is_empty()),
        }
    }

    /// One operation of a random history. Positions are handed out by the
    /// test as the extension hands them out: a version per operation (or
    /// several operations per version), seqs increasing.
    #[derive(Debug, Clone)]
    enum Op {
        /// Write these slots (−1 = sentinel) together, in slot order at
        /// consecutive seqs (an insert, a full update) ...
        Together(Vec<i32>, i64),
        /// ... or one by one with a seq gap between them (an update, a merge).
        Apart(Vec<i32>, i64),
        /// A delete: cells go, then the sentinel is written.
        Delete(i64),
        /// Cells cleared alone (the first half of a delete).
        ClearCells,
        /// A new transaction (version).
        NextVersion,
    }

    /// The next clock the test hands out.
    fn next_clock(v: i64, seq: &mut i64, cv: &mut i64, site: i64, gap: i64) -> Clock {
        *seq += 1 + gap;
        *cv += 1;
        Clock {
            // Now and then a zeroed cell (col_version 0, §8.1).
            col_version: if *cv % 7 == 0 { 0 } else { *cv },
            db_version: v,
            site,
            seq: *seq,
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let slots = prop::collection::btree_set(-1i32..6, 1..6)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>());
        prop_oneof![
            (slots.clone(), 0i64..3).prop_map(|(s, site)| Op::Together(s, site)),
            (slots, 0i64..3).prop_map(|(s, site)| Op::Apart(s, site)),
            (0i64..3).prop_map(Op::Delete),
            Just(Op::ClearCells),
            Just(Op::NextVersion),
        ]
    }

    /// Run a history on the stored form and on the map; after every step
    /// they must agree, and the stored form must be canonical.
    fn check_history(ops: &[Op]) -> Result<(), TestCaseError> {
        let mut stored = Stored::default();
        let mut model = RowClocks::new();
        let (mut v, mut seq, mut cv) = (1i64, 0i64, 1i64);
        for op in ops {
            match op {
                Op::NextVersion => {
                    v += 1;
                    seq = 0;
                }
                Op::Together(slots, site) | Op::Apart(slots, site) => {
                    let gap = i64::from(matches!(op, Op::Apart(..)));
                    let writes: Vec<(i32, Clock)> = slots
                        .iter()
                        .map(|s| (*s, next_clock(v, &mut seq, &mut cv, *site, gap)))
                        .collect();
                    stored.write(&writes);
                    model_write(&mut model, &writes);
                }
                Op::ClearCells => {
                    stored.clear_cells();
                    model_clear(&mut model);
                }
                Op::Delete(site) => {
                    stored.clear_cells();
                    model_clear(&mut model);
                    let s = [(SENTINEL_SLOT, next_clock(v, &mut seq, &mut cv, *site, 0))];
                    stored.write(&s);
                    model_write(&mut model, &s);
                }
            }
            prop_assert_eq!(stored.expand(), model.clone(), "after {:?}", op);
            prop_assert_eq!(stored.cl, model_cl(&model), "cl after {:?}", op);
            if let Some(run) = &stored.run {
                prop_assert!(!run.is_empty(), "an empty run is stored");
                prop_assert_ne!(run.versions.last(), Some(&0));
                let blob = run.encode_vers();
                prop_assert_eq!(
                    Run::decode_vers(&blob).unwrap(),
                    (run.sentinel, run.versions.clone())
                );
                // Both stored forms of `vers` read back as the run.
                let read = match run.vers() {
                    Vers::Bits(b) => Run::decode_vers_bits(b),
                    Vers::Blob(b) => Run::decode_vers(&b),
                };
                prop_assert_eq!(read.unwrap(), (run.sentinel, run.versions.clone()));
                // A run's clocks come out in seq order.
                let seqs: Vec<i64> = run.clocks(stored.cl).map(|(_, c)| c.seq).collect();
                prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            }
            for (slot, _) in stored.run.iter().flat_map(|r| r.clocks(0)) {
                prop_assert!(!stored.cells.contains_key(&slot), "slot {} twice", slot);
            }
            // The conversion from the explicit state keeps it exactly.
            prop_assert_eq!(Stored::from_clocks(&model).expand(), model.clone());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn stored_form_equals_the_explicit_map(ops in prop::collection::vec(op(), 1..40)) {
            check_history(&ops)?;
        }

        #[test]
        fn vers_round_trips(sentinel: bool, mut versions in prop::collection::vec(0i64..=MAX_CLOCK, 0..70)) {
            if let Some(last) = versions.last_mut() { *last = (*last).max(1); }
            prop_assume!(sentinel || !versions.is_empty());
            let run = Run { db_version: 1, site: 0, seq: 100, sentinel, versions: versions.clone() };
            prop_assert_eq!(Run::decode_vers(&run.encode_vers()), Ok((sentinel, versions)));
        }

        #[test]
        fn decoding_any_bytes_never_panics(blob in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = Run::decode_vers(&blob);
        }
    }

    #[test]
    fn an_insert_of_three_columns_is_five_bytes_and_no_cell() {
        let mut s = Stored::default();
        let c = |seq| Clock {
            col_version: 1,
            db_version: 7,
            site: 0,
            seq,
        };
        s.write(&[(0, c(3)), (1, c(4)), (2, c(5))]);
        assert!(s.cells.is_empty());
        let run = s.run.as_ref().unwrap();
        assert_eq!(run.encode_vers(), vec![0, 3, 1, 1, 1]);
        assert_eq!((run.seq, s.cl), (5, 1));
        // An update of one column moves it out; the run keeps the others.
        s.write(&[(
            1,
            Clock {
                col_version: 2,
                db_version: 8,
                site: 0,
                seq: 1,
            },
        )]);
        assert_eq!(s.cells.len(), 1);
        assert_eq!(s.run.as_ref().unwrap().encode_vers(), vec![0, 3, 1, 0, 1]);
        // A delete leaves the sentinel alone, in the run.
        s.clear_cells();
        s.write(&[(
            SENTINEL_SLOT,
            Clock {
                col_version: 2,
                db_version: 9,
                site: 0,
                seq: 1,
            },
        )]);
        assert!(s.cells.is_empty());
        assert_eq!(s.run.as_ref().unwrap().encode_vers(), vec![1, 0]);
        assert_eq!((s.cl, s.run.as_ref().unwrap().seq), (2, 1));
    }

    #[test]
    fn malformed_blobs_are_refused() {
        assert!(Run::decode_vers(&[0, 0]).is_err(), "empty run");
        assert!(
            Run::decode_vers(&[0, 2, 1, 0]).is_err(),
            "trailing zero slot"
        );
        assert!(Run::decode_vers(&[0, 1, 1, 9]).is_err(), "trailing bytes");
        assert!(Run::decode_vers(&[2]).is_err(), "not a bool");
    }

    #[test]
    fn vers_is_an_integer_when_every_version_is_0_or_1() {
        let run = |sentinel, versions: Vec<i64>| Run {
            db_version: 1,
            site: 0,
            seq: 9,
            sentinel,
            versions,
        };
        // An insert of 3 columns, and the same row once b left the run.
        assert_eq!(run(false, vec![1, 1, 1]).vers(), Vers::Bits(0b1110));
        assert_eq!(run(false, vec![1, 0, 1]).vers(), Vers::Bits(0b1010));
        assert_eq!(run(true, vec![]).vers(), Vers::Bits(1));
        assert_eq!(run(true, vec![0, 1]).vers(), Vers::Bits(0b101));
        assert_eq!(Run::decode_vers_bits(0b101), Ok((true, vec![0, 1])));
        let wide = run(false, vec![1; 62]);
        assert_eq!(
            Run::decode_vers_bits(match wide.vers() {
                Vers::Bits(b) => b,
                Vers::Blob(_) => panic!("62 slots fit"),
            }),
            Ok((false, vec![1; 62]))
        );
        // Otherwise a blob.
        for r in [run(false, vec![2, 1]), run(false, vec![1; 63])] {
            assert_eq!(r.vers(), Vers::Blob(r.encode_vers()));
        }
        assert!(Run::decode_vers_bits(0).is_err(), "empty run");
        assert!(Run::decode_vers_bits(-1).is_err(), "bit 63");
    }
}
