//! Timestamps: RFC 3339 text to epoch milliseconds, without a calendar
//! library on the per-event path.

use std::cell::Cell;

/// Parses an RFC 3339 date-time (`T`, `t` or a space between date and time;
/// `Z`, `z` or `±hh:mm`; any fraction, truncated to milliseconds) into epoch
/// milliseconds. A leap second (`:60`) reads as `:59`, as jiff does.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits(b.get(r)?);
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && matches!(b[10], b'T' | b't' | b' ') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let midnight = utc_midnight_ms(&b[..10])?;
    let secs = i64::from(hour * 3600 + minute * 60 + second.min(59) - offset_secs);
    Some(midnight + secs * 1000 + millis)
}

/// The value of ASCII decimal digits, if they are all digits.
#[inline]
pub(super) fn digits(text: &[u8]) -> Option<i32> {
    text.iter().try_fold(0i32, |v, &c| c.is_ascii_digit().then(|| v * 10 + i32::from(c - b'0')))
}

/// Epoch ms of 00:00 UTC on a date (`YYYY-MM-DD`, its dashes checked by
/// the caller), validated by jiff. Consecutive events nearly always share
/// their date, so the last one is remembered (per thread): the same ten
/// bytes, read and validated before, are not read again, which keeps
/// calendar work and the date's digits off the per-event path.
fn utc_midnight_ms(text: &[u8]) -> Option<i64> {
    thread_local! {
        static LAST: Cell<([u8; 10], i64)> = const { Cell::new(([0; 10], i64::MIN)) };
    }
    let key: [u8; 10] = text.try_into().ok()?;
    LAST.with(|last| {
        let (k, ms) = last.get();
        if k == key && ms != i64::MIN {
            return Some(ms);
        }
        let (year, month, day) = (digits(&key[0..4])?, digits(&key[5..7])?, digits(&key[8..10])?);
        let date = jiff::civil::Date::new(i16::try_from(year).ok()?, month as i8, day as i8).ok()?;
        let ms = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_millisecond();
        last.set((key, ms));
        Some(ms)
    })
}
