//! The common shape of an event message, read in one pass without serde:
//! an object whose values are strings without escapes, numbers, `true`,
//! `false`, `null`, or one level of object holding those (`props`), with
//! optional whitespace between tokens:
//!
//! ```text
//! {"user_id":"u1","event":"view","ts":"2026-11-20T08:15:00.123Z","props":{"platform":"ios"}}
//! ```
//!
//! [`fields`] either reads such a message exactly as the serde path would
//! (the same raw texts, the same duplicate verdict) or gives up with `None`
//! at the first thing outside the shape, and the serde path decides. It
//! never accepts what serde_json would not: strings hold no escape and no
//! control character, numbers follow JSON's grammar, nothing follows the
//! object but whitespace. The equivalence is a property test.

use super::{Field, FieldNames, TopFields};

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    // Most messages have no whitespace between tokens: one test says so
    // (JSON's whitespace is all below `!`).
    while let Some(&c) = b.get(i)
        && c <= b' '
        && matches!(c, b' ' | b'\t' | b'\n' | b'\r')
    {
        i += 1;
    }
    i
}

/// Bytes that stop the scan of a string: the closing quote, an escape, a
/// control character.
static STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        stops[c] = true;
        c += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// Eight bytes at a time: the high bit of each byte of `w` that stops a
/// string (below 0x20, `"` or `\\`). Each test (a byte below n, a byte
/// equal to c) can also flag a byte above a true hit, from the borrow of the
/// subtraction, never one below it, so the lowest flag is always a true stop.
fn stops_in(w: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let e = w ^ (ONES * u64::from(b'\\'));
    let escape = e.wrapping_sub(ONES) & !e;
    (below_space | quote | escape) & HIGH
}

/// The end (after the closing quote) of the string opening at `b[i]`, if
/// it has no escape and no control character.
#[inline(always)]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let stops = stops_in(u64::from_le_bytes(word));
        if stops != 0 {
            j += (stops.trailing_zeros() / 8) as usize;
            return (b[j] == b'"').then_some(j + 1);
        }
        j += 8;
    }
    let close = b.get(j..)?.iter().position(|&c| STOPS[usize::from(c)])?;
    (b[j + close] == b'"').then_some(j + close + 1)
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// The end of the JSON number starting at `b[i]`:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits_end(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits_end(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits_end(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn literal_end(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..i + word.len()).filter(|w| *w == word).map(|_| i + word.len())
}

/// The end of the scalar starting at `b[i]`.
#[inline(always)]
fn scalar_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'-' | b'0'..=b'9' => number_end(b, i),
        b't' => literal_end(b, i, b"true"),
        b'f' => literal_end(b, i, b"false"),
        b'n' => literal_end(b, i, b"null"),
        _ => None,
    }
}

/// The end of the value starting at `b[i]`: a scalar, or an object of
/// scalars.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'{') {
        return scalar_end(b, i);
    }
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        i = skip_ws(b, string_end(b, i)?);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, scalar_end(b, skip_ws(b, i + 1))?);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The fields of `text` if it has the common shape (see the module docs).
pub(super) fn fields<'a>(text: &'a str, names: &FieldNames) -> Option<TopFields<'a>> {
    let b = text.as_bytes();
    let mut out = TopFields::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        // Both ends are at ASCII bytes, so on character boundaries.
        let value = text.get(start..end)?;
        if let Some(field) = Field::of(key, names) {
            out.set(field, value);
        }
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return (skip_ws(b, i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fields_via_serde;
    use super::*;
    use proptest::prelude::*;

    fn names() -> FieldNames {
        FieldNames::default()
    }

    #[test]
    fn reads_the_common_shape() {
        let text = r#" {"user_id":"u1", "event" : "view","ts":1700000000000,"x":null,"props":{"a":"b","n":-1.5e3},"user_id":7}"#;
        let f = fields(text, &names()).expect("common shape");
        assert_eq!(f.user_id, Some("7"));
        assert_eq!(f.event, Some(r#""view""#));
        assert_eq!(f.ts, Some("1700000000000"));
        assert_eq!(f.props, Some(r#"{"a":"b","n":-1.5e3}"#));
        assert!(f.duplicate);
        assert_eq!(Ok(f), fields_via_serde(text, &names()));
    }

    #[test]
    fn gives_up_outside_it() {
        for text in [
            r#"{"user_id":"a\"b"}"#,
            r#"{"props":{"a":[1]}}"#,
            r#"{"props":{"a":{"b":1}}}"#,
            r#"{"n":01}"#,
            r#"{"n":1.}"#,
            r#"{"n":.5}"#,
            r#"{"n":1e}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":tru}"#,
            r#"{"a" 1}"#,
        ] {
            assert_eq!(fields(text, &names()), None, "{text}");
        }
    }

    /// The byte-at-a-time scan the word-at-a-time one must agree with.
    fn string_end_bytewise(b: &[u8], i: usize) -> Option<usize> {
        let rest = b.get(i + 1..)?;
        let close = rest.iter().position(|&c| STOPS[usize::from(c)])?;
        (rest[close] == b'"').then_some(i + 1 + close + 1)
    }

    #[test]
    fn word_scan_finds_the_first_stop() {
        // Every stop byte (and near misses) at every position of strings
        // long enough to take several words, after ASCII and UTF-8 text.
        let specials = [b'"', b'\\', 0, 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff];
        for len in 0..40 {
            for at in 0..=len {
                for &c in &specials {
                    for fill in [b'a', 0xc3] {
                        let mut b = vec![b'"'];
                        b.extend(std::iter::repeat_n(fill, len));
                        if at < len {
                            b[1 + at] = c;
                        }
                        b.push(b'"');
                        b.extend_from_slice(b"xy\"");
                        assert_eq!(string_end(&b, 0), string_end_bytewise(&b, 0), "{b:?}");
                    }
                }
            }
        }
    }

    /// Objects of the common shape and around it: escapes, nesting,
    /// whitespace, odd numbers, duplicates.
    fn objects() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            "\"[a-z \\\\\"\u{e9}\u{20ac}\u{1f600}\u{1}\u{1f}]{0,20}\"",
            // Valid and invalid: leading zeros, a dot or an exponent without digits.
            "-?[0-9]{1,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
        ];
        let value = prop_oneof![
            3 => scalar.clone(),
            1 => prop::collection::vec(("\"[a-z]{1,3}\"", scalar), 0..3).prop_map(|kv| {
                let inner: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", inner.join(","))
            }),
            1 => Just("[1,2]".to_owned()),
        ];
        let key = prop_oneof![
            Just("\"user_id\"".to_owned()),
            Just("\"event\"".to_owned()),
            Just("\"ts\"".to_owned()),
            Just("\"props\"".to_owned()),
            "\"[a-z\\\\]{1,4}\"",
        ];
        let ws = "[ \t\n]{0,2}";
        prop::collection::vec((key, value, ws), 0..6).prop_map(|members| {
            let inner: Vec<String> = members.into_iter().map(|(k, v, w)| format!("{w}{k}{w}:{w}{v}{w}")).collect();
            format!("{{{}}}", inner.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whenever the fast path reads a message, serde_json reads it the
        /// same way.
        #[test]
        fn agrees_with_serde_wherever_it_reads(text in objects(), cut in any::<prop::sample::Index>(), flip in any::<Option<(prop::sample::Index, u8)>>()) {
            let mut bytes = text.into_bytes();
            if let Some((at, byte)) = flip {
                let at = at.index(bytes.len().max(1));
                if at < bytes.len() {
                    bytes[at] = byte;
                }
            }
            if cut.index(4) == 0 {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            if let Ok(text) = std::str::from_utf8(&bytes)
                && let Some(fast) = fields(text, &names()) {
                    prop_assert_eq!(Ok(fast), fields_via_serde(text, &names()), "{}", text);
                }
        }
    }
}
