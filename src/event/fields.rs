//! The top-level fields of an event object, as raw JSON texts: the
//! general path through serde_json, for any shape the one-pass scan
//! (`simple`) does not claim.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{FieldNames, Reject};

/// The object's fields through serde_json, whatever its shape.
pub(super) fn fields_via_serde<'a>(text: &'a str, names: &FieldNames) -> Result<TopFields<'a>, Reject> {
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de::Deserializer::deserialize_map(&mut de, TopVisitor { names }).map_err(|_| Reject::InvalidJson)?;
    de.end().map_err(|_| Reject::InvalidJson)?;
    Ok(fields)
}

/// The fields of an event object as raw JSON texts.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TopFields<'a> {
    pub(super) user_id: Option<&'a str>,
    pub(super) event: Option<&'a str>,
    pub(super) ts: Option<&'a str>,
    pub(super) props: Option<&'a str>,
    pub(super) duplicate: bool,
}

/// The fields of an event object the decoder reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Field {
    UserId,
    Event,
    Ts,
    Props,
}

impl Field {
    /// The field named `key` (unescaped), if it is one of them.
    pub(super) fn of(key: &[u8], names: &FieldNames) -> Option<Field> {
        // Plain tests in a row: on the hot path, cheaper than an array of
        // candidates searched by an iterator.
        if same(names.user_id.as_bytes(), key) {
            Some(Field::UserId)
        } else if same(names.event.as_bytes(), key) {
            Some(Field::Event)
        } else if same(names.ts.as_bytes(), key) {
            Some(Field::Ts)
        } else if same(names.props.as_bytes(), key) {
            Some(Field::Props)
        } else {
            None
        }
    }
}

/// Byte equality compared inline: field names are a few bytes, shorter
/// than the call a slice comparison makes. From 4 to 8 bytes, two
/// overlapping 4-byte words a side.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |w: &[u8; 4]| u32::from_ne_bytes(*w);
    match (a.first_chunk::<4>(), b.first_chunk::<4>(), a.last_chunk::<4>(), b.last_chunk::<4>()) {
        (Some(a0), Some(b0), Some(a1), Some(b1)) if a.len() <= 8 => word(a0) == word(b0) && word(a1) == word(b1),
        _ => a.iter().zip(b).all(|(x, y)| x == y),
    }
}

impl<'a> TopFields<'a> {
    /// Records a field's raw text. A repeated `user_id`, `event` or `ts` is
    /// a duplicate key; a repeated `props` is harmless: the last one wins.
    pub(super) fn set(&mut self, field: Field, value: &'a str) {
        let slot = match field {
            Field::UserId => &mut self.user_id,
            Field::Event => &mut self.event,
            Field::Ts => &mut self.ts,
            Field::Props => {
                self.props = Some(value);
                return;
            }
        };
        self.duplicate |= slot.is_some();
        *slot = Some(value);
    }
}

struct TopVisitor<'n> {
    names: &'n FieldNames,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = TopFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = TopFields::default();
        while let Some(key) = map.next_key::<KeyBytes<'de>>()? {
            match Field::of(key.0.as_ref(), self.names) {
                Some(field) => out.set(field, map.next_value::<&'de RawValue>()?.get()),
                // Skipped without interpreting numbers or strings, at any
                // depth (iteratively): unknown fields never cost an event.
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A map key, borrowed when it has no escapes. Read as a string, so that
/// serde_json checks it is valid JSON text: a raw control character or a
/// lone surrogate escape in a field *name* makes the document invalid JSON
/// (values of unknown fields stay unchecked beyond JSON syntax).
pub(super) struct KeyBytes<'de>(pub(super) Cow<'de, [u8]>);

impl<'de> de::Deserialize<'de> for KeyBytes<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyBytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Owned(v.to_vec())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        d.deserialize_str(V)
    }
}
