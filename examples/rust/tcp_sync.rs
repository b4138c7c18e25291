//! Two processes sync a table both ways over TCP through the streams, and
//! survive cut connections and a killed peer.
//!
//! Built by the `crsql-stream` crate (`bindings/rust`), from its directory:
//!
//! ```text
//! cargo run --release --example tcp_sync -- demo [--rows 300] [--cuts 3]
//! cargo run --release --example tcp_sync -- listen  a.db 127.0.0.1:7000 [--rows N]
//! cargo run --release --example tcp_sync -- connect b.db 127.0.0.1:7000 [--rows N]
//! ```
//!
//! `listen` and `connect` are the two peers: each writes `--rows` rows of its
//! own (one small transaction every few milliseconds, connected or not, and
//! now and then a conflicting update of the shared row), and syncs whenever a
//! connection is up. They stop cleanly when their standard input closes.
//! `demo` runs both as child processes with a TCP proxy between them, cuts the
//! connection a few times, kills and restarts one peer, then checks that both
//! databases end with the same rows.
//!
//! Wire protocol: length-prefixed frames, `u32` big-endian length of what
//! follows, one kind byte, the payload:
//! - `H` hello: this site's 16-byte id (first frame each way);
//! - `P` package: the bytes of one package, as the outbound stream made it;
//! - `A` ack: the receiver's `last_applied` as text, e.g. `[12,3]`.
//!
//! After each (re)connection both sides say hello, report where their inbound
//! stream is (an ack), and the senders start again after what was
//! acknowledged; a package already applied is a no-op, so nothing is lost or
//! applied twice.

use std::error::Error;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crsql_stream_rs::{self as crsql, Cursor, Inbound, InboundOptions, Outbound, OutboundOptions};
use rusqlite::Connection;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const TICK: Duration = Duration::from_millis(5);
const MAX_FRAME: usize = 64 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| -> Result<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).ok_or("missing value")?.parse()?),
            None => Ok(default),
        }
    };
    let rows = flag("--rows", 300)?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(rows, flag("--cuts", 3)?),
        Some(role @ ("listen" | "connect")) if args.len() >= 3 => {
            peer(role, Path::new(&args[1]), &args[2], rows)
        }
        _ => Err("usage: tcp_sync demo [--rows N] [--cuts K] | tcp_sync listen|connect DB ADDR [--rows N]".into()),
    }
}

// ---------------------------------------------------------------- peers ---

fn peer(role: &str, db: &Path, addr: &str, rows: usize) -> Result<()> {
    let name = if role == "listen" { "a" } else { "b" };
    let conn = Connection::open(db)?;
    crsql::load(&conn)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY NOT NULL, origin TEXT, n INTEGER);
         SELECT crsql_as_crr('items');",
    )?;
    let mut writer = Writer::new(&conn, name, rows)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            stop.store(true, Ordering::SeqCst);
        });
    }
    let listener = if role == "listen" {
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        println!("listening on {}", l.local_addr()?);
        Some(l)
    } else {
        None
    };
    io::stdout().flush()?;

    while !stop.load(Ordering::SeqCst) {
        writer.tick()?;
        let stream = match &listener {
            Some(l) => match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(TICK);
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
            None => match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(_) => {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        stream.set_nonblocking(false)?;
        eprintln!("[{name}] connected");
        match session(&conn, stream, &mut writer, &stop) {
            Ok(()) => {}
            Err(e) => eprintln!("[{name}] connection lost: {e}"),
        }
    }
    let summary: Vec<String> = conn
        .prepare("SELECT name || ' ' || coalesce(last_sent, last_applied) FROM crsql_streams")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    eprintln!("[{name}] stopping; streams: {}", summary.join(", "));
    crsql::close(conn)?;
    Ok(())
}

/// The peer's own writes: one row per tick until `rows`, in small
/// transactions; every 10th also updates the shared row (a conflict).
struct Writer<'c> {
    conn: &'c Connection,
    name: &'static str,
    written: usize,
    rows: usize,
    next: Instant,
}

impl<'c> Writer<'c> {
    fn new(conn: &'c Connection, name: &'static str, rows: usize) -> Result<Writer<'c>> {
        // After a restart, carry on where the previous run stopped.
        let written: i64 = conn.query_row(
            "SELECT count(*) FROM items WHERE origin = ?1 AND id != 'shared'",
            [name],
            |r| r.get(0),
        )?;
        Ok(Writer {
            conn,
            name,
            written: written as usize,
            rows,
            next: Instant::now(),
        })
    }

    fn tick(&mut self) -> Result<()> {
        if self.written >= self.rows || Instant::now() < self.next {
            return Ok(());
        }
        let i = self.written;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO items VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("{}-{i:05}", self.name), self.name, i as i64],
        )?;
        if i % 10 == 0 || i + 1 == self.rows {
            tx.execute(
                "INSERT INTO items VALUES ('shared', ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET origin = excluded.origin, n = excluded.n",
                rusqlite::params![self.name, i as i64],
            )?;
        }
        tx.commit()?;
        self.written += 1;
        self.next = Instant::now() + TICK;
        Ok(())
    }
}

enum Event {
    Frame(u8, Vec<u8>),
    Closed(String),
}

/// One connection: until it breaks or the peer is told to stop.
fn session(
    conn: &Connection,
    mut stream: TcpStream,
    writer: &mut Writer<'_>,
    stop: &AtomicBool,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let rx = spawn_reader(stream.try_clone()?);
    let result = (|| -> Result<()> {
        write_frame(&mut stream, b'H', &crsql::site_id(conn)?)?;
        let mut streams: Option<(Outbound<'_>, Inbound<'_>)> = None;
        let mut sent_upto: Option<Cursor> = None; // None: from last_sent
        while !stop.load(Ordering::SeqCst) {
            match rx.recv_timeout(TICK) {
                Ok(Event::Frame(b'H', site)) => {
                    let site: crsql::SiteId = site.as_slice().try_into()?;
                    let peer = crsql::hex(&site);
                    let out = Outbound::open_or_create(
                        conn,
                        &format!("to_{peer}"),
                        &OutboundOptions::new()
                            .exclude_site(site)
                            .max_bytes(16 << 10),
                    )?;
                    let inb = Inbound::open_or_create(
                        conn,
                        &format!("from_{peer}"),
                        &InboundOptions::new().from(site),
                    )?;
                    write_frame(
                        &mut stream,
                        b'A',
                        inb.last_applied()?.to_string().as_bytes(),
                    )?;
                    streams = Some((out, inb));
                    sent_upto = None;
                }
                Ok(Event::Frame(b'P', package)) => {
                    let (_, inb) = streams.as_ref().ok_or("package before hello")?;
                    inb.apply(&package)?;
                    write_frame(
                        &mut stream,
                        b'A',
                        inb.last_applied()?.to_string().as_bytes(),
                    )?;
                }
                Ok(Event::Frame(b'A', cursor)) => {
                    let (out, _) = streams.as_ref().ok_or("ack before hello")?;
                    out.ack(std::str::from_utf8(&cursor)?.parse()?)?;
                }
                Ok(Event::Frame(kind, _)) => return Err(format!("unknown frame {kind}").into()),
                Ok(Event::Closed(why)) => return Err(why.into()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("reader stopped".into()),
            }
            writer.tick()?;
            if let Some((out, _)) = &streams {
                let pending = match sent_upto {
                    None => out.packages(),
                    Some(c) => out.packages_after(c),
                };
                for p in pending {
                    let p = p?;
                    write_frame(&mut stream, b'P', &p.bytes)?;
                    sent_upto = Some(p.cursor);
                }
            }
        }
        Ok(())
    })();
    let _ = stream.shutdown(Shutdown::Both);
    result
}

fn spawn_reader(mut stream: TcpStream) -> Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || loop {
        let event = match read_frame(&mut stream) {
            Ok((kind, payload)) => Event::Frame(kind, payload),
            Err(e) => Event::Closed(e.to_string()),
        };
        let closed = matches!(event, Event::Closed(_));
        if tx.send(event).is_err() || closed {
            return;
        }
    });
    rx
}

fn write_frame(stream: &mut TcpStream, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn read_frame(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let kind = body.remove(0);
    Ok((kind, body))
}

// ----------------------------------------------------------------- demo ---

struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
}

fn spawn_peer(role: &str, db: &Path, addr: &str, rows: usize) -> Result<(Peer, Option<String>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            role,
            &db.display().to_string(),
            addr,
            "--rows",
            &rows.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    let mut first = None;
    if role == "listen" {
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        first = Some(
            line.trim()
                .strip_prefix("listening on ")
                .ok_or_else(|| format!("unexpected output {line:?}"))?
                .to_string(),
        );
    }
    Ok((Peer { child, stdin }, first))
}

/// Close every peer's stdin (they stop cleanly), then wait for them.
fn stop(peers: Vec<Peer>) -> Result<()> {
    let mut children = Vec::new();
    for mut p in peers {
        drop(p.stdin.take());
        children.push(p.child);
    }
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("peer exited with {status}").into());
        }
    }
    Ok(())
}

/// A TCP proxy from a local port to `target` whose connections can be cut.
struct Proxy {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let live = Arc::new(Mutex::new(Vec::new()));
        let live2 = Arc::clone(&live);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    thread::spawn(move || {
                        let _ = io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                };
                let clones = (|| -> io::Result<_> {
                    let keep = [client.try_clone()?, server.try_clone()?];
                    Ok((keep, client.try_clone()?, server.try_clone()?))
                })();
                let Ok((keep, client2, server2)) = clones else {
                    continue;
                };
                live2.lock().unwrap().extend(keep);
                pipe(client, server);
                pipe(server2, client2);
            }
        });
        Ok(Proxy { addr, live })
    }

    /// Cut every connection going through the proxy.
    fn cut(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn demo(rows: usize, cuts: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tcp_sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (db_a, db_b) = (dir.join("a.db"), dir.join("b.db"));
    let (a, addr_a) = spawn_peer("listen", &db_a, "127.0.0.1:0", rows)?;
    let proxy = Proxy::start(addr_a.ok_or("no address")?.parse()?)?;
    let proxy_addr = proxy.addr.to_string();
    let (mut b, _) = spawn_peer("connect", &db_b, &proxy_addr, rows)?;
    println!("peers: a listens, b connects through a proxy at {proxy_addr}; {rows} rows each");

    // Disruptions spread over the writing time: cuts, and halfway b is killed.
    let span = TICK * rows as u32;
    let events = cuts + 1;
    for i in 1..=events {
        thread::sleep(span / (events as u32 + 1));
        if i == events.div_ceil(2) {
            println!("kill -9 b, restart it");
            b.child.kill()?;
            b.child.wait()?;
            b = spawn_peer("connect", &db_b, &proxy_addr, rows)?.0;
        } else {
            println!("cut the connection");
            proxy.cut();
        }
    }

    let want = 2 * rows + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ra, rb) = loop {
        let (ra, rb) = (snapshot(&db_a)?, snapshot(&db_b)?);
        if ra.len() == want && ra == rb {
            break (ra, rb);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no convergence after 60 s: a has {} rows, b has {} (want {want})",
                ra.len(),
                rb.len()
            )
            .into());
        }
        thread::sleep(Duration::from_millis(50));
    };
    stop(vec![a, b])?;
    let shared = ra.iter().find(|r| r.0 == "shared").ok_or("no shared row")?;
    println!(
        "converged: both databases hold the same {} rows (shared row won by {} at n = {})",
        rb.len(),
        shared.1,
        shared.2
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Every row of a peer's database, read without the extension.
fn snapshot(db: &PathBuf) -> Result<Vec<(String, String, i64)>> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(2))?;
    let mut stmt = match conn.prepare("SELECT id, origin, n FROM items ORDER BY id") {
        Ok(s) => s,
        Err(_) => return Ok(Vec::new()), // not created yet
    };
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}
