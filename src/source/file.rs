//! NDJSON input for `replay`: one message per line, read with bounded
//! memory whatever the input holds.

use std::io::{self, BufRead};

use crate::allocator::GrowthTrim;
use crate::engine::Engine;
use crate::event::{MAX_MESSAGE_BYTES, Reject};

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line of at most [`MAX_MESSAGE_BYTES`] bytes (without its newline).
    Message(&'a [u8]),
    /// A longer line; its bytes were skipped, not buffered.
    TooLarge,
}

/// Splits a reader into lines, buffering at most one message. A line ends
/// at a line feed or a carriage return, so that files with CR-only line
/// endings read as lines too (a raw CR can be in no valid record: JSON
/// strings escape it). Lines that hold only white space are skipped: they
/// are not records, and the LF of a CRLF makes one.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    /// Reads lines from `inner`.
    pub fn new(inner: R) -> Self {
        LineReader { inner, line: Vec::with_capacity(4096) }
    }

    /// The next line, or `None` at the end of input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            self.line.clear();
            let mut too_large = false;
            let mut seen_any = false;
            loop {
                let chunk = match self.inner.fill_buf() {
                    Ok(c) => c,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if chunk.is_empty() {
                    break;
                }
                seen_any = true;
                let (part, done) = match memchr::memchr2(b'\n', b'\r', chunk) {
                    Some(i) => (&chunk[..i], Some(i + 1)),
                    None => (chunk, None),
                };
                if !too_large {
                    if self.line.len() + part.len() > MAX_MESSAGE_BYTES {
                        too_large = true;
                        self.line.clear();
                    } else {
                        self.line.extend_from_slice(part);
                    }
                }
                let used = done.unwrap_or(chunk.len());
                self.inner.consume(used);
                if done.is_some() {
                    break;
                }
            }
            if !seen_any {
                return Ok(None);
            }
            if too_large {
                return Ok(Some(Line::TooLarge));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Line::Message(&self.line)));
        }
    }
}

/// Feeds every line of `input` to `engine`, with `now_ms` as the wall
/// clock; `progress` is called every `every` lines with the count so far.
/// Gives the heap's free pages back as the engine's columns grow.
pub fn replay_into<R: BufRead>(
    engine: &mut Engine,
    input: R,
    now_ms: i64,
    every: u64,
    mut progress: impl FnMut(u64),
) -> io::Result<u64> {
    let mut reader = LineReader::new(input);
    let mut n = 0u64;
    let mut trim = GrowthTrim::default();
    while let Some(line) = reader.next_line()? {
        match line {
            // The outcome is counted by the engine; nothing else to do here.
            Line::Message(bytes) => {
                let _ = engine.apply(bytes, None, now_ms);
            }
            Line::TooLarge => engine.count_rejected(Reject::TooLarge),
        }
        trim.observe(engine.tracked_users());
        n += 1;
        if n.is_multiple_of(every) {
            progress(n);
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_skips_blank_and_bounds_long_lines() {
        let mut input = b"a\n\n  \r\nb\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_MESSAGE_BYTES + 1));
        input.extend(b"\nc");
        let mut r = LineReader::new(io::BufReader::with_capacity(7, &input[..]));
        assert_eq!(r.next_line().expect("io"), Some(Line::Message(b"a")));
        assert_eq!(r.next_line().expect("io"), Some(Line::Message(b"b")));
        assert_eq!(r.next_line().expect("io"), Some(Line::TooLarge));
        assert_eq!(r.next_line().expect("io"), Some(Line::Message(b"c")));
        assert_eq!(r.next_line().expect("io"), None);
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line() {
        let input = b"a\rb\r\rc\r\nd";
        let mut r = LineReader::new(io::BufReader::with_capacity(3, &input[..]));
        for want in [&b"a"[..], b"b", b"c", b"d"] {
            assert_eq!(r.next_line().expect("io"), Some(Line::Message(want)));
        }
        assert_eq!(r.next_line().expect("io"), None);
    }

    #[test]
    fn a_byte_order_mark_loses_no_record() {
        let cfg = crate::config::Config::from_toml_str("").expect("config").engine;
        let mut engine = Engine::new(std::sync::Arc::new(cfg));
        let input =
            "\u{feff}{\"user_id\":\"u\",\"event\":\"e\",\"ts\":0}\n{\"user_id\":\"v\",\"event\":\"e\",\"ts\":1}\n";
        assert_eq!(replay_into(&mut engine, input.as_bytes(), 10_000, 1 << 20, |_| {}).expect("io"), 2);
        assert_eq!(engine.counters().ingested, 2);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        let mut input = vec![b'y'; MAX_MESSAGE_BYTES];
        input.push(b'\n');
        let mut r = LineReader::new(io::BufReader::new(&input[..]));
        assert!(matches!(r.next_line().expect("io"), Some(Line::Message(m)) if m.len() == MAX_MESSAGE_BYTES));
    }
}
