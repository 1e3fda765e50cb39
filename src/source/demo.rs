//! A generator of realistic product traffic, for `demo` (and the load
//! generator): new users every day with a daily rhythm, returns that decay
//! with age, a checkout funnel with drop-off, an onboarding funnel, some
//! late arrivals and a few hostile lines. Deterministic for a given seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The configuration `demo` runs with; it matches what the generator emits.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

#[derive(Debug, Clone, Copy)]
struct SimUser {
    id: u64,
    /// 0..1: how likely the user is to keep coming back.
    loyalty: f64,
    platform: &'static str,
    channel: &'static str,
}

/// Generates events in time order (up to a small, bounded lateness).
#[derive(Debug)]
pub struct Generator {
    rng: fastrand::Rng,
    users: Vec<SimUser>,
    /// Users' next visits: (time, user index).
    visits: BinaryHeap<Reverse<(i64, usize)>>,
    /// Generated but not yet emitted: (emit time, sequence, line).
    pending: BinaryHeap<Reverse<(i64, u64, Vec<u8>)>>,
    seq: u64,
    /// Simulated time generated so far.
    clock_ms: i64,
    users_per_day: f64,
    /// Whether 1 line in 500 is hostile.
    hostile: bool,
}

const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const CHANNELS: [&str; 3] = ["organic", "ads", "referral"];

impl Generator {
    /// Starts at `start_ms` with about `users_per_day` sign-ups a day.
    pub fn new(seed: u64, start_ms: i64, users_per_day: f64) -> Self {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            users: Vec::new(),
            visits: BinaryHeap::new(),
            pending: BinaryHeap::new(),
            seq: 0,
            clock_ms: start_ms,
            users_per_day,
            hostile: true,
        }
    }

    /// Emits only valid events: no hostile lines (for comparing figures
    /// with another engine that validates differently).
    pub fn clean(mut self) -> Self {
        self.hostile = false;
        self
    }

    /// Simulated time reached.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Appends to `out` every line due before `until_ms`, in emit order.
    pub fn advance_to(&mut self, until_ms: i64, out: &mut Vec<Vec<u8>>) {
        while self.clock_ms < until_ms {
            let tick = self.clock_ms;
            let step = MINUTE.min(until_ms - tick);
            self.simulate(tick, step);
            self.clock_ms += step;
            while let Some(Reverse((at, _, _))) = self.pending.peek() {
                if *at >= self.clock_ms {
                    break;
                }
                if let Some(Reverse((_, _, line))) = self.pending.pop() {
                    out.push(line);
                }
            }
        }
    }

    fn simulate(&mut self, from: i64, len: i64) {
        // Sign-ups follow a daily rhythm: quiet at night, busy in the evening.
        let hour = ((from.rem_euclid(DAY)) / HOUR) as f64;
        let rhythm = 1.0 + 0.8 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
        let expected = self.users_per_day * rhythm * len as f64 / DAY as f64;
        let mut n = expected.floor() as usize;
        if self.rng.f64() < expected.fract() {
            n += 1;
        }
        for _ in 0..n {
            let user = SimUser {
                id: self.users.len() as u64 + 1,
                loyalty: 0.35 + 0.6 * self.rng.f64(),
                platform: PLATFORMS[self.rng.usize(..PLATFORMS.len())],
                channel: CHANNELS[self.rng.usize(..CHANNELS.len())],
            };
            self.users.push(user);
            let at = from + self.rng.i64(0..len.max(1));
            self.onboard(self.users.len() - 1, at);
        }
        while let Some(Reverse((at, idx))) = self.visits.peek().copied() {
            if at >= from + len {
                break;
            }
            self.visits.pop();
            self.session(idx, at);
        }
    }

    fn onboard(&mut self, idx: usize, at: i64) {
        self.emit(idx, "signup", at, None);
        if self.rng.f64() < 0.7 {
            let verified = at + self.rng.i64(MINUTE..2 * HOUR);
            self.emit(idx, "verify", verified, None);
            if self.rng.f64() < 0.35 {
                let paid = verified + self.rng.i64(MINUTE..20 * HOUR);
                let amount = self.amount();
                self.emit(idx, "pay", paid, Some(amount));
            }
        }
        let first_visit = at + self.rng.i64(0..5 * MINUTE);
        self.session(idx, first_visit);
    }

    fn session(&mut self, idx: usize, at: i64) {
        let mut t = at;
        let views = 1 + self.rng.usize(..5);
        for _ in 0..views {
            self.emit(idx, "view", t, None);
            t += self.rng.i64(5_000..120_000);
        }
        if self.rng.f64() < 0.35 {
            t += self.rng.i64(10_000..20 * MINUTE);
            self.emit(idx, "add_to_cart", t, None);
            if self.rng.f64() < 0.5 {
                // Now and then an order comes after the 1 h window.
                t += self.rng.i64(30_000..70 * MINUTE);
                let amount = self.amount();
                self.emit(idx, "order", t, Some(amount));
                if self.rng.f64() < 0.3 {
                    let amount = self.amount();
                    self.emit(idx, "pay", t + 1_000, Some(amount));
                }
            }
        }
        // Return visits: fewer the less loyal, each after about a day or two.
        let user = self.users[idx];
        if self.rng.f64() < user.loyalty {
            let gap = (DAY as f64 * (0.3 + 2.0 * self.rng.f64() / user.loyalty)) as i64;
            self.visits.push(Reverse((at + gap, idx)));
        }
    }

    /// An amount as a payment system writes it: 1.00 to 10 000.00, most
    /// often a JSON number, now and then a decimal string or a refund (a
    /// negative amount), and 2 in 100 one that is not counted (three
    /// decimals, or a decimal comma).
    fn amount(&mut self) -> String {
        let cents = 100 + self.rng.u32(..=999_900);
        let text = format!("{}.{:02}", cents / 100, cents % 100);
        match self.rng.u32(..100) {
            0 => format!("{text}5"),
            1 => format!("\"{},{:02}\"", cents / 100, cents % 100),
            2..=4 => format!("-{text}"),
            5..=14 => format!("\"{text}\""),
            _ => text,
        }
    }

    fn emit(&mut self, idx: usize, event: &str, ts: i64, amount: Option<String>) {
        let user = self.users[idx];
        // 1 in 500 lines is hostile, as real topics have.
        let line = if self.rng.u32(..500) == 0 && self.hostile {
            self.hostile(user.id, ts)
        } else {
            let stamp = jiff::Timestamp::from_millisecond(ts).map(|t| t.to_string()).unwrap_or_default();
            let amount = amount.map(|a| format!(",\"amount\":{a}")).unwrap_or_default();
            format!(
                r#"{{"user_id":"u{}","event":"{event}","ts":"{stamp}","props":{{"platform":"{}","channel":"{}"{amount}}}}}"#,
                user.id, user.platform, user.channel
            )
            .into_bytes()
        };
        // 2% arrive up to three minutes late: out of order, within lateness.
        let delay = if self.rng.u32(..50) == 0 { self.rng.i64(0..3 * MINUTE) } else { 0 };
        self.seq += 1;
        self.pending.push(Reverse((ts + delay, self.seq, line)));
    }

    fn hostile(&mut self, id: u64, ts: i64) -> Vec<u8> {
        match self.rng.u32(..6) {
            0 => b"{\"user_id\":\"u1\",\"event\":".to_vec(),
            1 => format!(r#"{{"user_id":"","event":"view","ts":{ts}}}"#).into_bytes(),
            2 => format!(r#"{{"user_id":"u{id}","event":"view","ts":"yesterday"}}"#).into_bytes(),
            3 => format!(r#"["u{id}","view",{ts}]"#).into_bytes(),
            4 => format!(r#"{{"user_id":"u{id}","event":"view","ts":{ts},"ts":{ts}}}"#).into_bytes(),
            _ => vec![0xff, 0xfe, b'{', b'}'],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_in_bounded_order_and_is_deterministic() {
        let run = || {
            let mut g = Generator::new(7, 0, 2000.0);
            let mut out = Vec::new();
            g.advance_to(3 * DAY, &mut out);
            out
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.len() > 5000, "{}", a.len());
        let names = crate::event::FieldNames::default();
        let decoded: Vec<_> = a.iter().filter_map(|l| crate::event::decode(l, &names, None).ok()).collect();
        assert!(decoded.len() * 100 > a.len() * 99);
        let mut max = 0;
        for e in &decoded {
            assert!(e.ts_ms + 4 * MINUTE >= max, "too far out of order");
            max = max.max(e.ts_ms);
        }
        for name in ["signup", "verify", "pay", "view", "add_to_cart", "order"] {
            assert!(decoded.iter().any(|e| e.name == name), "{name}");
        }
    }
}
