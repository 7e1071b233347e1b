//! Who may call the admin API: the bearer tokens of `admin:`, each with a name that the admin
//! log, the audit log and the actions themselves carry (`token="security"`).
//!
//! `admin.token` (or the variable `admin.token_env` names) is the token called `admin`;
//! `admin.tokens` adds named ones, each written in the file or read from its own variable. A
//! secret is kept only as its SHA-256 digest and checked digest against digest in constant time,
//! every token each time, so how long a refusal takes says nothing about a token's bytes or
//! length. Validation reports every error with its key path (relative to `admin`).

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::raw::RawAdmin;
use crate::invalid::Invalid;

/// The shortest secret accepted.
pub const MIN_LEN: usize = 16;
/// The name of `admin.token` (or `admin.token_env`'s variable).
pub const UNNAMED: &str = "admin";

/// The admin API's tokens, validated: names unique, secrets long enough and distinct.
#[derive(Clone, Default)]
pub struct AdminTokens {
    tokens: Vec<(Arc<str>, [u8; 32])>,
}

impl fmt::Debug for AdminTokens {
    /// Names only: a digest is not a secret, but it has no place in a log either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A name that stays one plain word in logs and audit lines.
fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl AdminTokens {
    /// Validate `admin:`; `env` reads an environment variable (the process's, in production).
    ///
    /// # Errors
    /// Every problem, with its path relative to `admin`: a secret shorter than [`MIN_LEN`], a
    /// named entry with neither or both of `token` and `token_env`, a variable that is not set,
    /// a name that is empty, odd or taken twice (`admin` is taken by `admin.token`), the same
    /// secret under two names.
    pub fn from_raw(raw: &RawAdmin, env: impl Fn(&str) -> Option<String>) -> Result<AdminTokens, Invalid> {
        let mut e = Invalid::new();
        let mut tokens: Vec<(Arc<str>, [u8; 32])> = Vec::new();
        // (path of the entry's secret, digest): to name the first holder of a repeated secret.
        let mut secrets: Vec<(String, [u8; 32])> = Vec::new();
        let unnamed = raw.token.clone().or_else(|| env(&raw.token_env)).filter(|t| !t.is_empty());
        if let Some(t) = unnamed {
            if t.chars().count() < MIN_LEN {
                e.push("token", format!("an admin token needs at least {MIN_LEN} characters"));
            }
            tokens.push((UNNAMED.into(), digest(&t)));
            secrets.push(("token".into(), digest(&t)));
        }
        for (i, entry) in raw.tokens.iter().enumerate() {
            let at = format!("tokens[{i}]");
            if !name_ok(&entry.name) {
                e.push(
                    format!("{at}.name"),
                    format!("a name of 1 to 64 letters, digits, `-`, `_` or `.`, got {:?}", entry.name),
                );
            } else if tokens.iter().any(|(n, _)| **n == *entry.name) {
                let taken = if entry.name == UNNAMED { " (admin.token's name)" } else { "" };
                e.push(format!("{at}.name"), format!("{:?} is taken{taken}: names must be unique", entry.name));
            }
            let (path, secret) = match (&entry.token, &entry.token_env) {
                (Some(t), None) => (format!("{at}.token"), Some(t.clone())),
                (None, Some(var)) => {
                    let path = format!("{at}.token_env");
                    match env(var).filter(|t| !t.is_empty()) {
                        Some(t) => (path, Some(t)),
                        None => {
                            e.push(&path, format!("the environment variable {var:?} is not set"));
                            (path, None)
                        }
                    }
                }
                _ => {
                    e.push(&at, "give exactly one of `token` and `token_env`");
                    (at.clone(), None)
                }
            };
            let Some(secret) = secret else { continue };
            if secret.chars().count() < MIN_LEN {
                e.push(&path, format!("an admin token needs at least {MIN_LEN} characters"));
            }
            let d = digest(&secret);
            if let Some((first, _)) = secrets.iter().find(|(_, x)| *x == d) {
                e.push(&path, format!("the same secret as {first}: each name needs its own token"));
            }
            secrets.push((path, d));
            tokens.push((entry.name.as_str().into(), d));
        }
        e.into_result(AdminTokens { tokens })
    }

    /// No token at all: every admin call is refused.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens' names, in config order (`admin` first when `admin.token` is set).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(|(n, _)| &**n)
    }

    /// The name of the token `presented` is, if it is one. Every token is compared, digest
    /// against digest in constant time.
    pub fn check(&self, presented: &str) -> Option<Arc<str>> {
        let d = digest(presented);
        let mut found = None;
        for (name, want) in &self.tokens {
            if bool::from(want.ct_eq(&d)) {
                found = Some(name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(y: &str) -> RawAdmin {
        serde_yaml_ng::from_str(y).unwrap()
    }

    fn env(k: &str) -> Option<String> {
        (k == "OPS_TOKEN").then(|| "ops-secret-0123456789".to_string())
    }

    #[test]
    fn named_tokens_and_the_unnamed_one_each_say_who() {
        let t = AdminTokens::from_raw(
            &raw(
                "token: admin-secret-0123456789\ntokens:\n  - { name: security, token: sec-secret-0123456789 }\n  - { name: ops, token_env: OPS_TOKEN }\n",
            ),
            env,
        )
        .unwrap();
        assert_eq!(t.names().collect::<Vec<_>>(), ["admin", "security", "ops"]);
        assert_eq!(t.check("sec-secret-0123456789").as_deref(), Some("security"));
        assert_eq!(t.check("ops-secret-0123456789").as_deref(), Some("ops"));
        assert_eq!(t.check("admin-secret-0123456789").as_deref(), Some("admin"));
        assert_eq!(t.check("sec-secret-012345678"), None);
        assert_eq!(t.check(""), None);
        assert!(!format!("{t:?}").contains("secret"), "{t:?}");
    }

    #[test]
    fn the_unnamed_token_comes_from_its_variable_and_none_refuses_all() {
        let t = AdminTokens::from_raw(&raw("token_env: OPS_TOKEN\n"), env).unwrap();
        assert_eq!(t.check("ops-secret-0123456789").as_deref(), Some("admin"));
        let none = AdminTokens::from_raw(&raw("token_env: UNSET\n"), env).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.check("anything-at-all-0123"), None);
    }

    #[test]
    fn every_error_has_its_path() {
        let e = AdminTokens::from_raw(
            &raw(concat!(
                "token: short\n",
                "tokens:\n",
                "  - { name: admin, token: other-secret-0123456789 }\n",
                "  - { name: 'two words', token: third-secret-0123456789 }\n",
                "  - { name: sec, token: other-secret-0123456789 }\n",
                "  - { name: sec, token_env: UNSET }\n",
                "  - { name: both, token: x-secret-0123456789012, token_env: OPS_TOKEN }\n",
                "  - { name: tiny, token: tiny }\n",
            )),
            env,
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "token",
                "tokens[0].name",
                "tokens[1].name",
                "tokens[2].token",
                "tokens[3].name",
                "tokens[3].token_env",
                "tokens[4]",
                "tokens[5].token"
            ],
            "{e:?}"
        );
    }
}
