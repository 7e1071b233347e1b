//! The one collector of config validation errors: (key path, message) pairs, gathered while a
//! section is validated so that *every* error is reported, not only the first.
//!
//! Each section's `from_raw` returns `Result<T, Invalid>` with paths relative to its section;
//! the caller places them with [`Invalid::nest`] (`quota` + `ip_prefix.v4` →
//! `quota.ip_prefix.v4`). A list entry validates inside [`Invalid::under`]. Turning a path into a
//! line number is `config`'s job. A leaf: it names nothing in the crate but [`crate::duration`].

use std::time::Duration;

/// Every problem found so far, each as (key path, message), in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalid(Vec<(String, String)>);

impl Invalid {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exactly one error (a validator that cannot go on after it).
    pub fn single(path: impl Into<String>, msg: impl Into<String>) -> Self {
        let mut e = Self::new();
        e.push(path, msg);
        e
    }

    /// Record one error at `path`.
    pub fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.0.push((path.into(), msg.into()));
    }

    /// A sub-validator's result, whose error paths are relative to `prefix`: the value, or
    /// `None` with its errors recorded under `prefix`. Joining: `prefix.path`, but `prefix[i]`
    /// for a path that starts with an index, and `prefix` alone for an empty path; an empty
    /// `prefix` leaves paths as they are.
    pub fn nest<T, E: Into<Invalid>>(&mut self, prefix: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(es) => {
                self.absorb(prefix, es.into());
                None
            }
        }
    }

    /// Run `f` with a fresh collector whose paths are relative to `prefix` (one list entry,
    /// e.g. `windows[2]`), then keep its errors under `prefix` by [`Invalid::nest`]'s rules.
    pub fn under<R>(&mut self, prefix: &str, f: impl FnOnce(&mut Invalid) -> R) -> R {
        let mut inner = Invalid::new();
        let r = f(&mut inner);
        self.absorb(prefix, inner);
        r
    }

    /// A duration in [`crate::duration`]'s grammar, zero allowed; `None` (error recorded at
    /// `path`) when it does not parse.
    pub fn duration(&mut self, path: &str, s: &str) -> Option<Duration> {
        match crate::duration::parse(s) {
            Ok(d) => Some(d),
            Err(m) => {
                self.push(path, m);
                None
            }
        }
    }

    /// As [`Invalid::duration`], and zero is an error too ("must be greater than 0").
    pub fn positive_duration(&mut self, path: &str, s: &str) -> Option<Duration> {
        let d = self.duration(path, s)?;
        if d.is_zero() {
            self.push(path, "must be greater than 0");
            return None;
        }
        Some(d)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(value)` when nothing was recorded.
    ///
    /// # Errors
    /// `self`, when it holds at least one error.
    pub fn into_result<T>(self, value: T) -> Result<T, Invalid> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The errors as (path, message), in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, (String, String)> {
        self.0.iter()
    }

    pub fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }

    fn absorb(&mut self, prefix: &str, other: Invalid) {
        self.0.extend(other.0.into_iter().map(|(p, m)| (join(prefix, p), m)));
    }
}

/// `prefix` + `path` by [`Invalid::nest`]'s rules.
fn join(prefix: &str, path: String) -> String {
    if prefix.is_empty() {
        path
    } else if path.is_empty() {
        prefix.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

impl IntoIterator for Invalid {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Invalid {
    type Item = &'a (String, String);
    type IntoIter = std::slice::Iter<'a, (String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(e: &Invalid) -> Vec<&str> {
        e.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[test]
    fn nest_joins_with_a_dot_an_index_without_and_an_empty_path_is_the_prefix() {
        let mut inner = Invalid::new();
        inner.push("a.b", "m1");
        inner.push("[2].c", "m2");
        inner.push("", "m3");
        let sub: Result<(), Invalid> = Err(inner);
        let mut e = Invalid::new();
        assert_eq!(e.nest("quota", sub.clone()), None);
        e.nest("", sub);
        assert_eq!(paths(&e), ["quota.a.b", "quota[2].c", "quota", "a.b", "[2].c", ""]);
        assert_eq!(e.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(), ["m1", "m2", "m3", "m1", "m2", "m3"]);
    }

    #[test]
    fn nest_passes_a_value_through() {
        let mut e = Invalid::new();
        assert_eq!(e.nest("x", Ok::<_, Invalid>(7)), Some(7));
        assert!(e.is_empty());
        let rule: Result<(), Invalid> = Err(Invalid::single("rules[0].on", "bad"));
        e.nest("blocks", rule);
        assert_eq!(e.into_vec(), [("blocks.rules[0].on".to_string(), "bad".to_string())]);
    }

    #[test]
    fn under_prefixes_a_list_entry_and_nests_again() {
        let mut e = Invalid::new();
        let r = e.under("windows[1]", |e| {
            e.push("name", "empty");
            e.push("days[3]", "unknown day");
            e.under("cost", |e| e.push("", "give one"));
            42
        });
        assert_eq!(r, 42);
        e.under("one_off[0]", |_| {});
        assert_eq!(paths(&e), ["windows[1].name", "windows[1].days[3]", "windows[1].cost"]);
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn durations_record_the_grammar_error_at_their_path() {
        let mut e = Invalid::new();
        assert_eq!(e.duration("a", "1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(e.duration("b", "0s"), Some(Duration::ZERO));
        assert!(e.is_empty());
        assert_eq!(e.duration("c", "soon"), None);
        assert_eq!(e.duration("d", "1 month"), None);
        assert_eq!(e.positive_duration("e", "0s"), None);
        assert_eq!(e.positive_duration("f", "-5s"), None);
        assert_eq!(e.positive_duration("g", "5m"), Some(Duration::from_secs(300)));
        let got = e.into_vec();
        assert_eq!(got.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["c", "d", "e", "f"]);
        assert_eq!(got[0].1, crate::duration::parse("soon").unwrap_err());
        assert_eq!(got[1].1, crate::duration::parse("1 month").unwrap_err());
        assert_eq!(got[2].1, "must be greater than 0");
        assert_eq!(got[3].1, crate::duration::parse("-5s").unwrap_err());
    }

    #[test]
    fn into_result_is_ok_only_when_nothing_was_recorded() {
        assert_eq!(Invalid::new().into_result("v"), Ok("v"));
        let e = Invalid::single("listen", "enable tls or plain");
        assert_eq!(e.clone().into_result("v"), Err(e));
    }
}
