//! The stored form against the explicit map, on several rows sharing one
//! seq counter as the rows of a database do.

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

/// How many rows a history writes.
const ROWS: usize = 3;

/// One operation of a random history. Positions are handed out by the
/// test as the extension hands them out: a version per operation (or
/// several operations per version), seqs increasing across every row.
#[derive(Debug, Clone)]
enum Op {
    /// Write these slots (−1 = sentinel) of a row together, in this order
    /// at consecutive seqs (an insert, a full update in slot order; a
    /// primary-key move or a merge in another order) ...
    Together(usize, Vec<i32>, i64),
    /// ... or with a seq between each two, taken by a write of the same
    /// slot to the next row (rows merged from interleaved changes).
    Apart(usize, Vec<i32>, i64),
    /// A delete: cells go, then the sentinel is written.
    Delete(usize, i64),
    /// Cells cleared alone (the first half of a delete).
    ClearCells(usize),
    /// A seq taken by a write elsewhere.
    Skip,
    /// A new transaction (version).
    NextVersion,
}

/// The next clock the test hands out.
fn next_clock(v: i64, seq: &mut i64, cv: &mut i64, site: i64) -> Clock {
    *seq += 1;
    *cv += 1;
    Clock {
        // Now and then a zeroed cell (col_version 0, §8.1), and often 1.
        col_version: match *cv % 7 {
            0 => 0,
            1..=3 => 1,
            _ => *cv,
        },
        db_version: v,
        site,
        seq: *seq,
    }
}

fn op() -> impl Strategy<Value = Op> {
    let slots =
        prop::collection::btree_set(-1i32..6, 1..6).prop_map(|s| s.into_iter().collect::<Vec<_>>());
    let row = 0..ROWS;
    prop_oneof![
        (row.clone(), slots.clone(), 0i64..3).prop_map(|(r, s, site)| Op::Together(r, s, site)),
        (row.clone(), slots.clone().prop_shuffle(), 0i64..3)
            .prop_map(|(r, s, site)| Op::Together(r, s, site)),
        (row.clone(), slots, 0i64..3).prop_map(|(r, s, site)| Op::Apart(r, s, site)),
        (row.clone(), 0i64..3).prop_map(|(r, site)| Op::Delete(r, site)),
        row.prop_map(Op::ClearCells),
        Just(Op::Skip),
        Just(Op::NextVersion),
    ]
}

/// A run's seq range at its version.
fn range(run: &Run) -> (i64, i64, i64) {
    (run.db_version, run.members[0].seq, run.seq())
}

/// No two runs of one version overlap: the change scan's ordering argument.
fn disjoint<'a>(runs: impl Iterator<Item = &'a Run>) -> Result<(), TestCaseError> {
    let mut ranges: Vec<(i64, i64, i64)> = runs.map(range).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        prop_assert!(
            w[0].0 != w[1].0 || w[0].2 < w[1].1,
            "runs {:?} and {:?} overlap",
            w[0],
            w[1]
        );
    }
    Ok(())
}

/// A run stored and read back is the same run, in every form.
fn check_run(run: &Run, cl: i64) -> Result<(), TestCaseError> {
    prop_assert!(!run.is_empty(), "an empty run is stored");
    let seqs: Vec<i64> = run.clocks(cl).map(|(_, c)| c.seq).collect();
    prop_assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in seq order: {:?}",
        run
    );
    let mut read = Vec::new();
    let vers = run.vers();
    let as_ref = match &vers {
        Vers::Bits(b) => VersRef::Bits(*b),
        Vers::Blob(b) => VersRef::Blob(b),
    };
    Run::decode(as_ref, run.seq(), &mut read).unwrap();
    prop_assert_eq!(&read, &run.members, "{:?} read back", vers);
    prop_assert_eq!(Run::count(as_ref).unwrap(), run.len());
    let offsets = run.encode_offsets();
    Run::decode(VersRef::Blob(&offsets), run.seq(), &mut read).unwrap();
    prop_assert_eq!(&read, &run.members, "offsets form {:?} read back", offsets);
    Ok(())
}

/// Run a history on the stored forms and on the maps; after every step
/// they must agree, each stored form must be canonical and read back, and
/// no two runs may overlap.
fn check_history(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut stored: Vec<Stored> = vec![Stored::default(); ROWS];
    let mut model: Vec<RowClocks> = vec![RowClocks::new(); ROWS];
    let (mut v, mut seq, mut cv) = (1i64, 0i64, 1i64);
    for op in ops {
        match op {
            Op::NextVersion => {
                v += 1;
                seq = 0;
            }
            Op::Skip => seq += 1,
            Op::Together(r, slots, site) => {
                let writes: Vec<(i32, Clock)> = slots
                    .iter()
                    .map(|s| (*s, next_clock(v, &mut seq, &mut cv, *site)))
                    .collect();
                stored[*r].write(&writes);
                model_write(&mut model[*r], &writes);
            }
            Op::Apart(r, slots, site) => {
                let other = (r + 1) % ROWS;
                let mut writes = Vec::new();
                for (k, s) in slots.iter().enumerate() {
                    if k > 0 {
                        let w = [(*s, next_clock(v, &mut seq, &mut cv, *site))];
                        stored[other].write(&w);
                        model_write(&mut model[other], &w);
                    }
                    writes.push((*s, next_clock(v, &mut seq, &mut cv, *site)));
                }
                stored[*r].write(&writes);
                model_write(&mut model[*r], &writes);
            }
            Op::ClearCells(r) => {
                stored[*r].clear_cells();
                model_clear(&mut model[*r]);
            }
            Op::Delete(r, site) => {
                stored[*r].clear_cells();
                model_clear(&mut model[*r]);
                let s = [(SENTINEL_SLOT, next_clock(v, &mut seq, &mut cv, *site))];
                stored[*r].write(&s);
                model_write(&mut model[*r], &s);
            }
        }
        for (s, m) in stored.iter().zip(&model) {
            prop_assert_eq!(s.expand(), m.clone(), "after {:?}", op);
            prop_assert_eq!(s.cl, model_cl(m), "cl after {:?}", op);
            if let Some(run) = &s.run {
                check_run(run, s.cl)?;
                for m in &run.members {
                    prop_assert!(!s.cells.contains_key(&m.slot), "slot {} twice", m.slot);
                }
            }
        }
        disjoint(stored.iter().filter_map(|s| s.run.as_ref()))?;
        // The conversion from the explicit state keeps it exactly, and its
        // runs overlap no other row's either.
        let converted: Vec<Stored> = model.iter().map(Stored::from_clocks).collect();
        for (s, m) in converted.iter().zip(&model) {
            prop_assert_eq!(s.expand(), m.clone(), "converted after {:?}", op);
            prop_assert_eq!(s.cl, model_cl(m));
            if let Some(run) = &s.run {
                check_run(run, s.cl)?;
            }
        }
        disjoint(converted.iter().filter_map(|s| s.run.as_ref()))?;
    }
    Ok(())
}

proptest! {
    #[test]
    fn stored_form_equals_the_explicit_map(ops in prop::collection::vec(op(), 1..60)) {
        check_history(&ops)?;
    }

    #[test]
    fn slot_form_blobs_round_trip(sentinel: bool, mut versions in prop::collection::vec(0i64..=MAX_CLOCK, 0..70), last in -1000i64..1000) {
        if let Some(v) = versions.last_mut() { *v = (*v).max(1); }
        prop_assume!(sentinel || !versions.is_empty());
        let blob = postcard::to_allocvec(&(sentinel, versions.iter().map(|v| *v as u64).collect::<Vec<_>>())).unwrap();
        let mut read = Vec::new();
        Run::decode(VersRef::Blob(&blob), last, &mut read).unwrap();
        let run = Run { db_version: 1, site: 0, members: read };
        prop_assert_eq!(run.seq(), last);
        let w = versions.len() as i64;
        for m in &run.members {
            prop_assert_eq!(m.seq, last - (w - 1 - i64::from(m.slot)));
            if m.slot >= 0 {
                prop_assert_eq!(m.col_version, versions[m.slot as usize]);
            }
        }
        // Written again, it is the same blob (or the INTEGER of it).
        match run.vers() {
            Vers::Blob(b) => prop_assert_eq!(b, blob),
            Vers::Bits(_) => prop_assert!(versions.iter().all(|v| *v <= 1) && versions.len() <= 62),
        }
    }

    #[test]
    fn decoding_any_bytes_never_panics(blob in prop::collection::vec(any::<u8>(), 0..40), last: i64, tagged: bool) {
        let mut blob = blob;
        if tagged { blob.insert(0, OFFSETS_TAG); }
        let mut out = Vec::new();
        if Run::decode(VersRef::Blob(&blob), last, &mut out).is_ok() {
            // What reads is a run: seqs increasing, slots once, ending at `last`.
            prop_assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
            prop_assert_eq!(out.last().map(|m| m.seq), Some(last));
        }
        let _ = Run::count(VersRef::Blob(&blob));
        let _ = Run::decode(VersRef::Bits(last), last, &mut out);
    }
}

fn c(col_version: i64, db_version: i64, seq: i64) -> Clock {
    Clock {
        col_version,
        db_version,
        site: 0,
        seq,
    }
}

fn blob_of(run: &Run) -> Vec<u8> {
    match run.vers() {
        Vers::Blob(b) => b,
        Vers::Bits(b) => panic!("an INTEGER {b:#b}, not a blob"),
    }
}

#[test]
fn an_insert_of_three_columns_is_one_integer_and_no_cell() {
    let mut s = Stored::default();
    s.write(&[(0, c(1, 7, 3)), (1, c(1, 7, 4)), (2, c(1, 7, 5))]);
    assert!(s.cells.is_empty());
    let run = s.run.as_ref().unwrap();
    assert_eq!(run.vers(), Vers::Bits(0b1110));
    assert_eq!((run.seq(), s.cl), (5, 1));
    // An update of one column moves it out; the run keeps the others.
    s.write(&[(1, c(2, 8, 1))]);
    assert_eq!(s.cells.len(), 1);
    assert_eq!(s.run.as_ref().unwrap().vers(), Vers::Bits(0b1010));
    // A delete leaves the sentinel alone, in the run.
    s.clear_cells();
    s.write(&[(SENTINEL_SLOT, c(2, 9, 1))]);
    assert!(s.cells.is_empty());
    assert_eq!(s.run.as_ref().unwrap().vers(), Vers::Bits(1));
    assert_eq!((s.cl, s.run.as_ref().unwrap().seq()), (2, 1));
}

#[test]
fn a_row_merged_as_a_and_c_then_b_keeps_a_and_c_in_its_run() {
    // The bench's merge: a and c arrive at one version, at consecutive
    // seqs of the receiver; b later, elsewhere.
    let mut s = Stored::default();
    s.write(&[(0, c(1, 4, 10))]);
    s.write(&[(2, c(1, 4, 11))]);
    assert!(s.cells.is_empty(), "c joined the run");
    let run = s.run.clone().unwrap();
    assert_eq!(blob_of(&run), vec![OFFSETS_TAG, 1 << 2, 3 << 2]);
    s.write(&[(1, c(2, 4, 900))]);
    assert_eq!(s.run, Some(run), "b, far away, is a cell");
    assert_eq!(s.cells.keys().copied().collect::<Vec<_>>(), vec![1]);
    // A primary-key move writes in column-name order: one run too.
    let mut m = Stored::default();
    m.write(&[
        (2, c(3, 5, 1)),
        (0, c(1, 5, 2)),
        (SENTINEL_SLOT, c(1, 5, 3)),
        (1, c(1, 5, 4)),
    ]);
    assert!(m.cells.is_empty());
    let run = m.run.as_ref().unwrap();
    // slot 2 at version 3; slot 0; the sentinel; slot 1.
    assert_eq!(
        blob_of(run),
        vec![OFFSETS_TAG, 3 << 2 | 2, 3, 1 << 2, 0, 2 << 2]
    );
    let mut read = Vec::new();
    Run::decode(VersRef::Blob(&blob_of(run)), 4, &mut read).unwrap();
    assert_eq!(read, run.members);
}

#[test]
fn clocks_given_out_of_seq_order_form_the_run_they_would_in_order() {
    // A primary-key move hands its clocks over in slot order
    // (`Pending::into_writes`), not in the order it took their seqs.
    let in_seq_order = [
        (2, c(3, 5, 1)),
        (0, c(1, 5, 2)),
        (SENTINEL_SLOT, c(1, 5, 3)),
        (1, c(1, 5, 4)),
    ];
    let mut by_slot = in_seq_order;
    by_slot.sort_by_key(|(slot, _)| *slot);
    let (mut a, mut b) = (Stored::default(), Stored::default());
    a.write(&in_seq_order);
    b.write(&by_slot);
    assert!(b.cells.is_empty(), "every clock in the run: {b:?}");
    assert_eq!(a, b);
}

#[test]
fn stored_values_of_the_previous_format_read_as_before() {
    let mut read = Vec::new();
    let m = |slot, col_version, seq| Member {
        slot,
        col_version,
        seq,
    };
    // The INTEGER: an insert of three columns, then with b gone.
    Run::decode(VersRef::Bits(0b1110), 5, &mut read).unwrap();
    assert_eq!(read, vec![m(0, 1, 3), m(1, 1, 4), m(2, 1, 5)]);
    Run::decode(VersRef::Bits(0b1010), 5, &mut read).unwrap();
    assert_eq!(read, vec![m(0, 1, 3), m(2, 1, 5)]);
    Run::decode(VersRef::Bits(0b101), 9, &mut read).unwrap();
    assert_eq!(read, vec![m(SENTINEL_SLOT, 1, 7), m(1, 1, 9)]);
    // The postcard blob.
    Run::decode(VersRef::Blob(&[0, 3, 1, 1, 1]), 5, &mut read).unwrap();
    assert_eq!(read, vec![m(0, 1, 3), m(1, 1, 4), m(2, 1, 5)]);
    Run::decode(VersRef::Blob(&[1, 2, 0, 7]), 20, &mut read).unwrap();
    assert_eq!(read, vec![m(SENTINEL_SLOT, 1, 18), m(1, 7, 20)]);
    Run::decode(VersRef::Blob(&[1, 0]), 20, &mut read).unwrap();
    assert_eq!(read, vec![m(SENTINEL_SLOT, 1, 20)]);
    // Written again, each is the same value.
    let run = |members: Vec<Member>| Run {
        db_version: 1,
        site: 0,
        members,
    };
    assert_eq!(run(vec![m(0, 1, 3), m(2, 1, 5)]).vers(), Vers::Bits(0b1010));
    assert_eq!(
        run(vec![m(SENTINEL_SLOT, 1, 18), m(1, 7, 20)]).vers(),
        Vers::Blob(vec![1, 2, 0, 7])
    );
    let wide = run((0..62).map(|i| m(i, 1, i64::from(i))).collect());
    assert!(matches!(wide.vers(), Vers::Bits(_)), "62 slots fit");
    let wider = run((0..63).map(|i| m(i, 1, i64::from(i))).collect());
    assert!(
        matches!(wider.vers(), Vers::Blob(b) if b[0] == 0),
        "63 do not"
    );
}

#[test]
fn malformed_values_are_refused() {
    let blobs: [(&[u8], &str); 12] = [
        (&[0, 0], "empty run"),
        (&[0, 2, 1, 0], "trailing zero slot"),
        (&[0, 1, 1, 9], "trailing bytes"),
        (&[3], "not a form"),
        (&[], "nothing"),
        (&[OFFSETS_TAG], "empty offsets run"),
        (&[OFFSETS_TAG, 4, 4], "slot twice"),
        (&[OFFSETS_TAG, 5, 1], "gap first"),
        (&[OFFSETS_TAG, 4, 9, 0], "gap 0"),
        (&[OFFSETS_TAG, 2, 1], "sentinel version"),
        (&[OFFSETS_TAG, 6, 0], "version 0"),
        (&[OFFSETS_TAG, 4, 0x80], "cut varint"),
    ];
    let mut out = Vec::new();
    for (blob, what) in blobs {
        assert!(
            Run::decode(VersRef::Blob(blob), 0, &mut out).is_err(),
            "{what}"
        );
    }
    for bits in [0, -1] {
        assert!(
            Run::decode(VersRef::Bits(bits), 0, &mut out).is_err(),
            "{bits}"
        );
    }
}
