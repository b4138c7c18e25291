//! Records the git commit for `crsql_sha()`.
fn main() {
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CRSQL_STREAM_GIT_SHA={sha}");
    // Re-run when HEAD moves: HEAD itself, the branch it names, packed refs.
    println!("cargo:rerun-if-changed=../.git/HEAD");
    if std::path::Path::new("../.git/packed-refs").exists() {
        println!("cargo:rerun-if-changed=../.git/packed-refs");
    }
    if let Ok(head) = std::fs::read_to_string("../.git/HEAD") {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=../.git/{r}");
        }
    }
}
