//! Child process of `tests/convert_crash.rs`, killed with SIGKILL at random
//! moments.
//!
//! `convert_child <db> <table>...` opens `<db>` and converts the tables one
//! after the other to the layout each is not in, round and round, for ever:
//! `start <table> <layout>` before a conversion, `done <table> <layout>`
//! once `crsql_convert_layout` returned (committed). Any error aborts with
//! exit code 2.

use std::path::Path;

use crsql_stream_harness::{open, Layout};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: convert_child <db> <table>...");
        std::process::exit(64);
    }
    let conn = open(Path::new(&args[1]));
    println!("ready");
    loop {
        for table in &args[2..] {
            let to = Layout::of(&conn, table).other();
            println!("start {table} {}", to.name());
            if let Err(e) = to.convert(&conn, table) {
                eprintln!("convert_child: converting {table} to {}: {e}", to.name());
                std::process::exit(2);
            }
            println!("done {table} {}", to.name());
        }
    }
}
