//! Decoding on arbitrary input: never a panic, always a verdict, and the
//! verdict agrees with serde_json's own reading where they overlap.

use cohortflow::event::{FieldNames, Reject, decode};
use proptest::prelude::*;

fn names() -> FieldNames {
    FieldNames::default()
}

/// Mutations of a valid event: bytes flipped, cut, or spliced.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let base = br#"{"user_id":"u1","event":"view","ts":"2026-11-20T08:15:00.123+08:00","props":{"a":[1,{"b":null}],"c":"\u00e9"}}"#.to_vec();
    (prop::collection::vec((0..base.len(), any::<u8>()), 0..6), 0..=base.len()).prop_map(move |(edits, cut)| {
        let mut v = base.clone();
        for (i, b) in edits {
            v[i] = b;
        }
        v.truncate(cut.max(1));
        v
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let verdict = decode(&bytes, &names(), None);
        if std::str::from_utf8(&bytes).is_err() {
            prop_assert_eq!(verdict.err(), Some(Reject::InvalidUtf8));
        }
    }

    #[test]
    fn mutated_events_never_panic_and_agree_with_serde_json(bytes in mutated()) {
        let verdict = decode(&bytes, &names(), None);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            // serde_json's syntax check, lenient (like the decoder) about
            // number ranges and lone surrogates.
            let syntactic = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            let object = text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{');
            match &verdict {
                Err(Reject::InvalidJson) => prop_assert!(!syntactic, "{}", text),
                Err(Reject::NotObject) => prop_assert!(syntactic && !object, "{}", text),
                Ok(_) => prop_assert!(syntactic && object, "{}", text),
                _ => prop_assert!(syntactic && object, "{}", text),
            }
            prop_assert_eq!(verdict.as_ref().err() == Some(&Reject::InvalidJson), !syntactic);
        }
    }

    #[test]
    fn any_json_document_gets_a_verdict_matching_its_shape(v in json_value()) {
        let text = v.to_string();
        let verdict = decode(text.as_bytes(), &names(), None);
        match &v {
            serde_json::Value::Object(m) => {
                prop_assert_ne!(verdict.as_ref().err(), Some(&Reject::InvalidJson));
                prop_assert_ne!(verdict.as_ref().err(), Some(&Reject::NotObject));
                if !m.contains_key("user_id") {
                    prop_assert_eq!(verdict.err(), Some(Reject::BadUserId));
                }
            }
            _ => prop_assert_eq!(verdict.err(), Some(Reject::NotObject)),
        }
    }

    #[test]
    fn valid_events_decode_to_their_fields(
        user in "[^\"\\\\\u{0}-\u{1f}]{1,12}",
        event in "[a-z_]{1,10}",
        ts in 0i64..4_102_444_800_000,
        extra in json_value(),
    ) {
        let line = serde_json::json!({"user_id": user, "event": event, "ts": ts, "extra": extra, "props": extra});
        let text = line.to_string();
        let e = decode(text.as_bytes(), &names(), None).expect("valid");
        prop_assert_eq!(e.user_id.as_ref(), user.as_str());
        prop_assert_eq!(e.name.as_ref(), event.as_str());
        prop_assert_eq!(e.ts_ms, ts);
        // RFC 3339 in UTC gives the same instant.
        let stamp = jiff::Timestamp::from_millisecond(ts).expect("ts").to_string();
        let text = serde_json::json!({"user_id": user, "event": event, "ts": stamp}).to_string();
        prop_assert_eq!(decode(text.as_bytes(), &names(), None).expect("valid").ts_ms, ts);
    }

    /// RFC 3339 times in every form the parser takes (`T`, `t` or a space;
    /// `Z`, `z` or an offset; no fraction or up to nine digits, truncated
    /// to the millisecond), written from jiff's local time at the offset:
    /// the parser gives the instant, and so does jiff reading the text.
    #[test]
    fn rfc3339_times_read_as_jiff_reads_them(
        ms in 0i64..4_102_444_800_000,
        offset_min in -(23 * 60 + 59)..=(23 * 60 + 59i32),
        zulu in prop::sample::select(vec!["", "Z", "z"]),
        sep in prop::sample::select(vec!["T", "t", " "]),
        extra in "[0-9]{0,6}",
        fraction in any::<bool>(),
    ) {
        let offset = if zulu.is_empty() { offset_min } else { 0 };
        let tz = jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(offset * 60).expect("offset"));
        let at = jiff::Timestamp::from_millisecond(ms).expect("ms").to_zoned(tz).datetime();
        let fraction = if fraction || ms % 1000 != 0 || !extra.is_empty() {
            format!(".{:03}{extra}", ms.rem_euclid(1000))
        } else {
            String::new()
        };
        let zone = if zulu.is_empty() {
            let sign = if offset < 0 { '-' } else { '+' };
            format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
        } else {
            zulu.to_string()
        };
        let text = format!("{}{sep}{}{fraction}{zone}", at.strftime("%Y-%m-%d"), at.strftime("%H:%M:%S"));
        prop_assert_eq!(cohortflow::event::parse_rfc3339_ms(&text), Some(ms), "{}", text);
        let jiff_reads: jiff::Timestamp = text.parse().expect("jiff reads it");
        prop_assert_eq!(jiff_reads.as_millisecond(), ms, "{}", text);
    }

    /// A time with one byte of its date and clock changed: what the
    /// parser still reads, jiff reads as the same instant, and a digit or
    /// separator replaced by anything else is never read.
    #[test]
    fn rfc3339_times_with_a_byte_changed(
        ms in 0i64..4_102_444_800_000,
        at in 0usize..19,
        c in prop_oneof![4 => (0x20u8..0x7f).prop_map(char::from), 1 => any::<char>()],
        tail in prop::sample::select(vec!["Z", ".5Z", "+01:30", "-00:00"]),
    ) {
        let stamp = jiff::Timestamp::from_millisecond(ms).expect("ms").strftime("%Y-%m-%dT%H:%M:%S").to_string();
        let mut text: String = stamp.chars().enumerate().map(|(i, x)| if i == at { c } else { x }).collect();
        text.push_str(tail);
        let parsed = cohortflow::event::parse_rfc3339_ms(&text);
        if let Some(got) = parsed {
            let jiff_reads: jiff::Timestamp = text.parse().expect("jiff reads what the parser reads");
            prop_assert_eq!(jiff_reads.as_millisecond(), got, "{}", text);
        }
        let kept = match at {
            4 | 7 => c == '-',
            10 => matches!(c, 'T' | 't' | ' '),
            13 | 16 => c == ':',
            _ => c.is_ascii_digit(),
        };
        if !kept {
            prop_assert_eq!(parsed, None, "{}", text);
        }
    }
}
