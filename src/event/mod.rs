//! Decoding and validation of one event message: pure, no I/O. The event
//! contract it enforces is in `docs/semantics.md`.
//!
//! [`decode`] turns the bytes of one Kafka message or NDJSON line into an
//! [`Event`] that borrows from those bytes wherever it can, or into a
//! [`Reject`] reason from a small fixed set. It never panics, whatever the
//! bytes: the reasons double as metric label values.
//!
//! The strategy is one pass over the whole message that keeps the three
//! required fields and `props` as raw JSON slices and skips every other
//! field without interpreting it: a hand-rolled scan (`simple`) for the
//! common shape (flat fields, strings without escapes, props one level
//! deep), `serde_json` for everything else; a property test holds the scan
//! to serde_json's reading wherever the scan claims a message.
//! Interpreting the slices afterwards keeps two kinds of failure apart: a document that is not JSON at all
//! (`invalid_json`) and a field of the wrong shape (`bad_user_id`, ...). It
//! also keeps unknown fields and props harmless: a number out of range or a
//! lone surrogate escape in them only matters if something reads them.

mod fields;
mod simple;
mod time;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use fields::{Field, KeyBytes, TopFields, fields_via_serde};
pub use time::parse_rfc3339_ms;

/// The largest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Events are accepted from 1970-01-01T00:00:00Z ...
pub const MIN_TS_MS: i64 = 0;
/// ... up to but not including 2100-01-01T00:00:00Z.
pub const END_TS_MS: i64 = 4_102_444_800_000;

/// Why a message was not accepted. The set is fixed: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    TooLarge,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not one well-formed JSON document (or nested too deep).
    InvalidJson,
    /// Well-formed JSON, but not an object.
    NotObject,
    /// `user_id`, `event` or `ts` named more than once.
    DuplicateKey,
    /// `user_id` missing, empty, or neither a string nor an integer.
    BadUserId,
    /// `event` missing, empty, or not a string.
    BadEvent,
    /// `ts` missing, malformed, or outside [1970, 2100).
    BadTimestamp,
    /// Older than the state horizon (decided by the engine).
    TooLate,
    /// Too far ahead of the wall clock (decided by the engine).
    TooEarly,
}

impl Reject {
    /// Every reason, in a stable order (for exporting zero-valued series).
    pub const ALL: [Reject; 10] = [
        Reject::TooLarge,
        Reject::InvalidUtf8,
        Reject::InvalidJson,
        Reject::NotObject,
        Reject::DuplicateKey,
        Reject::BadUserId,
        Reject::BadEvent,
        Reject::BadTimestamp,
        Reject::TooLate,
        Reject::TooEarly,
    ];

    /// The label value used in metrics, logs and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::InvalidUtf8 => "invalid_utf8",
            Reject::InvalidJson => "invalid_json",
            Reject::NotObject => "not_object",
            Reject::DuplicateKey => "duplicate_key",
            Reject::BadUserId => "bad_user_id",
            Reject::BadEvent => "bad_event",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::TooLate => "too_late",
            Reject::TooEarly => "too_early",
        }
    }

    /// Index into [`Reject::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest user id accepted by default, in bytes: ids are kept for
/// every tracked user, so their length bounds what `max_users` costs.
pub const DEFAULT_MAX_USER_ID_BYTES: usize = 256;

/// The configured shape of events: the names of their fields (many
/// producers say `uid`, `name`, `time`) and the longest user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    /// The longest user id accepted, in UTF-8 bytes as decoded; longer
    /// ones are `bad_user_id`.
    pub max_user_id_bytes: usize,
    /// Name of the user id field.
    pub user_id: String,
    /// Name of the event name field.
    pub event: String,
    /// Name of the timestamp field.
    pub ts: String,
    /// Name of the properties object.
    pub props: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            max_user_id_bytes: DEFAULT_MAX_USER_ID_BYTES,
            user_id: "user_id".into(),
            event: "event".into(),
            ts: "ts".into(),
            props: "props".into(),
        }
    }
}

/// One accepted event, borrowing from the message where no unescaping was
/// needed.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The user id, exactly as decoded (integers as their decimal string).
    pub user_id: Cow<'a, str>,
    /// The event name, exactly as decoded.
    pub name: Cow<'a, str>,
    /// Event time, epoch milliseconds (fractions truncated).
    pub ts_ms: i64,
    /// The raw JSON text of `props`; interpreted lazily by [`Event::prop`].
    props: Option<&'a str>,
}

/// A property value usable in step filters.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue<'a> {
    /// A JSON string.
    Str(Cow<'a, str>),
    /// A finite JSON number.
    Num(f64),
    /// A JSON boolean.
    Bool(bool),
}

impl PartialEq for Event<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.user_id == other.user_id
            && self.name == other.name
            && self.ts_ms == other.ts_ms
            && self.props == other.props
    }
}

impl<'a> Event<'a> {
    /// Builds an event directly (generators and tests).
    pub fn new(user_id: impl Into<Cow<'a, str>>, name: impl Into<Cow<'a, str>>, ts_ms: i64) -> Self {
        Event { user_id: user_id.into(), name: name.into(), ts_ms, props: None }
    }

    /// The raw JSON text of `props`, if present.
    pub fn props_raw(&self) -> Option<&'a str> {
        self.props
    }

    /// The value of property `key`, if `props` is an object holding it with
    /// a usable value. Anything else (not an object, another type, a number
    /// out of range, a string with a lone surrogate) reads as absent.
    pub fn prop(&self, key: &str) -> Option<PropValue<'a>> {
        let mut found = [None];
        self.find_props(&[key], &mut found);
        found[0].map(RawValue::get).and_then(interpret_prop)
    }

    /// The JSON text of property `key` as the event has it (a number's
    /// digits, a string with its quotes and escapes), for readers that
    /// must not go through a float: money.
    pub fn prop_raw(&self, key: &str) -> Option<&'a str> {
        let mut found = [None];
        self.find_props(&[key], &mut found);
        found[0].map(RawValue::get)
    }

    /// The values of several properties in one pass over `props` (the
    /// last occurrence of a repeated key wins, as for a repeated `props`
    /// and in most JSON readers), read like [`Event::prop`].
    pub fn props<S: AsRef<str>>(&self, keys: &[S]) -> Vec<Option<PropValue<'a>>> {
        let mut found = vec![None; keys.len()];
        self.find_props(keys, &mut found);
        found.into_iter().map(|v| v.map(RawValue::get).and_then(interpret_prop)).collect()
    }

    fn find_props<S: AsRef<str>>(&self, keys: &[S], found: &mut [Option<&'a RawValue>]) {
        if let Some(raw) = self.props {
            let mut de = serde_json::Deserializer::from_str(raw);
            // Not an object, or broken inside: no usable props.
            if de::Deserializer::deserialize_any(&mut de, PropsVisitor { keys, found: &mut *found }).is_err() {
                found.iter_mut().for_each(|f| *f = None);
            }
        }
    }
}

struct PropsVisitor<'k, 'de, S> {
    keys: &'k [S],
    found: &'k mut [Option<&'de RawValue>],
}

impl<'de, S: AsRef<str>> Visitor<'de> for PropsVisitor<'_, 'de, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while let Some(key) = map.next_key::<KeyBytes<'de>>()? {
            let slot = self.keys.iter().position(|k| k.as_ref().as_bytes() == key.0.as_ref());
            match slot {
                Some(i) => self.found[i] = Some(map.next_value::<&'de RawValue>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    // Anything but an object: no props.
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(())
    }
}

fn interpret_prop(text: &str) -> Option<PropValue<'_>> {
    match text.as_bytes().first()? {
        b'"' => json_string(text, Strings::MayEscape).map(PropValue::Str),
        b't' => Some(PropValue::Bool(true)),
        b'f' => Some(PropValue::Bool(false)),
        b'-' | b'0'..=b'9' => serde_json::from_str::<f64>(text).ok().filter(|v| v.is_finite()).map(PropValue::Num),
        _ => None,
    }
}

/// Decodes one message. `fallback_ts_ms` is the Kafka message timestamp,
/// used only when the `ts` field is absent and that use is configured.
pub fn decode<'a>(bytes: &'a [u8], names: &FieldNames, fallback_ts_ms: Option<i64>) -> Result<Event<'a>, Reject> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Reject::TooLarge);
    }
    // A byte order mark before the document is no part of it (RFC 8259
    // lets a reader ignore it): the first line of a file saved by some
    // editors starts with one.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = simdutf8::basic::from_utf8(bytes).map_err(|_| Reject::InvalidUtf8)?;
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    if first != Some(b'{') {
        // Tell a well-formed non-object from garbage.
        // Tell a well-formed non-object from garbage. Skipping a value in
        // serde_json is iterative, so no nesting depth can exhaust the stack.
        let ok = serde_json::from_str::<IgnoredAny>(text).is_ok();
        return Err(if ok { Reject::NotObject } else { Reject::InvalidJson });
    }

    let (fields, strings) = match simple::fields(text, names) {
        Some(fields) => (fields, Strings::Plain),
        None => (fields_via_serde(text, names)?, Strings::MayEscape),
    };
    if fields.duplicate {
        return Err(Reject::DuplicateKey);
    }

    let user_id = fields
        .user_id
        .and_then(|t| user_id_of(t, strings))
        .filter(|id| id.len() <= names.max_user_id_bytes)
        .ok_or(Reject::BadUserId)?;
    let name = fields.event.and_then(|t| json_string(t, strings)).filter(|s| !s.is_empty()).ok_or(Reject::BadEvent)?;
    let ts_ms = match fields.ts {
        Some(raw) => timestamp_of(raw, strings).ok_or(Reject::BadTimestamp)?,
        None => fallback_ts_ms.filter(|t| (MIN_TS_MS..END_TS_MS).contains(t)).ok_or(Reject::BadTimestamp)?,
    };
    Ok(Event { user_id, name, ts_ms, props: fields.props })
}

/// What is known of the raw string texts of a message's fields.
#[derive(Debug, Clone, Copy)]
enum Strings {
    /// Read by the one-pass scan: well-formed, and without an escape.
    Plain,
    /// Checked by serde_json to be well-formed; may hold escapes.
    MayEscape,
}

/// A raw JSON string value (text already checked to be JSON), unescaped;
/// borrowed when it has no escapes. `None` for another type or a string
/// that is not valid Unicode.
#[inline]
fn json_string(text: &str, strings: Strings) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if matches!(strings, Strings::Plain) || !inner.contains('\\') {
        // Already checked to be a well-formed string.
        return Some(Cow::Borrowed(inner));
    }
    unescape(text)
}

/// The slow half of [`json_string`], apart so that the fast half inlines.
#[cold]
fn unescape(text: &str) -> Option<Cow<'_, str>> {
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// A JSON integer literal (`-?(0|[1-9][0-9]*)`), as its text.
fn integer_literal(text: &str) -> Option<&str> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

fn user_id_of(text: &str, strings: Strings) -> Option<Cow<'_, str>> {
    if text.starts_with('"') {
        return json_string(text, strings).filter(|s| !s.is_empty());
    }
    // An integer id is taken as its decimal string; "-0" is 0.
    integer_literal(text).map(|t| if t == "-0" { Cow::Borrowed("0") } else { Cow::Borrowed(t) })
}

fn timestamp_of(text: &str, strings: Strings) -> Option<i64> {
    let ms = if text.starts_with('"') {
        parse_rfc3339_ms(&json_string(text, strings)?)?
    } else {
        integer_literal(text)?.parse::<i64>().ok()?
    };
    (MIN_TS_MS..END_TS_MS).contains(&ms).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::fields::same;
    use super::*;

    fn dec(s: &str) -> Result<Event<'_>, Reject> {
        decode(s.as_bytes(), &FieldNames::default(), None)
    }

    #[test]
    fn user_ids_are_bounded_in_bytes_as_decoded() {
        let event = |id: &str| format!(r#"{{"user_id":"{id}","event":"e","ts":0}}"#);
        let at_bound = "é".repeat(DEFAULT_MAX_USER_ID_BYTES / 2);
        assert_eq!(dec(&event(&at_bound)).map(|e| e.user_id.len()), Ok(DEFAULT_MAX_USER_ID_BYTES));
        assert_eq!(dec(&event(&format!("{at_bound}x"))).map(|_| ()), Err(Reject::BadUserId));
        // Escapes count as what they decode to: 128 × "\u00e9" is 256 bytes.
        assert!(dec(&event(&"\\u00e9".repeat(128))).is_ok());
        assert_eq!(dec(&event(&"\\u00e9".repeat(129))).map(|_| ()), Err(Reject::BadUserId));
        let digits = "7".repeat(DEFAULT_MAX_USER_ID_BYTES + 1);
        assert_eq!(dec(&format!(r#"{{"user_id":{digits},"event":"e","ts":0}}"#)).map(|_| ()), Err(Reject::BadUserId));
        let names = FieldNames { max_user_id_bytes: 3, ..FieldNames::default() };
        assert!(decode(event("abc").as_bytes(), &names, None).is_ok());
        assert_eq!(decode(event("abcd").as_bytes(), &names, None).map(|_| ()), Err(Reject::BadUserId));
    }

    #[test]
    fn a_repeated_key_reads_the_last_value_inside_props_and_of_props() {
        for text in [
            r#"{"user_id":"u","event":"e","ts":0,"props":{"c":"first","c":"last"}}"#,
            r#"{"user_id":"u","event":"e","ts":0,"props":{"c":"first"},"props":{"c":"last"}}"#,
            // The same through serde_json (an escape leaves the fast scan).
            r#"{"user_id":"\u0075","event":"e","ts":0,"props":{"c":"first","c":"last"}}"#,
            r#"{"user_id":"\u0075","event":"e","ts":0,"props":{"c":"first"},"props":{"c":"last"}}"#,
        ] {
            let e = dec(text).expect("accepted");
            assert_eq!(e.prop("c"), Some(PropValue::Str("last".into())), "{text}");
            assert_eq!(e.props(&["c"]), vec![Some(PropValue::Str("last".into()))], "{text}");
        }
    }

    #[test]
    fn accepts_the_spec_example() {
        let e = dec(r#"{"user_id":"u123","event":"view","ts":"2026-11-20T08:15:00.123Z","props":{"platform":"ios","channel":"organic","amount":12.5}}"#)
            .expect("valid");
        assert_eq!(e.user_id, "u123");
        assert_eq!(e.name, "view");
        assert_eq!(e.ts_ms, 1_795_162_500_123);
        assert_eq!(e.prop("channel"), Some(PropValue::Str("organic".into())));
        assert_eq!(e.prop("amount"), Some(PropValue::Num(12.5)));
        assert_eq!(e.prop("missing"), None);
    }

    #[test]
    fn field_names_compare_as_slices_do() {
        // Every length the word compare takes and either side of it, with
        // the two sides differing at each byte in turn.
        for len in 0..12 {
            let a: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
            assert!(same(&a, &a.clone()));
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same(&a, &b), "{len} {at}");
            }
            assert!(!same(&a, &a[..len.saturating_sub(1)]) || len == 0);
        }
    }

    #[test]
    fn timestamp_forms() {
        let ms = |ts: &str| dec(&format!(r#"{{"user_id":"u","event":"e","ts":{ts}}}"#)).map(|e| e.ts_ms);
        assert_eq!(ms(r#""1970-01-01T00:00:00Z""#), Ok(0));
        assert_eq!(ms(r#""1970-01-01T08:00:00+08:00""#), Ok(0));
        assert_eq!(ms(r#""1969-12-31T19:00:00-05:00""#), Ok(0));
        assert_eq!(ms(r#""2026-11-20t08:15:00.1239999z""#), Ok(1_795_162_500_123));
        assert_eq!(ms(r#""2026-11-20 08:15:00.5Z""#), Ok(1_795_162_500_500));
        assert_eq!(ms(r#""2016-12-31T23:59:60Z""#), ms(r#""2016-12-31T23:59:59Z""#));
        assert_eq!(ms("1795162500123"), Ok(1_795_162_500_123));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("4102444799999"), Ok(4_102_444_799_999));
        assert_eq!(ms(r#""2099-12-31T23:59:59.999Z""#), Ok(4_102_444_799_999));
        for bad in [
            "4102444800000",
            "-1",
            "1.5",
            "1e12",
            r#""2100-01-01T00:00:00Z""#,
            r#""1969-12-31T23:59:59.999Z""#,
            r#""2026-11-20T08:15:00""#,
            r#""2026-11-20T08:15:00+0800""#,
            r#""2026-11-20T08:15Z""#,
            r#""2026-02-30T08:15:00Z""#,
            r#""2026-11-20T24:00:00Z""#,
            r#""2026-11-20T08:15:00.Z""#,
            r#""2026-11-20T08:15:00+24:00""#,
            r#""2026-11-20""#,
            r#""""#,
            "true",
            "null",
            "{}",
        ] {
            assert_eq!(ms(bad), Err(Reject::BadTimestamp), "{bad}");
        }
    }

    #[test]
    fn integer_user_ids_are_their_decimal_string() {
        let id = |v: &str| dec(&format!(r#"{{"user_id":{v},"event":"e","ts":0}}"#)).map(|e| e.user_id.into_owned());
        assert_eq!(id("42"), Ok("42".into()));
        assert_eq!(id("-7"), Ok("-7".into()));
        assert_eq!(id("123456789012345678901234567890"), Ok("123456789012345678901234567890".into()));
        assert_eq!(id(r#""\u0041b""#), Ok("Ab".into()));
        assert_eq!(id(r#"" x ""#), Ok(" x ".into()));
        for bad in ["1.0", "1e3", r#""""#, "true", "null", "[1]", r#""\ud800""#] {
            assert_eq!(id(bad), Err(Reject::BadUserId), "{bad}");
        }
    }

    #[test]
    fn each_reason() {
        let big = format!(r#"{{"user_id":"u","event":"e","ts":0,"pad":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(dec(&big), Err(Reject::TooLarge));
        assert_eq!(decode(b"{\"user_id\":\"\xff\"}", &FieldNames::default(), None), Err(Reject::InvalidUtf8));
        assert_eq!(dec(r#"{"user_id":"u","#), Err(Reject::InvalidJson));
        assert_eq!(dec(r#"{"user_id":"u","event":"e","ts":0} {}"#), Err(Reject::InvalidJson));
        assert_eq!(dec(""), Err(Reject::InvalidJson));
        assert_eq!(dec("[1,2"), Err(Reject::InvalidJson));
        assert_eq!(dec("[1,2]"), Err(Reject::NotObject));
        assert_eq!(dec(r#" "x" "#), Err(Reject::NotObject));
        assert_eq!(dec("null"), Err(Reject::NotObject));
        assert_eq!(dec(r#"{"user_id":"u","user_id":"v","event":"e","ts":0}"#), Err(Reject::DuplicateKey));
        assert_eq!(dec(r#"{"user_id":"u","event":"e","ts":0,"ts":1}"#), Err(Reject::DuplicateKey));
        assert_eq!(dec(r#"{"user_id":"u","event":"e","\u0074s":0,"ts":1}"#), Err(Reject::DuplicateKey));
        assert_eq!(dec(r#"{"event":"e","ts":0}"#), Err(Reject::BadUserId));
        assert_eq!(dec(r#"{"user_id":"u","event":"","ts":0}"#), Err(Reject::BadEvent));
        assert_eq!(dec(r#"{"user_id":"u","event":3,"ts":0}"#), Err(Reject::BadEvent));
        assert_eq!(dec(r#"{"user_id":"u","ts":0}"#), Err(Reject::BadEvent));
        assert_eq!(dec(r#"{"user_id":"u","event":"e"}"#), Err(Reject::BadTimestamp));
    }

    #[test]
    fn weird_props_and_unknown_fields_cost_nothing() {
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let line = format!(
            r#"{{"x":1e999,"y":"\ud800","z":{deep},"user_id":"u","event":"e","ts":0,
               "props":{{"a":1e999,"b":"\udfff","c":[1],"d":true,"e":-2.5,"f":null}}}}"#
        );
        let e = dec(&line).expect("accepted");
        assert_eq!(e.prop("a"), None);
        assert_eq!(e.prop("b"), None);
        assert_eq!(e.prop("c"), None);
        assert_eq!(e.prop("d"), Some(PropValue::Bool(true)));
        assert_eq!(e.prop("e"), Some(PropValue::Num(-2.5)));
        assert_eq!(e.prop("f"), None);
        let not_object = dec(r#"{"user_id":"u","event":"e","ts":0,"props":[1,2]}"#).expect("accepted");
        assert_eq!(not_object.prop("0"), None);
        // Field names must be valid JSON strings.
        assert_eq!(dec(r#"{"\udc00":1,"user_id":"u","event":"e","ts":0}"#), Err(Reject::InvalidJson));
        assert_eq!(dec("{\"a\u{1}\":1,\"user_id\":\"u\",\"event\":\"e\",\"ts\":0}"), Err(Reject::InvalidJson));
        let very_deep =
            format!(r#"{{"user_id":"u","event":"e","ts":0,"z":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(dec(&very_deep).is_ok());
        let unbalanced = format!(r#"{{"user_id":"u","event":"e","ts":0,"z":{}}}"#, "[".repeat(100_000));
        assert_eq!(dec(&unbalanced), Err(Reject::InvalidJson));
    }

    #[test]
    fn configured_field_names_and_fallback_time() {
        let names = FieldNames {
            user_id: "uid".into(),
            event: "name".into(),
            ts: "time".into(),
            props: "p".into(),
            ..FieldNames::default()
        };
        let e = decode(br#"{"uid":"u","name":"n","user_id":[],"p":{"k":"v"}}"#, &names, Some(5)).expect("valid");
        assert_eq!((e.user_id.as_ref(), e.name.as_ref(), e.ts_ms), ("u", "n", 5));
        assert_eq!(e.prop("k"), Some(PropValue::Str("v".into())));
        assert_eq!(decode(br#"{"uid":"u","name":"n"}"#, &names, None), Err(Reject::BadTimestamp));
    }
}
