//! Putting the extension on a connection: the shared library, or (feature
//! `static`) the copy compiled into the application.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rusqlite::{ffi, Connection, LoadExtensionGuard};

/// Environment variable naming the extension's shared library.
pub const ENV_VAR: &str = "CRSQL_STREAM_EXT";

/// File name of the shared library on this platform (`crsql_stream.dll`).
#[cfg(target_os = "windows")]
pub const LIBRARY_FILE: &str = "crsql_stream.dll";
/// File name of the shared library on this platform (`libcrsql_stream.dylib`).
#[cfg(target_os = "macos")]
pub const LIBRARY_FILE: &str = "libcrsql_stream.dylib";
/// File name of the shared library on this platform (`libcrsql_stream.so`).
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
pub const LIBRARY_FILE: &str = "libcrsql_stream.so";

/// Entry point of the library, passed explicitly so a renamed file loads too.
const ENTRY_POINT: &str = "sqlite3_crsqlstream_init";

/// Put the extension on `conn`. Idempotent per connection.
///
/// With the `static` feature this registers the extension compiled into the
/// application; no file is read. Without it, this loads the shared library
/// from the first of the places [`find_extension`] lists.
pub fn load(conn: &Connection) -> rusqlite::Result<()> {
    #[cfg(feature = "static")]
    {
        crsql_stream_ext::register(conn)
    }
    #[cfg(not(feature = "static"))]
    {
        load_from(conn, find_extension()?)
    }
}

/// Load the shared library at `path` into `conn`.
///
/// Loading a library runs its code: point this only at a build of this
/// extension. Extension loading is switched on for the call and off again
/// after it. Works with or without the `static` feature (but loading both
/// copies on one connection is pointless: the later one replaces the
/// functions of the earlier).
pub fn load_from(conn: &Connection, path: impl AsRef<Path>) -> rusqlite::Result<()> {
    let path = path.as_ref();
    // SAFETY: the caller names a build of this extension; its entry point only
    // registers functions and virtual tables on `conn`. The guard switches
    // extension loading off again when it drops.
    unsafe {
        let _guard = LoadExtensionGuard::new(conn)?;
        conn.load_extension(path, Some(ENTRY_POINT))
    }
}

/// Where [`load`] looks for the shared library, in order:
///
/// 1. `$CRSQL_STREAM_EXT`, when set (and then nothing else);
/// 2. [`LIBRARY_FILE`] in the directory of the running executable;
/// 3. `dist/` of the source tree this crate was built from (`make build`
///    puts the library there; for development and the crate's own tests).
///
/// Returns the first candidate that exists, or an error listing them all.
pub fn find_extension() -> rusqlite::Result<PathBuf> {
    let tried = candidates(
        std::env::var_os(ENV_VAR),
        std::env::current_exe().ok().as_deref(),
    );
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let list = tried
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_CANTOPEN),
        Some(format!(
            "crsql_stream: extension library not found (looked for {list}); \
             set {ENV_VAR}, call load_from(), or enable the `static` feature"
        )),
    ))
}

fn candidates(env: Option<OsString>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join(LIBRARY_FILE));
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../dist")
            .join(LIBRARY_FILE),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_variable_wins_alone() {
        let c = candidates(Some("/x/lib.so".into()), Some(Path::new("/bin/app")));
        assert_eq!(c, vec![PathBuf::from("/x/lib.so")]);
    }

    #[test]
    fn otherwise_next_to_the_executable_then_the_source_tree() {
        let c = candidates(Some("".into()), Some(Path::new("/opt/app/bin/app")));
        assert_eq!(c[0], Path::new("/opt/app/bin").join(LIBRARY_FILE));
        assert!(c[1].ends_with(Path::new("dist").join(LIBRARY_FILE)));
        assert_eq!(c.len(), 2);
    }
}
