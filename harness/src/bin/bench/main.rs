//! Release-mode benchmark: plain SQLite against the same table as a CRR in
//! each layout, then the streams, compaction and `lag_changes`.
//!
//! Run with `make bench` (or `cd harness && cargo run --release --bin bench --
//! [OPTIONS]`; `--help` lists them). Every database is a file in a temporary
//! directory, in WAL mode with `synchronous=NORMAL` and SQLite's default page
//! cache. The plain database is opened without the extension, so it is pure
//! SQLite.
//!
//! Parts (`--only` runs one):
//! - `crr` ([`compare`]): for each `--rows` count, a table of plain vs each
//!   `--layouts` layout: insert, update, reading `crsql_changes`, merging into
//!   a fresh replica through `crsql_changes` and through the streams, pack
//!   rate, file sizes, the ratios to plain and issue 12's targets, and the
//!   peak memory of each phase; beside each layout's insert and apply,
//!   SQLite's floor for the same writes without the extension ([`floor`]);
//! - `streams` ([`streams`]): packing and applying a `--stream-changes`
//!   backlog, package sizes, producer memory, `LIMIT 1` cost, one large
//!   transaction sent in parts;
//! - `compaction` ([`compaction`]): deleted rows' metadata before and after
//!   `crsql_compact()`, with the first `--rows` count;
//! - `lag` ([`lag`]): what `crsql_streams.lag_changes` costs on the
//!   `--stream-changes` backlog.
//!
//! `--pragma NAME=VALUE` (repeatable) runs `PRAGMA NAME=VALUE` on every
//! connection right after opening it, e.g. `--pragma temp_store=memory` to
//! keep statement journals in memory.

mod common;
mod compaction;
mod compare;
mod floor;
mod lag;
mod streams;

use std::process::ExitCode;

use common::BoxResult;

const USAGE: &str = "usage: bench [--rows N[,N...]] [--layouts L[,L...]] [--pragma NAME=VALUE]... \
    [--stream-changes N] [--only crr|streams|compaction|lag]\n\
    (defaults: --rows 100000,1000000 --layouts crsqlite,compact --stream-changes 1000000;\n\
    a layout the extension does not have yet shows as n/a)";

pub struct Options {
    /// Row counts of the comparison, one table each; the compaction part
    /// uses the first.
    pub rows: Vec<usize>,
    /// CRR layouts compared with plain SQLite.
    pub layouts: Vec<String>,
    pub pragmas: Vec<String>,
    pub stream_changes: usize,
    pub only: Option<String>,
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{flag}: not a number: {v}"))
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        rows: vec![100_000, 1_000_000],
        layouts: compare::LAYOUTS.iter().map(|l| l.to_string()).collect(),
        pragmas: Vec::new(),
        stream_changes: 1_000_000,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => {
                let v = args.next().ok_or("--rows needs a value")?;
                opts.rows = v
                    .split(',')
                    .map(|n| number("--rows", n))
                    .collect::<Result<_, _>>()?;
                if opts.rows.contains(&0) {
                    return Err("--rows: every count must be at least 1".into());
                }
            }
            "--layouts" => {
                let v = args.next().ok_or("--layouts needs a value")?;
                opts.layouts = v.split(',').map(String::from).collect();
                if let Some(bad) = opts
                    .layouts
                    .iter()
                    .find(|l| !compare::LAYOUTS.contains(&l.as_str()))
                {
                    return Err(format!(
                        "--layouts: expected some of {}, got {bad}",
                        compare::LAYOUTS.join(", ")
                    ));
                }
            }
            "--pragma" => {
                let v = args.next().ok_or("--pragma needs NAME=VALUE")?;
                let ok = v.split_once('=').is_some_and(|(name, value)| {
                    !name.is_empty()
                        && !value.is_empty()
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_=.-".contains(c))
                });
                if !ok {
                    return Err(format!("--pragma: expected NAME=VALUE, got {v}"));
                }
                opts.pragmas.push(v);
            }
            "--stream-changes" => {
                let v = args.next().ok_or("--stream-changes needs a value")?;
                opts.stream_changes = number("--stream-changes", &v)?;
                if opts.stream_changes < 3000 {
                    return Err("--stream-changes must be at least 3000".into());
                }
            }
            "--only" => {
                let v = args
                    .next()
                    .ok_or("--only needs crr, streams, compaction or lag")?;
                if !["crr", "streams", "compaction", "lag"].contains(&v.as_str()) {
                    return Err(format!(
                        "--only: expected crr, streams, compaction or lag, got {v}"
                    ));
                }
                opts.only = Some(v);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let start = std::time::Instant::now();
    let result = (|| -> BoxResult<()> {
        let part = |name: &str| opts.only.is_none() || opts.only.as_deref() == Some(name);
        if part("crr") {
            compare::run(&opts)?;
        }
        if part("streams") {
            streams::run(&opts)?;
        }
        if part("compaction") {
            compaction::run(&opts)?;
        }
        if part("lag") {
            lag::run(&opts)?;
        }
        println!();
        println!("bench: done in {:.0} s", start.elapsed().as_secs_f64());
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
