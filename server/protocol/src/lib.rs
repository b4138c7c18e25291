//! The crsql-sync wire protocol, version 1 (docs/protocol.md).
//!
//! Every message is one WebSocket binary message (a *frame* here) whose first
//! byte is its type. Integers are big-endian. A position `[db_version, seq]`
//! is two `u64`s, each at most `i64::MAX`. [`Frame::decode`] is the only way
//! bytes from the network become a message: it never panics, refuses trailing
//! bytes, and names what is wrong.
#![forbid(unsafe_code)]

use std::fmt;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Every hello starts with its type byte, then these four bytes.
pub const MAGIC: [u8; 4] = *b"CRSY";
/// Longest tenant name (also the rule of [`valid_tenant`]).
pub const MAX_TENANT_LEN: usize = 64;
/// Most positions a hello may carry.
pub const MAX_HELLO_POSITIONS: usize = 1024;

pub const T_HELLO: u8 = 0x01;
pub const T_WELCOME: u8 = 0x02;
pub const T_PACKAGE: u8 = 0x03;
pub const T_ACK: u8 = 0x04;
pub const T_CAUGHT_UP: u8 = 0x05;
pub const T_ERROR: u8 = 0x06;

/// Welcome flag: the client's token may only pull.
pub const WELCOME_READ_ONLY: u8 = 0x01;

/// A stream position `[db_version, seq]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub db_version: i64,
    pub seq: i64,
}

impl Pos {
    pub const ZERO: Pos = Pos {
        db_version: 0,
        seq: 0,
    };
    pub const fn new(db_version: i64, seq: i64) -> Pos {
        Pos { db_version, seq }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{},{}]", self.db_version, self.seq)
    }
}

impl std::str::FromStr for Pos {
    type Err = String;
    /// Reads the extension's JSON text form, `[12,3]`.
    fn from_str(s: &str) -> Result<Pos, String> {
        let bad = || format!("invalid position {s:?}: expected [db_version,seq]");
        let inner = s
            .trim()
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(bad)?;
        let (a, b) = inner.split_once(',').ok_or_else(bad)?;
        let a: i64 = a.trim().parse().map_err(|_| bad())?;
        let b: i64 = b.trim().parse().map_err(|_| bad())?;
        if a < 0 || b < 0 {
            return Err(bad());
        }
        Ok(Pos::new(a, b))
    }
}

/// A site id, `crsql_site_id()`.
pub type Site = [u8; 16];

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse 32 hex digits into a site id.
pub fn parse_site(text: &str) -> Option<Site> {
    let t = text.trim();
    if t.len() != 32 || !t.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A tenant name: 1 to 64 of `[A-Za-z0-9_-]`, not starting with `-` or `_`
/// (it becomes a file name, `<tenant>.db`).
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TENANT_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with(['-', '_'])
}

/// The first frame of a connection, client to hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The client's site id.
    pub site: Site,
    /// [`schema hash`](docs/protocol.md) of the client's CRRs.
    pub schema_hash: [u8; 16],
    /// Must equal the tenant of the URL path.
    pub tenant: String,
    /// Bearer token, empty for none.
    pub token: Vec<u8>,
    /// For each site the client has an inbound stream from: how far it
    /// applied that site's packages. The hub resumes from its own entry.
    pub positions: Vec<(Site, Pos)>,
}

/// The hub's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    /// The hub's (the tenant database's) site id.
    pub hub_site: Site,
    pub schema_hash: [u8; 16],
    /// [`WELCOME_READ_ONLY`].
    pub flags: u8,
    /// Largest frame the hub accepts, in bytes.
    pub max_frame: u32,
    /// How far the hub applied this client's packages: push after it.
    pub applied: Pos,
    /// About how many changes the hub holds after the client's position
    /// (for progress; the client's own changes included).
    pub backlog: u64,
}

/// A refusal with a stable code; the sender closes the connection after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

/// The stable error codes (docs/protocol.md lists what each means).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ProtocolVersion,
    BadFrame,
    FrameTooLarge,
    BadTenant,
    UnknownTenant,
    Unauthorized,
    ReadOnly,
    ForeignSender,
    Gap,
    SchemaMismatch,
    ResyncRequired,
    BadPackage,
    ShuttingDown,
    Timeout,
    Internal,
    /// A code this build does not know (a newer peer).
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::ProtocolVersion => "protocol_version",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadTenant => "bad_tenant",
            ErrorCode::UnknownTenant => "unknown_tenant",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::ForeignSender => "foreign_sender",
            ErrorCode::Gap => "gap",
            ErrorCode::SchemaMismatch => "schema_mismatch",
            ErrorCode::ResyncRequired => "resync_required",
            ErrorCode::BadPackage => "bad_package",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> ErrorCode {
        match s {
            "protocol_version" => ErrorCode::ProtocolVersion,
            "bad_frame" => ErrorCode::BadFrame,
            "frame_too_large" => ErrorCode::FrameTooLarge,
            "bad_tenant" => ErrorCode::BadTenant,
            "unknown_tenant" => ErrorCode::UnknownTenant,
            "unauthorized" => ErrorCode::Unauthorized,
            "read_only" => ErrorCode::ReadOnly,
            "foreign_sender" => ErrorCode::ForeignSender,
            "gap" => ErrorCode::Gap,
            "schema_mismatch" => ErrorCode::SchemaMismatch,
            "resync_required" => ErrorCode::ResyncRequired,
            "bad_package" => ErrorCode::BadPackage,
            "shutting_down" => ErrorCode::ShuttingDown,
            "timeout" => ErrorCode::Timeout,
            "internal" => ErrorCode::Internal,
            other => ErrorCode::Other(other.to_string()),
        }
    }

    /// Whether a client should give up rather than reconnect: retrying
    /// cannot help until someone changes something.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ErrorCode::ProtocolVersion
                | ErrorCode::BadTenant
                | ErrorCode::UnknownTenant
                | ErrorCode::Unauthorized
                | ErrorCode::ReadOnly
                | ErrorCode::ForeignSender
                | ErrorCode::SchemaMismatch
                | ErrorCode::ResyncRequired
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    /// A stream package (the extension's binary encoding), as is.
    Package(Vec<u8>),
    /// The receiver applied the sender's packages up to this position.
    Ack(Pos),
    /// Hub to client: nothing more to send after this position for now.
    CaughtUp(Pos),
    Error(ErrorFrame),
}

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A hello of a protocol version this build does not speak.
    Version(u16),
    /// Anything else, with what was wrong.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Version(v) => write!(
                f,
                "protocol version {v} is not supported: this build speaks version {PROTOCOL_VERSION}"
            ),
            FrameError::Malformed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Version(_) => ErrorCode::ProtocolVersion,
            FrameError::Malformed(_) => ErrorCode::BadFrame,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl fmt::Display) -> FrameError {
        FrameError::Malformed(format!("{} frame: {msg}", self.what))
    }
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], FrameError> {
        let rest = self.bytes.len() - self.at;
        if rest < n {
            return Err(self.err(format_args!(
                "truncated at byte {} reading {field}: need {n} bytes, have {rest}",
                self.at
            )));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, field: &str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, FrameError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &str) -> Result<u32, FrameError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &str) -> Result<u64, FrameError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn arr16(&mut self, field: &str) -> Result<[u8; 16], FrameError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16, field)?);
        Ok(a)
    }
    fn pos(&mut self, field: &str) -> Result<Pos, FrameError> {
        let a = self.u64(field)?;
        let b = self.u64(field)?;
        if a > i64::MAX as u64 || b > i64::MAX as u64 {
            return Err(self.err(format_args!("{field}: position [{a},{b}] is beyond 2^63-1")));
        }
        Ok(Pos::new(a as i64, b as i64))
    }
    fn end(&self) -> Result<(), FrameError> {
        let rest = self.bytes.len() - self.at;
        if rest != 0 {
            return Err(self.err(format_args!(
                "{rest} unexpected bytes after the end, at byte {}",
                self.at
            )));
        }
        Ok(())
    }
}

impl Frame {
    /// Decode one frame. Never panics; every error names the problem.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let Some((&ty, _)) = bytes.split_first() else {
            return Err(FrameError::Malformed("empty frame".into()));
        };
        let what = match ty {
            T_HELLO => "hello",
            T_WELCOME => "welcome",
            T_PACKAGE => "package",
            T_ACK => "ack",
            T_CAUGHT_UP => "caught_up",
            T_ERROR => "error",
            other => {
                return Err(FrameError::Malformed(format!(
                    "unknown frame type 0x{other:02x} (expected 0x01..=0x06)"
                )))
            }
        };
        let mut r = Reader { bytes, at: 1, what };
        let frame = match ty {
            T_HELLO => {
                if r.take(4, "magic")? != MAGIC {
                    return Err(r.err("bad magic (expected \"CRSY\" after the type byte)"));
                }
                let version = r.u16("version")?;
                if version != PROTOCOL_VERSION {
                    return Err(FrameError::Version(version));
                }
                let site = r.arr16("site id")?;
                let schema_hash = r.arr16("schema hash")?;
                let tlen = r.u8("tenant length")? as usize;
                let tenant = r.take(tlen, "tenant")?;
                let tenant = std::str::from_utf8(tenant)
                    .map_err(|_| r.err("tenant is not UTF-8"))?
                    .to_string();
                let klen = r.u16("token length")? as usize;
                let token = r.take(klen, "token")?.to_vec();
                let n = r.u16("position count")? as usize;
                if n > MAX_HELLO_POSITIONS {
                    return Err(r.err(format_args!("{n} positions: at most {MAX_HELLO_POSITIONS}")));
                }
                let mut positions = Vec::with_capacity(n);
                for _ in 0..n {
                    let s = r.arr16("position site")?;
                    let p = r.pos("position")?;
                    positions.push((s, p));
                }
                Frame::Hello(Hello {
                    version,
                    site,
                    schema_hash,
                    tenant,
                    token,
                    positions,
                })
            }
            T_WELCOME => {
                let version = r.u16("version")?;
                if version != PROTOCOL_VERSION {
                    return Err(FrameError::Version(version));
                }
                Frame::Welcome(Welcome {
                    version,
                    hub_site: r.arr16("hub site id")?,
                    schema_hash: r.arr16("schema hash")?,
                    flags: r.u8("flags")?,
                    max_frame: r.u32("max frame")?,
                    applied: r.pos("applied")?,
                    backlog: r.u64("backlog")?,
                })
            }
            T_PACKAGE => {
                let body = &bytes[1..];
                if body.is_empty() {
                    return Err(r.err("no package bytes"));
                }
                r.at = bytes.len();
                Frame::Package(body.to_vec())
            }
            T_ACK => Frame::Ack(r.pos("position")?),
            T_CAUGHT_UP => Frame::CaughtUp(r.pos("position")?),
            _ => {
                let clen = r.u8("code length")? as usize;
                let code = r.take(clen, "code")?;
                if code.is_empty()
                    || !code
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || *b == b'_' || b.is_ascii_digit())
                {
                    return Err(r.err("code must be 1..255 of [a-z0-9_]"));
                }
                let code = ErrorCode::parse(std::str::from_utf8(code).unwrap_or_default());
                let mlen = r.u16("message length")? as usize;
                let message = String::from_utf8_lossy(r.take(mlen, "message")?).into_owned();
                Frame::Error(ErrorFrame { code, message })
            }
        };
        r.end()?;
        Ok(frame)
    }

    /// Encode a frame. Fields longer than their length prefix allows are cut
    /// (the tenant to 255 bytes, a token or message to 65535, positions to
    /// [`MAX_HELLO_POSITIONS`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let pos = |out: &mut Vec<u8>, p: &Pos| {
            out.extend_from_slice(&(p.db_version.max(0) as u64).to_be_bytes());
            out.extend_from_slice(&(p.seq.max(0) as u64).to_be_bytes());
        };
        match self {
            Frame::Hello(h) => {
                out.push(T_HELLO);
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&h.version.to_be_bytes());
                out.extend_from_slice(&h.site);
                out.extend_from_slice(&h.schema_hash);
                let t = &h.tenant.as_bytes()[..h.tenant.len().min(255)];
                out.push(t.len() as u8);
                out.extend_from_slice(t);
                let k = &h.token[..h.token.len().min(65535)];
                out.extend_from_slice(&(k.len() as u16).to_be_bytes());
                out.extend_from_slice(k);
                let ps = &h.positions[..h.positions.len().min(MAX_HELLO_POSITIONS)];
                out.extend_from_slice(&(ps.len() as u16).to_be_bytes());
                for (s, p) in ps {
                    out.extend_from_slice(s);
                    pos(&mut out, p);
                }
            }
            Frame::Welcome(w) => {
                out.push(T_WELCOME);
                out.extend_from_slice(&w.version.to_be_bytes());
                out.extend_from_slice(&w.hub_site);
                out.extend_from_slice(&w.schema_hash);
                out.push(w.flags);
                out.extend_from_slice(&w.max_frame.to_be_bytes());
                pos(&mut out, &w.applied);
                out.extend_from_slice(&w.backlog.to_be_bytes());
            }
            Frame::Package(p) => {
                out.reserve(1 + p.len());
                out.push(T_PACKAGE);
                out.extend_from_slice(p);
            }
            Frame::Ack(p) => {
                out.push(T_ACK);
                pos(&mut out, p);
            }
            Frame::CaughtUp(p) => {
                out.push(T_CAUGHT_UP);
                pos(&mut out, p);
            }
            Frame::Error(e) => {
                out.push(T_ERROR);
                let c = &e.code.as_str().as_bytes()[..e.code.as_str().len().min(255)];
                out.push(c.len() as u8);
                out.extend_from_slice(c);
                let mut m = e.message.as_str();
                if m.len() > 65535 {
                    let mut end = 65535;
                    while !m.is_char_boundary(end) {
                        end -= 1;
                    }
                    m = &m[..end];
                }
                out.extend_from_slice(&(m.len() as u16).to_be_bytes());
                out.extend_from_slice(m.as_bytes());
            }
        }
        out
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(ErrorFrame {
            code,
            message: message.into(),
        })
    }
}

/// What the hub needs to know of a pushed package before applying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSummary {
    pub sender: Site,
    /// Origin sites of its changes.
    pub sites: Vec<Site>,
    pub since: Pos,
    pub cursor: Pos,
    pub changes: usize,
}

/// Decode and validate a package (checksum, structure) with the extension's
/// own codec and summarise it. The error is the codec's message.
pub fn inspect_package(bytes: &[u8]) -> Result<PackageSummary, String> {
    let pkg = crsql_stream_core::package::Package::decode(bytes).map_err(|e| e.to_string())?;
    let site = |b: &[u8]| -> Result<Site, String> {
        b.try_into()
            .map_err(|_| format!("site id of {} bytes, expected 16", b.len()))
    };
    Ok(PackageSummary {
        sender: site(&pkg.sender.0)?,
        sites: pkg
            .sites
            .iter()
            .map(|s| site(&s.0))
            .collect::<Result<_, _>>()?,
        since: Pos::new(pkg.since.db_version, pkg.since.seq),
        cursor: Pos::new(pkg.cursor.db_version, pkg.cursor.seq),
        changes: pkg.changes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            site: [0x11; 16],
            schema_hash: [0x22; 16],
            tenant: "acme".into(),
            token: b"secret".to_vec(),
            positions: vec![([0x33; 16], Pos::new(12, 3))],
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Hello(hello()),
            Frame::Welcome(Welcome {
                version: 1,
                hub_site: [9; 16],
                schema_hash: [8; 16],
                flags: WELCOME_READ_ONLY,
                max_frame: 1 << 20,
                applied: Pos::new(5, 0),
                backlog: 42,
            }),
            Frame::Package(vec![1, 2, 3]),
            Frame::Ack(Pos::new(7, 2)),
            Frame::CaughtUp(Pos::new(i64::MAX, 0)),
            Frame::error(ErrorCode::Gap, "gap: expected [1,0], got [2,0]"),
            Frame::error(ErrorCode::Other("new_code".into()), ""),
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()), Ok(f.clone()), "{f:?}");
        }
    }

    #[test]
    fn the_documented_bytes() {
        // docs/protocol.md, "Examples": an ack of [12,3].
        assert_eq!(
            Frame::Ack(Pos::new(12, 3)).encode(),
            [4, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 3]
        );
        let h = |s: &str| -> Vec<u8> {
            (0..s.len() / 2)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        };
        let site = |s: &str| -> Site { h(s).try_into().unwrap() };
        let hello = Frame::Hello(Hello {
            version: 1,
            site: site("7a1cd6b1a6e44e3f9c2b5d8e0f112233"),
            schema_hash: site("5c0e2a3b4d6f708192a3b4c5d6e7f809"),
            tenant: "acme".into(),
            token: b"s3cret".to_vec(),
            positions: vec![(site("f434e185b3a94d04b0ede0edcdb8e448"), Pos::new(12, 3))],
        });
        assert_eq!(
            hex(&hello.encode()),
            "014352535900017a1cd6b1a6e44e3f9c2b5d8e0f1122335c0e2a3b4d6f708192a3b4c5d6e7f80904\
             61636d65000673336372657400\
             01f434e185b3a94d04b0ede0edcdb8e448000000000000000c0000000000000003"
        );
        let welcome = Frame::Welcome(Welcome {
            version: 1,
            hub_site: site("f434e185b3a94d04b0ede0edcdb8e448"),
            schema_hash: site("5c0e2a3b4d6f708192a3b4c5d6e7f809"),
            flags: 0,
            max_frame: 4 << 20,
            applied: Pos::new(7, 2),
            backlog: 1500,
        });
        assert_eq!(
            hex(&welcome.encode()),
            "020001f434e185b3a94d04b0ede0edcdb8e4485c0e2a3b4d6f708192a3b4c5d6e7f80900004000000000\
             0000000000070000000000000002000000000000\
             05dc"
        );
        let e = Frame::error(
            ErrorCode::ReadOnly,
            "this token may only pull: the package was not applied",
        )
        .encode();
        assert_eq!(e.len(), 66);
        assert_eq!(hex(&e[..13]), "0609726561645f6f6e6c790035");
        let e = Frame::error(ErrorCode::ReadOnly, "no").encode();
        assert_eq!(
            e,
            [6, 9, b'r', b'e', b'a', b'd', b'_', b'o', b'n', b'l', b'y', 0, 2, b'n', b'o']
        );
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut b = Frame::Hello(hello()).encode();
        b[6] = 2;
        let e = Frame::decode(&b).unwrap_err();
        assert_eq!(e, FrameError::Version(2));
        assert_eq!(e.code(), ErrorCode::ProtocolVersion);
        assert!(e
            .to_string()
            .contains("protocol version 2 is not supported"));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let b = Frame::Hello(hello()).encode();
        for n in 0..b.len() {
            assert!(Frame::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        let e = Frame::decode(&longer).unwrap_err().to_string();
        assert!(e.contains("unexpected bytes"), "{e}");
        assert!(Frame::decode(&[0x07])
            .unwrap_err()
            .to_string()
            .contains("unknown frame type 0x07"));
        assert!(Frame::decode(&[T_PACKAGE]).is_err());
        let mut big = vec![T_ACK];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        big.extend_from_slice(&0u64.to_be_bytes());
        assert!(Frame::decode(&big)
            .unwrap_err()
            .to_string()
            .contains("beyond"));
    }

    #[test]
    fn tenant_names() {
        for ok in ["acme", "a", "team-1", "A_b", &"x".repeat(64)] {
            assert!(valid_tenant(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "a/b",
            "..",
            "a.db",
            "é",
            &"x".repeat(65),
            "a b",
        ] {
            assert!(!valid_tenant(bad), "{bad}");
        }
    }

    #[test]
    fn positions_parse_from_the_extension_text() {
        assert_eq!("[12,3]".parse::<Pos>(), Ok(Pos::new(12, 3)));
        assert!("[1]".parse::<Pos>().is_err());
        assert!("[-1,0]".parse::<Pos>().is_err());
    }
}
