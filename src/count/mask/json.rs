//! The JSON scanner under the masker: validates one value as strictly as serde_json does
//! (RFC 8259 grammar, no control characters in strings, escapes checked, at most [`MAX_DEPTH`]
//! levels; and keys must decode: no lone surrogate) and says where it ends, and where each member of an object sits, without building
//! anything. Works on bytes that may stop in the middle of a value ([`Stop::Eof`]), so a record
//! can be parsed where it lies in a chunk before its end is known.
//!
//! It is the masker's hot loop: a CV is mostly short strings, so string contents are skipped 16
//! bytes per vector compare (`wide`: SSE2 on x86_64, NEON on aarch64, scalar elsewhere), and
//! containers are walked without recursion (a `u128` bit stack of object/array). UTF-8 is
//! checked only in strings that hold a byte over 0x7F (the same vector compare finds them):
//! outside strings the grammar allows nothing but ASCII.

use wide::u8x16;

/// Deepest nesting of a record, containers counted from its root included. A CV is a few levels
/// deep; 100 leaves room, and keeps a masked page (two levels more) within the depth that
/// serde_json and other parsers with a limit accept (127).
pub(super) const MAX_DEPTH: usize = 100;

/// Why a scan stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The bytes end inside the value: more may follow (for a whole record: cut short).
    Eof,
    /// Not valid JSON, or nested deeper than [`MAX_DEPTH`].
    Invalid,
}

use Stop::{Eof, Invalid};

/// [`string`] flag: the string holds an escape (it must be decoded before it is compared).
pub(super) const ESCAPED: u8 = 1;
/// [`string`] flag: the string holds a byte over 0x7F (valid UTF-8, checked).
pub(super) const NON_ASCII: u8 = 2;

/// One member of an object: where its key (with its quotes) and its value sit in the bytes,
/// and what the caller's `tag` said about its key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member<T> {
    pub key_start: usize,
    pub key_end: usize,
    /// The key's [`string`] flags.
    pub flags: u8,
    pub value_start: usize,
    pub value_end: usize,
    /// Where the member before it ends (just after `{` for the first one).
    pub prev_end: usize,
    /// Its place among all the object's members, listed or not.
    pub index: usize,
    pub tag: T,
}

impl<T> Member<T> {
    /// The key's raw bytes without its quotes.
    pub fn key<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        &raw[self.key_start + 1..self.key_end - 1]
    }
}

#[inline]
fn byte(b: &[u8], i: usize) -> Result<u8, Stop> {
    b.get(i).copied().ok_or(Eof)
}

/// Past JSON whitespace from `i`.
#[inline]
pub(super) fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// The first `"`, `\` or control character at or after `i`, and whether a byte over 0x7F
/// came before it.
#[inline(always)]
fn special(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let (quote, backslash, upper) = (u8x16::splat(b'"'), u8x16::splat(b'\\'), u8x16::splat(0xE0));
    let zero = u8x16::splat(0);
    let mut high = false;
    while let Some(lane) = b.get(i..i + 16) {
        let v = u8x16::new(lane.try_into().expect("16 bytes"));
        let hit = (v.cmp_eq(quote) | v.cmp_eq(backslash) | (v & upper).cmp_eq(zero)).move_mask();
        let over = v.move_mask(); // the top bit of each byte
        if hit != 0 {
            let at = hit.trailing_zeros();
            return Some((i + at as usize, high || over & ((1 << at) - 1) != 0));
        }
        high |= over != 0;
        i += 16;
    }
    for (p, &c) in b.get(i..)?.iter().enumerate() {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some((i + p, high));
        }
        high |= c > 0x7F;
    }
    None
}

/// The string at `b[i] == '"'`: where it ends (after its closing quote), and its flags
/// ([`ESCAPED`], [`NON_ASCII`]).
#[inline(always)]
pub(super) fn string(b: &[u8], i: usize) -> Result<(usize, u8), Stop> {
    let start = i + 1;
    let mut i = start;
    let mut flags = 0;
    loop {
        let (at, high) = special(b, i).ok_or(Eof)?;
        i = at;
        if high {
            flags |= NON_ASCII;
        }
        match b[i] {
            b'"' => {
                if flags & NON_ASCII != 0 && std::str::from_utf8(&b[start..i]).is_err() {
                    return Err(Invalid);
                }
                return Ok((i + 1, flags));
            }
            b'\\' => {
                flags |= ESCAPED;
                match byte(b, i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        for k in i + 2..i + 6 {
                            if !byte(b, k)?.is_ascii_hexdigit() {
                                return Err(Invalid);
                            }
                        }
                        i += 6;
                    }
                    _ => return Err(Invalid),
                }
            }
            _ => return Err(Invalid), // a control character
        }
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// A digit must come at `i`; then as many as there are.
fn some_digits(b: &[u8], i: usize) -> Result<usize, Stop> {
    if byte(b, i)?.is_ascii_digit() {
        Ok(digits(b, i + 1))
    } else {
        Err(Invalid)
    }
}

/// The number at `i`. It may go on in bytes not seen yet when it reaches the end: [`Eof`].
fn number(b: &[u8], mut i: usize) -> Result<usize, Stop> {
    if b[i] == b'-' {
        i += 1;
    }
    i = match byte(b, i)? {
        b'0' => i + 1,
        _ => some_digits(b, i)?,
    };
    if b.get(i) == Some(&b'.') {
        i = some_digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(byte(b, i)?, b'+' | b'-') {
            i += 1;
        }
        i = some_digits(b, i)?;
    }
    if i == b.len() {
        return Err(Eof);
    }
    Ok(i)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Stop> {
    let end = i + word.len();
    match b.get(i..end) {
        Some(got) if got == word => Ok(end),
        Some(_) => Err(Invalid),
        None if word.starts_with(&b[i..]) => Err(Eof),
        None => Err(Invalid),
    }
}

/// The number or literal at `i`.
#[inline]
fn scalar(b: &[u8], i: usize) -> Result<usize, Stop> {
    match b[i] {
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => number(b, i),
        _ => Err(Invalid),
    }
}

/// The key at `b[i] == '"'`: a [`string`] that must also decode to Unicode (an escaped lone
/// surrogate is valid JSON, but no key the rules could be compared with): a record is valid for
/// the masker whether it masks the record or passes it within an allowance.
#[inline(always)]
fn key_string(b: &[u8], i: usize) -> Result<(usize, u8), Stop> {
    let (end, flags) = string(b, i)?;
    if flags & ESCAPED != 0 && serde_json::from_slice::<String>(&b[i..end]).is_err() {
        return Err(Invalid);
    }
    Ok((end, flags))
}

/// At a member's key: `"key" :` and whitespace; where the member's value starts.
#[inline]
fn key(b: &[u8], i: usize) -> Result<usize, Stop> {
    if byte(b, i)? != b'"' {
        return Err(Invalid);
    }
    let i = ws(b, key_string(b, i)?.0);
    if byte(b, i)? != b':' {
        return Err(Invalid);
    }
    Ok(ws(b, i + 1))
}

/// Validates the value starting at `b[i]` (no whitespace before it), inside `depth` containers;
/// where it ends.
pub(super) fn value(b: &[u8], mut i: usize, depth: usize) -> Result<usize, Stop> {
    // Bit k: the (k+1)-th open container of this value is an object.
    let mut objects: u128 = 0;
    let mut open = 0usize;
    loop {
        // A value starts at `i`.
        match byte(b, i)? {
            b'"' => i = string(b, i)?.0,
            c @ (b'{' | b'[') => {
                if depth + open >= MAX_DEPTH {
                    return Err(Invalid);
                }
                let object = c == b'{';
                objects = (objects & !(1 << open)) | (u128::from(object) << open);
                open += 1;
                i = ws(b, i + 1);
                if byte(b, i)? == if object { b'}' } else { b']' } {
                    i += 1;
                    open -= 1;
                } else {
                    if object {
                        i = key(b, i)?;
                    }
                    continue;
                }
            }
            _ => i = scalar(b, i)?,
        }
        // After a value: close containers until one has a next item.
        loop {
            if open == 0 {
                return Ok(i);
            }
            i = ws(b, i);
            let object = objects >> (open - 1) & 1 == 1;
            match byte(b, i)? {
                b',' => {
                    i = ws(b, i + 1);
                    if object {
                        i = key(b, i)?;
                    }
                    break;
                }
                b'}' if object => {
                    i += 1;
                    open -= 1;
                }
                b']' if !object => {
                    i += 1;
                    open -= 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

/// The object at `b[i] == '{'`, inside `depth` containers: validated whole, and each member
/// that `tag` gives a tag for (called with the bytes, the key's start and end with its quotes,
/// and its flags) listed in `members` (cleared first), in order, duplicates included. Where it
/// ends.
pub(super) fn object<T: Copy>(
    b: &[u8],
    i: usize,
    depth: usize,
    members: &mut Vec<Member<T>>,
    mut tag: impl FnMut(&[u8], usize, usize, u8) -> Result<Option<T>, Stop>,
) -> Result<usize, Stop> {
    members.clear();
    if byte(b, i)? != b'{' || depth >= MAX_DEPTH {
        return Err(Invalid);
    }
    let mut prev_end = i + 1;
    let mut i = ws(b, i + 1);
    if byte(b, i)? == b'}' {
        return Ok(i + 1);
    }
    let mut index = 0;
    loop {
        if byte(b, i)? != b'"' {
            return Err(Invalid);
        }
        let key_start = i;
        let (key_end, flags) = key_string(b, i)?;
        i = ws(b, key_end);
        if byte(b, i)? != b':' {
            return Err(Invalid);
        }
        let value_start = ws(b, i + 1);
        // Most values of a CV are strings or scalars: skip them without the container machinery.
        let value_end = match byte(b, value_start)? {
            b'"' => string(b, value_start)?.0,
            b'{' | b'[' => value(b, value_start, depth + 1)?,
            _ => scalar(b, value_start)?,
        };
        if let Some(tag) = tag(b, key_start, key_end, flags)? {
            members.push(Member { key_start, key_end, flags, value_start, value_end, prev_end, index, tag });
        }
        prev_end = value_end;
        index += 1;
        i = ws(b, value_end);
        match byte(b, i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Ok(i + 1),
            _ => return Err(Invalid),
        }
    }
}

/// The array at `b[i] == '['`, inside `depth` containers: validated whole, `each` called with
/// every element's start and end, in order. Where it ends.
pub(super) fn elements(
    b: &[u8],
    i: usize,
    depth: usize,
    mut each: impl FnMut(usize, usize) -> Result<(), Stop>,
) -> Result<usize, Stop> {
    if byte(b, i)? != b'[' || depth >= MAX_DEPTH {
        return Err(Invalid);
    }
    let mut i = ws(b, i + 1);
    if byte(b, i)? == b']' {
        return Ok(i + 1);
    }
    loop {
        let end = value(b, i, depth + 1)?;
        each(i, end)?;
        i = ws(b, end);
        match byte(b, i)? {
            b',' => i = ws(b, i + 1),
            b']' => return Ok(i + 1),
            _ => return Err(Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scanner accepts what serde_json accepts, value for value.
    #[test]
    fn agrees_with_serde_json() {
        let cases = [
            "{}",
            "[]",
            " {\"a\" : [1, -2.5e+3, 0, -0, 1E9, true, false, null, \"x\\u00e9\\n\", {}, []]} ",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":.5}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":truex}",
            "{\"a\":nul}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12G4\"}",
            "{\"a\":\"\t\"}",
            "{\"a\":\"\u{7f}\"}",
            "{\"a\":1,}",
            "{,\"a\":1}",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":[}",
            "{\"a\":{]}",
            "\"\\ud800\"",
            "{\"\\ud83d\\ude00\":1}",
            "[\"a\\\"b\\\\\",\"\\/\"]",
            "-",
            "[-0.0e-0]",
            "{\"\":\"\"}",
        ];
        for case in cases {
            let want = serde_json::from_str::<serde::de::IgnoredAny>(case).is_ok();
            let b = case.as_bytes();
            let start = ws(b, 0);
            let got = value(b, start, 0).is_ok_and(|end| ws(b, end) == b.len());
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn keys_must_decode() {
        for key in [r#"{"\ud800":1}"#, r#"{"a":{"x\udfff":1}}"#, r#"[{"\ud800\u0041":1}]"#] {
            assert_eq!(value(key.as_bytes(), 0, 0), Err(Invalid), "{key}");
        }
        // In a value a lone surrogate is valid JSON, as serde_json reads it when it skips.
        assert_eq!(value(br#"{"a":"\ud800"}"#, 0, 0), Ok(14));
    }

    #[test]
    fn stops_for_more_or_for_good() {
        for cut in ["{", "{\"a", "{\"a\"", "{\"a\":", "{\"a\":1", "{\"a\":t", "{\"a\":\"x\\u00", "[1,", "[{\"a\":[]"] {
            assert_eq!(value(cut.as_bytes(), 0, 0), Err(Eof), "{cut}");
        }
        for bad in ["{\"a\":x", "[1;", "{\"a\":\"\\q"] {
            assert_eq!(value(bad.as_bytes(), 0, 0), Err(Invalid), "{bad}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(value(ok.as_bytes(), 0, 0), Ok(ok.len()));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(value(deep.as_bytes(), 0, 0), Err(Invalid));
        let deep = format!("{}1{}", "[{\"a\":".repeat(100), "}]".repeat(100));
        assert_eq!(value(deep.as_bytes(), 0, 0), Err(Invalid));
    }

    #[test]
    fn members_point_into_the_bytes() {
        let b = br#"{ "a" :1, "b\"c":{"x":[1]} ,"a":"s"}"#;
        let mut m = Vec::new();
        let all = |_: &[u8], _, _, _| Ok(Some(()));
        assert_eq!(object(b, 0, 0, &mut m, all), Ok(b.len()));
        let got: Vec<(&[u8], u8, &[u8], usize)> =
            m.iter().map(|m| (m.key(b), m.flags, &b[m.value_start..m.value_end], m.index)).collect();
        assert_eq!(
            got,
            [(&b"a"[..], 0, &b"1"[..], 0), (b"b\\\"c", ESCAPED, b"{\"x\":[1]}", 1), (b"a", 0, b"\"s\"", 2)]
        );
        assert_eq!((m[0].prev_end, m[1].prev_end), (1, 8));
        // Only the members the caller tags are listed, in place.
        let some = |b: &[u8], s: usize, e: usize, _| Ok((&b[s..e] == b"\"a\"").then_some(()));
        object(b, 0, 0, &mut m, some).unwrap();
        assert_eq!(m.iter().map(|m| (m.index, m.prev_end)).collect::<Vec<_>>(), [(0, 1), (2, 26)]);
        // UTF-8 is checked where a string has a byte over 0x7F.
        assert_eq!(string("\"é\"".as_bytes(), 0), Ok((4, NON_ASCII)));
        assert_eq!(string(b"\"\xff\"", 0), Err(Invalid));
        assert_eq!(string(b"\"abcdefghijklmnop\xc3\xa9xyz\\n\"", 0), Ok((25, NON_ASCII | ESCAPED)));
        assert_eq!(string(b"\"abcdefghijklmnopq\xc3\"", 0), Err(Invalid));
    }
}
