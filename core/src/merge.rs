//! cr-sqlite's merge rules (spec §8) as pure decisions on plain values.
//!
//! The extension reads the local state, asks these functions what to do, and
//! performs the writes. Keeping the decisions here lets them be tested and
//! property-tested without a database.

use std::cmp::Ordering;

/// The `cid` of a row's sentinel clock.
pub const SENTINEL: &str = "-1";

/// The largest clock value (db_version, col_version, causal length, seq)
/// the extension stores or accepts: 2^62. Incoming changes above it are
/// refused, so that the `+ 1`s of later local writes can never overflow a
/// 64-bit integer (2^62 further writes are out of reach).
pub const MAX_CLOCK: i64 = 1 << 62;

/// What a change does to its row, decided from causal lengths alone (§8.1, §8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowDecision {
    /// The change is older than what we have, or already applied.
    Ignore,
    /// Delete the row and store this (even) causal length in the sentinel.
    Delete { cl: i64 },
    /// A sentinel-only change that creates or resurrects the row with this cl.
    Sentinel { cl: i64 },
    /// A cell change. When `sentinel_cl` is set, the row is first created or
    /// resurrected with that causal length. When `unconditional` is set the
    /// cell wins without a per-cell comparison.
    Cell {
        sentinel_cl: Option<i64>,
        unconditional: bool,
    },
}

/// Decide what an incoming change does, given the local causal length of its
/// row (sentinel cl, else 1 if any clock row exists, else 0).
///
/// Unlike cr-sqlite 0.16 (§15 Q13), a delete or sentinel change stores its
/// `cl`, not its `col_version`.
pub fn decide_row(local_cl: i64, is_sentinel: bool, change_cl: i64) -> RowDecision {
    if change_cl < local_cl {
        return RowDecision::Ignore;
    }
    if change_cl % 2 == 0 {
        if change_cl == local_cl {
            return RowDecision::Ignore;
        }
        return RowDecision::Delete { cl: change_cl };
    }
    if is_sentinel {
        if change_cl == local_cl {
            return RowDecision::Ignore;
        }
        return RowDecision::Sentinel { cl: change_cl };
    }
    let resurrect = change_cl > local_cl;
    let sentinel_cl = (resurrect && (local_cl != 0 || change_cl > 1)).then_some(change_cl);
    RowDecision::Cell {
        sentinel_cl,
        unconditional: resurrect || local_cl == 0,
    }
}

/// Per-cell conflict resolution at equal causal length (§8.2).
///
/// `local_version` is the local clock's col_version (None: no clock row).
/// `value_cmp` compares incoming against local value; `site_cmp` compares
/// incoming against local site id bytes. Both are only called when needed.
pub fn cell_wins(
    local_version: Option<i64>,
    incoming_version: i64,
    value_cmp: impl FnOnce() -> Ordering,
    site_cmp: impl FnOnce() -> Ordering,
    merge_equal_values: bool,
) -> bool {
    let Some(local) = local_version else {
        return true;
    };
    match incoming_version.cmp(&local) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => match value_cmp() {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => merge_equal_values && site_cmp() == Ordering::Greater,
        },
    }
}

/// Causal length after a local insert of a row whose current cl is `cl`
/// (0 or odd → +2 if odd, +1 if even; a new row gets 1).
pub fn cl_after_local_insert(cl: Option<i64>) -> i64 {
    match cl {
        None => 1,
        Some(c) if c % 2 == 0 => c + 1,
        Some(c) => c + 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_or_equal_deletes_are_ignored_and_newer_ones_apply() {
        assert_eq!(decide_row(3, false, 2), RowDecision::Ignore);
        assert_eq!(decide_row(2, true, 2), RowDecision::Ignore);
        assert_eq!(decide_row(1, true, 2), RowDecision::Delete { cl: 2 });
        assert_eq!(decide_row(0, false, 4), RowDecision::Delete { cl: 4 });
    }

    #[test]
    fn sentinels_create_or_resurrect_only_when_newer() {
        assert_eq!(decide_row(1, true, 1), RowDecision::Ignore);
        assert_eq!(decide_row(0, true, 1), RowDecision::Sentinel { cl: 1 });
        assert_eq!(decide_row(2, true, 3), RowDecision::Sentinel { cl: 3 });
    }

    #[test]
    fn cell_changes_follow_the_causal_length_table() {
        // unknown row, cl 1: cell wins, no sentinel
        assert_eq!(
            decide_row(0, false, 1),
            RowDecision::Cell {
                sentinel_cl: None,
                unconditional: true
            }
        );
        // unknown row, cl 3: sentinel first
        assert_eq!(
            decide_row(0, false, 3),
            RowDecision::Cell {
                sentinel_cl: Some(3),
                unconditional: true
            }
        );
        // deleted row, newer odd cl: resurrect
        assert_eq!(
            decide_row(2, false, 3),
            RowDecision::Cell {
                sentinel_cl: Some(3),
                unconditional: true
            }
        );
        // same cl: per-cell comparison
        assert_eq!(
            decide_row(1, false, 1),
            RowDecision::Cell {
                sentinel_cl: None,
                unconditional: false
            }
        );
    }

    #[test]
    fn cell_ties_break_on_version_then_value_then_optional_site() {
        let eq = || Ordering::Equal;
        let gt = || Ordering::Greater;
        let lt = || Ordering::Less;
        assert!(cell_wins(None, 1, eq, eq, false));
        assert!(cell_wins(Some(1), 2, lt, lt, false));
        assert!(!cell_wins(Some(3), 2, gt, gt, false));
        assert!(cell_wins(Some(2), 2, gt, lt, false));
        assert!(!cell_wins(Some(2), 2, eq, gt, false));
        assert!(cell_wins(Some(2), 2, eq, gt, true));
        assert!(!cell_wins(Some(2), 2, eq, lt, true));
    }

    #[test]
    fn local_reinsert_makes_the_causal_length_odd_again() {
        assert_eq!(cl_after_local_insert(None), 1);
        assert_eq!(cl_after_local_insert(Some(2)), 3);
        assert_eq!(cl_after_local_insert(Some(1)), 3);
    }
}
