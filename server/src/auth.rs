//! `--auth FILE`: tenants, token hashes, read-only tokens and writer sites.
//!
//! ```toml
//! [tenants.acme]
//! writers = ["0123456789abcdef0123456789abcdef"]   # optional: sites allowed to push
//! tokens = [
//!   { sha256 = "<64 hex digits>" },                 # read-write
//!   { sha256 = "<64 hex digits>", read_only = true },
//! ]
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::protocol::{parse_site, Site};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenants: HashMap<String, TenantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    #[serde(default)]
    tokens: Vec<TokenFile>,
    writers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    sha256: String,
    #[serde(default)]
    read_only: bool,
}

/// What a token may do on a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub read_only: bool,
    /// `None`: every site may push; else only these.
    pub writers: Option<HashSet<Site>>,
}

/// A tenant's token hashes (with read-only) and writer sites.
type TenantAuth = (Vec<([u8; 32], bool)>, Option<HashSet<Site>>);

#[derive(Debug, Default)]
pub struct Auth {
    tenants: HashMap<String, TenantAuth>,
}

/// SHA-256 of a token, as the auth file stores it (hex).
pub fn token_hash_hex(token: &[u8]) -> String {
    crate::protocol::hex(&Sha256::digest(token))
}

impl Auth {
    pub fn load(path: &Path) -> Result<Auth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth file {}: {e}", path.display()))?;
        Auth::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Auth, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut tenants = HashMap::new();
        for (name, t) in file.tenants {
            if !crate::protocol::valid_tenant(&name) {
                return Err(format!(
                    "tenant {name:?} is not a valid tenant name (1-64 of A-Z a-z 0-9 _ -, not starting with _ or -)"
                ));
            }
            let mut tokens = Vec::new();
            for (i, tok) in t.tokens.iter().enumerate() {
                let h = tok.sha256.trim();
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "tenants.{name}.tokens[{i}].sha256 must be 64 hex digits (crsql-sync hash-token prints it)"
                    ));
                }
                let mut d = [0u8; 32];
                for (j, o) in d.iter_mut().enumerate() {
                    *o = u8::from_str_radix(&h[2 * j..2 * j + 2], 16).map_err(|e| e.to_string())?;
                }
                tokens.push((d, tok.read_only));
            }
            let writers = match t.writers {
                None => None,
                Some(list) => {
                    let mut set = HashSet::new();
                    for w in list {
                        set.insert(parse_site(&w).ok_or_else(|| {
                            format!(
                                "tenants.{name}.writers: {w:?} is not a site id (32 hex digits)"
                            )
                        })?);
                    }
                    Some(set)
                }
            };
            tenants.insert(name, (tokens, writers));
        }
        Ok(Auth { tenants })
    }

    /// The grant of `token` on `tenant`, or why there is none. Compares the
    /// token's hash with every stored hash of the tenant in constant time.
    pub fn check(&self, tenant: &str, token: &[u8]) -> Result<Grant, String> {
        let Some((tokens, writers)) = self.tenants.get(tenant) else {
            return Err(format!("tenant {tenant:?} is not in the hub's auth file"));
        };
        if token.is_empty() {
            return Err(format!("tenant {tenant:?} needs a token (--token)"));
        }
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found: Option<bool> = None;
        for (h, read_only) in tokens {
            if bool::from(h.ct_eq(&digest)) {
                found = Some(*read_only);
            }
        }
        match found {
            Some(read_only) => Ok(Grant {
                read_only,
                writers: writers.clone(),
            }),
            None => Err(format!("wrong token for tenant {tenant:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grants_and_errors() {
        let rw = token_hash_hex(b"rw");
        let ro = token_hash_hex(b"ro");
        let auth = Auth::parse(&format!(
            "[tenants.acme]\nwriters = [\"000102030405060708090a0b0c0d0e0f\"]\ntokens = [{{ sha256 = \"{rw}\" }}, {{ sha256 = \"{ro}\", read_only = true }}]\n"
        ))
        .unwrap();
        let g = auth.check("acme", b"rw").unwrap();
        assert!(!g.read_only);
        assert_eq!(g.writers.unwrap().len(), 1);
        assert!(auth.check("acme", b"ro").unwrap().read_only);
        assert!(auth
            .check("acme", b"nope")
            .unwrap_err()
            .contains("wrong token"));
        assert!(auth
            .check("other", b"rw")
            .unwrap_err()
            .contains("not in the hub's auth file"));
        assert!(auth
            .check("acme", b"")
            .unwrap_err()
            .contains("needs a token"));
        assert!(
            Auth::parse("[tenants.acme]\ntokens = [{ sha256 = \"xy\" }]")
                .unwrap_err()
                .contains("64 hex")
        );
        assert!(Auth::parse("[tenants.\"a/b\"]")
            .unwrap_err()
            .contains("not a valid tenant"));
        assert!(Auth::parse("[tenants.a]\nbogus = 1").is_err());
    }
}
