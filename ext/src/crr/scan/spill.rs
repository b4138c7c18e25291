//! A transaction too large to sort in memory, sorted in bounded runs: each
//! run of at most the in-memory cap is sorted by `(seq, order)` and written
//! to a temporary file ([`temporary_file`]), the last one kept in memory; reading merges the runs through a heap (docs/streams.md,
//! "Reading in position order"). The rows come from the clock table read in
//! key order (steps, not seeks), which is what makes this faster than
//! SQLite's sorter fed one seek per row.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Cell;

/// Bytes of a [`Cell`] in the file: five i64 and two 32-bit fields.
const CELL_BYTES: usize = 48;

/// Rows read from the file at once per run (48 KiB).
const RUN_BUFFER: usize = 1024;

/// One sorted run: rows in `buf` from `at`, then the file's bytes
/// `next..end`.
struct Run {
    buf: Vec<Cell>,
    at: usize,
    next: u64,
    end: u64,
}

/// The runs of one transaction, written, then merged.
pub(super) struct Spill {
    file: File,
    /// The file's name, removed on drop (on Unix it is removed at once:
    /// the open file lives on without a name, and nothing is left behind by
    /// a crash).
    path: PathBuf,
    /// Bytes written: the next run's offset.
    written: u64,
    /// Rows taken so far: added to a run's `order`s (which count from its
    /// own first row) so that ties of seq keep the index order across runs.
    rows: u64,
    runs: Vec<Run>,
    /// `(seq, order, run)` of each run's next row.
    heap: BinaryHeap<Reverse<(i64, u32, usize)>>,
}

impl Spill {
    /// A new temporary file (removed when dropped).
    pub(super) fn new() -> io::Result<Spill> {
        let (file, path) = temporary_file()?;
        Ok(Spill {
            file,
            path,
            written: 0,
            rows: 0,
            runs: Vec::new(),
            heap: BinaryHeap::new(),
        })
    }

    /// Number the rows of a run after the rows taken before and sort it.
    fn sort(&mut self, rows: &mut [Cell]) -> io::Result<()> {
        let base = self.rows;
        self.rows += rows.len() as u64;
        if self.rows > u64::from(u32::MAX) {
            return Err(io::Error::other(
                "more than 4,294,967,295 clock rows in one transaction",
            ));
        }
        for c in rows.iter_mut() {
            c.order += base as u32;
        }
        rows.sort_unstable_by_key(|c| (c.seq, c.order));
        Ok(())
    }

    /// Sort `rows` (their `order`s counted from 0) and write them as a run;
    /// `rows` is left empty (its capacity kept).
    pub(super) fn write_run(&mut self, rows: &mut Vec<Cell>) -> io::Result<()> {
        self.sort(rows)?;
        let start = self.written;
        let mut out = BufWriter::with_capacity(CELL_BYTES * RUN_BUFFER, &mut self.file);
        for c in rows.iter() {
            out.write_all(&encode(c))?;
        }
        out.flush()?;
        drop(out);
        self.written += (rows.len() * CELL_BYTES) as u64;
        self.runs.push(Run {
            buf: Vec::new(),
            at: 0,
            next: start,
            end: self.written,
        });
        rows.clear();
        Ok(())
    }

    /// Take `rows` as the last run (kept in memory) and start merging.
    pub(super) fn finish(&mut self, mut rows: Vec<Cell>) -> io::Result<()> {
        self.sort(&mut rows)?;
        self.runs.push(Run {
            buf: rows,
            at: 0,
            next: 0,
            end: 0,
        });
        for i in 0..self.runs.len() {
            self.push_head(i)?;
        }
        Ok(())
    }

    /// Put run `i`'s next row (reading the file if its buffer is used up)
    /// on the heap.
    fn push_head(&mut self, i: usize) -> io::Result<()> {
        let run = &mut self.runs[i];
        if run.at == run.buf.len() && run.next < run.end {
            let n = ((run.end - run.next) as usize).min(CELL_BYTES * RUN_BUFFER);
            let mut bytes = vec![0; n];
            self.file.seek(SeekFrom::Start(run.next))?;
            self.file.read_exact(&mut bytes)?;
            run.next += n as u64;
            run.buf.clear();
            run.buf.extend(bytes.chunks_exact(CELL_BYTES).map(decode));
            run.at = 0;
        }
        if let Some(c) = run.buf.get(run.at) {
            self.heap.push(Reverse((c.seq, c.order, i)));
        }
        Ok(())
    }

    /// The next row in `(seq, order)` order; None after the last.
    pub(super) fn pop(&mut self) -> io::Result<Option<Cell>> {
        let Some(Reverse((_, _, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let run = &mut self.runs[i];
        let cell = run.buf[run.at];
        run.at += 1;
        self.push_head(i)?;
        Ok(Some(cell))
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if !cfg!(unix) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new file in the temporary directory (`std::env::temp_dir`: `TMPDIR`
/// on Unix), named by the process, a counter and the clock, created
/// exclusively; on Unix its name is removed at once. Not the `tempfile`
/// crate: where `O_TMPFILE` fails it draws random names from a thread-local
/// generator seeded from `std::thread::current()`, which registers a
/// thread-exit destructor in this library; SQLite unloads the extension
/// when the connection closes, and the thread's exit then jumped into
/// unmapped code (found by `harness/tests/pack_order.rs`, SIGSEGV).
fn temporary_file() -> io::Result<(File, PathBuf)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let mut tries = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            ".crsql_stream-sort-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                if cfg!(unix) {
                    if let Err(e) = std::fs::remove_file(&path) {
                        drop(file);
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                }
                return Ok((file, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

fn encode(c: &Cell) -> [u8; CELL_BYTES] {
    let mut b = [0; CELL_BYTES];
    for (i, v) in [c.seq, c.key, c.col_version, c.site, c.cl]
        .into_iter()
        .enumerate()
    {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b[40..44].copy_from_slice(&c.col.to_le_bytes());
    b[44..48].copy_from_slice(&c.order.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Cell {
    let i64_at = |i: usize| {
        let mut x = [0; 8];
        x.copy_from_slice(&b[i * 8..i * 8 + 8]);
        i64::from_le_bytes(x)
    };
    let mut x = [0; 4];
    x.copy_from_slice(&b[40..44]);
    let col = i32::from_le_bytes(x);
    x.copy_from_slice(&b[44..48]);
    Cell {
        seq: i64_at(0),
        key: i64_at(1),
        col_version: i64_at(2),
        site: i64_at(3),
        cl: i64_at(4),
        col,
        order: u32::from_le_bytes(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(seq: i64, key: i64) -> Cell {
        Cell {
            seq,
            key,
            col_version: -seq,
            site: key % 3,
            cl: 1 + key % 2,
            col: (key % 5) as i32 - 2,
            order: 0,
        }
    }

    /// Runs merged give every row once in (seq, order) order, ties of seq
    /// in the order the rows were taken, whatever the run boundaries.
    #[test]
    fn runs_merge_in_seq_then_taken_order() {
        // Keys in taken order; seqs collide across runs (k % 7).
        let taken: Vec<Cell> = (0..5000).map(|k| cell((k * 7919) % 4001, k)).collect();
        for run in [1, 3, 1000, 2048, 4999, 5000] {
            let mut spill = Spill::new().expect("temporary file");
            let mut rows = Vec::new();
            for c in &taken {
                if rows.len() == run {
                    spill.write_run(&mut rows).expect("write");
                }
                let mut c = *c;
                c.order = rows.len() as u32;
                rows.push(c);
            }
            spill.finish(rows).expect("finish");
            let mut got = Vec::new();
            while let Some(c) = spill.pop().expect("read") {
                got.push((c.seq, c.key, c.col_version, c.site, c.cl, c.col));
            }
            let mut want: Vec<_> = taken
                .iter()
                .map(|c| (c.seq, c.key, c.col_version, c.site, c.cl, c.col))
                .collect();
            want.sort_by_key(|w| w.0); // stable: ties keep the taken order
            assert_eq!(got, want, "runs of {run}");
        }
    }
}
