//! The quick way through an audit line: its top-level members as borrowed slices, in one pass,
//! for the lines cvgate writes (a flat JSON object, strings without escapes). serde_json's derive
//! spent ~12 k instructions on such a line (a field-name match per key, every ignored value
//! parsed into nothing, an owned string per field); this walk with `input`'s reading of each
//! field spends ~7.8 k on a 620-byte, 27-member line (callgrind, docs/BENCHMARKS.md).
//!
//! It is exact by refusing: whatever it does not check as strictly as serde_json would (an escape
//! in any string, a control character anywhere, a number or nesting beyond JSON's grammar, more
//! than [`MAX_DEPTH`] levels) makes it answer `None`, and the caller asks serde_json, whose answer
//! is the reference. A property test in `input` holds the two readers to the same result.
//!
//! Why by hand: the JSON crates either build a tree (`serde_json::Value`, allocation per member)
//! or go through serde's visitor (the cost above); the lazy SIMD readers (`sonic-rs`) bring
//! their own unsafe code and a heavy tree of dependencies for what is here ~150 lines.

/// A member's value as the caller needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string's contents (no escapes in it).
    Str(&'a str),
    /// A number's text, checked against JSON's grammar.
    Num(&'a str),
    Null,
    /// `true`, `false`, an array or an object (checked, not kept).
    Other,
}

/// Nesting below the top-level object that is walked; deeper, serde_json decides.
pub const MAX_DEPTH: usize = 8;

/// Call `member(key, value)` for each top-level member of the object `line`, in order. `None`
/// when `line` is not within what this reader checks exactly, or when `member` says `None`.
pub fn members<'a>(line: &'a str, mut member: impl FnMut(&'a str, Value<'a>) -> Option<()>) -> Option<()> {
    // An escape anywhere, or a control character (JSON allows none in a string; outside strings
    // only whitespace, and only the space is walked here): serde_json's turn. One pass the
    // compiler vectorises; after it, every `"` opens or closes a string.
    let b = line.as_bytes();
    if b.iter().fold(false, |any, &c| any | (c == b'\\') | (c < 0x20)) {
        return None;
    }
    let mut s = Scan { text: line, b, at: 0 };
    s.spaces();
    s.eat(b'{')?;
    s.spaces();
    if s.eat(b'}').is_none() {
        loop {
            s.spaces();
            let key = s.string()?;
            s.spaces();
            s.eat(b':')?;
            s.spaces();
            let value = s.value(0)?;
            member(key, value)?;
            s.spaces();
            match s.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.spaces();
    (s.at == b.len()).then_some(())
}

/// Where the first `"` in `b` is: eight bytes a step (a word's zero-byte test on `b ^ "…"`, exact
/// for the lowest match). `memchr` pays ~200 instructions of set-up a call on strings this short.
fn quote(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(word) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().ok()?) ^ (ONES * u64::from(b'"'));
        let zero = x.wrapping_sub(ONES) & !x & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    b[at..].iter().position(|&c| c == b'"').map(|p| at + p)
}

struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// A string (the line has no escapes or control characters); its contents.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = quote(&self.b[start..])?;
        self.at = start + len + 1;
        // Cut at ASCII quotes of a `&str`: on character boundaries, so this never fails.
        self.text.get(start..start + len)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => _ = self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        self.text.get(start..self.at)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b'-' | b'0'..=b'9' => self.number().map(Value::Num),
            b'n' => self.literal(b"null").map(|()| Value::Null),
            b't' => self.literal(b"true").map(|()| Value::Other),
            b'f' => self.literal(b"false").map(|()| Value::Other),
            b'[' if depth < MAX_DEPTH => self.nested(b']', depth).map(|()| Value::Other),
            b'{' if depth < MAX_DEPTH => self.nested(b'}', depth).map(|()| Value::Other),
            _ => None,
        }
    }

    /// An array (`close` `]`) or an object (`}`) inside the line, checked.
    fn nested(&mut self, close: u8, depth: usize) -> Option<()> {
        self.at += 1;
        self.spaces();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            self.spaces();
            if close == b'}' {
                self.string()?;
                self.spaces();
                self.eat(b':')?;
                self.spaces();
            }
            self.value(depth + 1)?;
            self.spaces();
            match self.next()? {
                b',' => continue,
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(line: &str) -> Option<Vec<(&str, Value<'_>)>> {
        let mut out = Vec::new();
        members(line, |k, v| {
            out.push((k, v));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn reads_what_cvgate_writes_and_refuses_the_rest() {
        let got = all(r#"{"a":"x","n":-1.5e3,"z":null,"w":[],"o":{"k":[1,true,{"q":false}]},"e":{}}"#).unwrap();
        assert_eq!(
            got,
            [
                ("a", Value::Str("x")),
                ("n", Value::Num("-1.5e3")),
                ("z", Value::Null),
                ("w", Value::Other),
                ("o", Value::Other),
                ("e", Value::Other)
            ]
        );
        assert_eq!(all("{}").unwrap(), []);
        assert_eq!(all(r#" { "k" : "é" } "#).unwrap(), [("k", Value::Str("é"))]);
        for bad in [
            r#"{"a":"x\"y"}"#,
            "{\"a\":\"x\ty\"}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":nul}"#,
            r#"{"a":1}x"#,
            r#"{"a" 1}"#,
            r#"[1]"#,
            r#"{"a":[[[[[[[[[[1]]]]]]]]]]}"#,
            r#"{"a":"x""#,
        ] {
            assert_eq!(all(bad), None, "{bad}");
        }
    }
}
