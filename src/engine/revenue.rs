//! Revenue: per business day the sum of the `[revenue]` payments' amounts
//! (refunds, negative, included), the users who paid and those who paid
//! for the first time; counters of payments and refunds, and of amounts
//! that could not be read, by reason.
//!
//! Amounts are exact: read from the event's JSON text (a number, or a
//! decimal string) into an `i64` of 10^-scale units, summed in `i128`, so
//! that a billion payments of 10^9 currency units cannot overflow, and
//! never through a float. Two payments of one user are one only when
//! event, time and amount all match: per paying user the family keeps the
//! payments of the history (sorted, so a replay is found by a binary
//! search) and the day of their first payment.

use std::collections::HashMap;
use std::io::Write;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::StateMismatch;
use super::calendar::{Calendar, Day};
use super::days::{DayRows, NO_DAY};
use super::def::EngineConfig;
use super::family::{Columns, Ctx, Family, Horizon, Touch, View};
use super::figures::{CohortRevenueRow, CohortRevenueTable, Figures, RevenueFigures, RevenueRow};
use super::users::Users;

/// Why an amount was not counted (the event counts everywhere else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountReject {
    /// The event has no such prop.
    Absent,
    /// The prop is not a number nor a decimal string.
    NotANumber,
    /// More decimals than `scale` (trailing zeros aside).
    TooManyDecimals,
    /// Beyond what 64 bits of 10^-scale units hold.
    OutOfRange,
}

impl AmountReject {
    /// Every reason, in the order of the counters.
    pub const ALL: [AmountReject; 4] =
        [AmountReject::Absent, AmountReject::NotANumber, AmountReject::TooManyDecimals, AmountReject::OutOfRange];

    /// The label value `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            AmountReject::Absent => "absent",
            AmountReject::NotANumber => "not_a_number",
            AmountReject::TooManyDecimals => "too_many_decimals",
            AmountReject::OutOfRange => "out_of_range",
        }
    }
}

/// An amount in units of 10^-`scale` from its JSON text (`raw`: a number,
/// or a string holding one, as JSON writes numbers).
pub fn amount(raw: Option<&str>, scale: u32) -> Result<i64, AmountReject> {
    let raw = raw.ok_or(AmountReject::Absent)?;
    let text = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_err(|_| AmountReject::NotANumber)?
    } else {
        raw.to_owned()
    };
    // JSON's number grammar, for strings too: no "1,5", "0x10", " 3"; a
    // number too large for a float (1e999) is still a number.
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        && !text.ends_with(char::is_whitespace)
        && serde_json::from_str::<&serde_json::value::RawValue>(&text).is_ok();
    if !is_number {
        return Err(AmountReject::NotANumber);
    }
    let parsed =
        if text.contains(['e', 'E']) { Decimal::from_scientific(&text) } else { Decimal::from_str_exact(&text) };
    let value = parsed.map_err(|_| AmountReject::OutOfRange)?.normalize();
    if value.scale() > scale {
        return Err(AmountReject::TooManyDecimals);
    }
    let mut units = value;
    units.rescale(scale);
    if units.scale() != scale {
        return Err(AmountReject::OutOfRange);
    }
    i64::try_from(units.mantissa()).map_err(|_| AmountReject::OutOfRange)
}

/// One payment of a user: what tells two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Payment {
    ts: i64,
    /// Index of its event in `[revenue] events`.
    event: u32,
    units: i64,
}

/// A user with a payment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Payer {
    /// The day of their first payment of a positive amount, or
    /// [`NO_DAY`] (refunds only, so far).
    first_day: Day,
    /// Their payments of the history, sorted.
    payments: Vec<Payment>,
}

/// One day's counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DayCounts {
    /// Sum of the amounts, in units.
    units: i128,
    /// Users with a payment of a positive amount.
    paying: i64,
    /// Users whose first such payment it was.
    new_paying: i64,
}

/// One cohort's revenue and payers through each day N.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LtvCounts {
    units: Vec<i128>,
    paying: Vec<i64>,
}

/// The cohort revenue of one `revenue = true` retention definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ltv {
    /// Index of the definition in `[[retention]]`.
    def: usize,
    /// Its days N (from the definition).
    #[serde(skip)]
    days: Vec<u32>,
    /// Per user: their cohort day, or [`NO_DAY`].
    cohort: Vec<Day>,
    rows: DayRows<LtvCounts>,
}

/// What a user's payments add to their cohort `c`'s cells: per day N of
/// `days`, the units paid from the cohort day through day c + N, and
/// whether a positive one is among them.
fn contribution(cal: &Calendar, payments: &[Payment], c: Day, days: &[u32]) -> Vec<(i128, bool)> {
    let start = cal.bounds(c).0;
    days.iter()
        .map(|&n| {
            let end = cal.bounds(c + n as Day).1;
            let within = payments.iter().filter(|p| p.ts >= start && p.ts < end);
            within.fold((0i128, false), |(sum, paid), p| (sum + i128::from(p.units), paid || p.units > 0))
        })
        .collect()
}

/// The revenue family (empty without `[revenue]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Revenue {
    /// Per `revenue = true` retention definition, its cohorts' revenue.
    ltv: Vec<Ltv>,
    rows: DayRows<DayCounts>,
    payers: HashMap<u32, Payer>,
    /// Units of payments (positive amounts) and of refunds, ever.
    paid_units: i128,
    refunded_units: i128,
    /// Amounts not counted, by [`AmountReject::ALL`].
    rejected: [u64; 4],
}

/// What events of `name` are to the revenue: 1 + the index of the
/// payment event, or 0.
pub fn classify(cfg: &EngineConfig, name: Option<&str>) -> u32 {
    let Some((name, def)) = name.zip(cfg.revenue.as_ref()) else { return 0 };
    def.events.iter().position(|e| e == name).map_or(0, |i| i as u32 + 1)
}

/// The names the revenue definition names.
pub fn names(cfg: &EngineConfig) -> impl Iterator<Item = &str> {
    cfg.revenue.iter().flat_map(|r| r.events.iter().map(String::as_str))
}

impl Revenue {
    /// A payment event (its event's index + 1 in `[revenue] events`).
    fn pay(&mut self, ctx: Ctx<'_>, t: &Touch<'_>, event: u32) {
        let Some(def) = ctx.cfg.revenue.as_ref() else { return };
        let units = match amount(t.ev.prop_raw(&def.amount_prop), def.scale) {
            Ok(units) => units,
            Err(reason) => {
                self.rejected[reason as usize] += 1;
                return;
            }
        };
        let payer = self.payers.entry(t.uid).or_insert(Payer { first_day: NO_DAY, payments: Vec::new() });
        let payment = Payment { ts: t.ts, event: event - 1, units };
        let Err(pos) = payer.payments.binary_search(&payment) else {
            // A replay.
            return;
        };
        let (start, end) = ctx.cal.bounds(t.day);
        let paid_that_day = payer.payments.iter().any(|p| p.ts >= start && p.ts < end && p.units > 0);
        // Cohort cells: what the user's payments gave before and after.
        let u = t.uid as usize;
        let mut before = Vec::with_capacity(self.ltv.len());
        for l in &self.ltv {
            let c = l.cohort[u];
            before.push((c != NO_DAY).then(|| contribution(ctx.cal, &payer.payments, c, &l.days)));
        }
        payer.payments.insert(pos, payment);
        for (l, before) in self.ltv.iter_mut().zip(before) {
            if let Some(before) = before {
                let c = l.cohort[u];
                let after = contribution(ctx.cal, &payer.payments, c, &l.days);
                l.add(c, &before, -1);
                l.add(c, &after, 1);
            }
        }
        if units > 0 {
            self.paid_units += i128::from(units);
        } else {
            self.refunded_units -= i128::from(units);
        }
        let old_first = payer.first_day;
        let first_moves = units > 0 && (old_first == NO_DAY || t.day < old_first);
        if first_moves {
            payer.first_day = t.day;
        }
        if let Some(row) = self.rows.row(t.day) {
            row.units += i128::from(units);
            row.paying += i64::from(units > 0 && !paid_that_day);
            row.new_paying += i64::from(first_moves);
        }
        if first_moves
            && old_first != NO_DAY
            && let Some(row) = self.rows.row(old_first)
        {
            row.new_paying -= 1;
        }
    }

    /// An event that may set or move the user's cohort of a `revenue =
    /// true` definition: its cells move with it, from the payments kept.
    fn move_cohorts(&mut self, ctx: Ctx<'_>, t: &Touch<'_>) {
        let cohorts = t.class.retention.cohorts();
        let u = t.uid as usize;
        for l in &mut self.ltv {
            if cohorts & (1 << l.def) == 0 {
                continue;
            }
            let old = l.cohort[u];
            if old != NO_DAY && old <= t.day {
                continue;
            }
            l.cohort[u] = t.day;
            let Some(payer) = self.payers.get(&t.uid) else { continue };
            if old != NO_DAY {
                let was = contribution(ctx.cal, &payer.payments, old, &l.days);
                l.add(old, &was, -1);
            }
            let now = contribution(ctx.cal, &payer.payments, t.day, &l.days);
            l.add(t.day, &now, 1);
        }
    }
}

impl Ltv {
    /// Adds `sign` times a user's contribution to cohort `c`'s row.
    fn add(&mut self, c: Day, cells: &[(i128, bool)], sign: i64) {
        if cells.iter().all(|&(units, paid)| units == 0 && !paid) {
            return;
        }
        if let Some(row) = self.rows.row(c) {
            row.units.resize(cells.len(), 0);
            row.paying.resize(cells.len(), 0);
            for (i, &(units, paid)) in cells.iter().enumerate() {
                row.units[i] += i128::from(sign) * units;
                row.paying[i] += sign * i64::from(paid);
            }
        }
    }
}

impl Family for Revenue {
    fn new(ctx: Ctx<'_>) -> Self {
        let ltv = (ctx.cfg.retention.iter().enumerate())
            .filter(|(_, r)| r.revenue)
            .map(|(def, r)| Ltv { def, days: r.periods.iter().map(|b| b.from).collect(), ..Ltv::default() })
            .collect();
        Revenue { ltv, ..Revenue::default() }
    }

    fn push_user(&mut self) {
        for l in &mut self.ltv {
            l.cohort.push(NO_DAY);
        }
    }

    fn record(&mut self, ctx: Ctx<'_>, _: &Users, t: &Touch<'_>) {
        let event = t.class.revenue;
        if event != 0 {
            self.pay(ctx, t, event);
        }
        if !self.ltv.is_empty() {
            self.move_cohorts(ctx, t);
        }
    }
    fn maintain(&mut self, ctx: Ctx<'_>, horizon: Horizon) {
        self.rows.drop_before(horizon.keep_from);
        for l in &mut self.ltv {
            l.rows.drop_before(horizon.keep_from);
        }
        // An accepted payment is at or after the horizon; whether its user
        // paid that day already reads the day's payments from its start.
        let from = ctx.cal.bounds(ctx.cal.day_of(horizon.horizon_ms.max(0))).0;
        for payer in self.payers.values_mut() {
            payer.payments.retain(|p| p.ts >= from);
        }
    }

    fn reach_days(&self, ctx: Ctx<'_>) -> i32 {
        self.ltv.iter().map(|l| ctx.cfg.retention[l.def].reach_days()).max().unwrap_or(0) as i32
    }

    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures) {
        let Some(def) = ctx.cfg.revenue.as_ref() else { return };
        let cohorts = self
            .ltv
            .iter()
            .map(|l| {
                let r = &ctx.cfg.retention[l.def];
                let n = r.periods.len();
                let rows = l
                    .rows
                    .range(view.from, view.to)
                    .filter(|(_, c)| c.units.iter().any(|&u| u != 0) || c.paying.iter().any(|&p| p != 0))
                    .map(|(d, c)| CohortRevenueRow {
                        date: Calendar::label(d),
                        units: (0..n).map(|i| c.units.get(i).copied().unwrap_or(0)).collect(),
                        paying_users: (0..n).map(|i| c.paying.get(i).copied().unwrap_or(0).max(0) as u64).collect(),
                    })
                    .collect();
                CohortRevenueTable { name: r.name.clone(), days: r.periods.iter().map(|b| b.from).collect(), rows }
            })
            .collect();
        let rows = self
            .rows
            .range(view.from, view.to)
            .filter(|(_, r)| r.units != 0 || r.paying != 0 || r.new_paying != 0)
            .map(|(d, r)| RevenueRow {
                date: Calendar::label(d),
                units: r.units,
                paying_users: r.paying.max(0) as u64,
                new_paying_users: r.new_paying.max(0) as u64,
            })
            .collect();
        out.revenue = Some(RevenueFigures {
            scale: def.scale,
            rows,
            paid_units: self.paid_units,
            refunded_units: self.refunded_units,
            rejected: self.rejected,
            cohorts,
        });
    }

    fn heap_bytes(&self) -> usize {
        let payer = std::mem::size_of::<(u32, Payer)>() + 8;
        let cohorts: usize = self.ltv.iter().map(|l| l.cohort.capacity() * std::mem::size_of::<Day>()).sum();
        cohorts
            + self.payers.capacity() * payer
            + self.payers.values().map(|p| p.payments.capacity() * std::mem::size_of::<Payment>()).sum::<usize>()
    }

    fn write_head(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    fn write_columns(&self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }

    fn read_head(&mut self, _: Ctx<'_>, head: &[u8], users: u64) -> Result<u64, StateMismatch> {
        let state: Revenue = postcard::from_bytes(head).map_err(|e| StateMismatch::new(format!("revenue: {e}")))?;
        let defs = |r: &Revenue| r.ltv.iter().map(|l| l.def).collect::<Vec<_>>();
        if defs(&state) != defs(self) || state.ltv.iter().any(|l| l.cohort.len() as u64 != users) {
            return Err(StateMismatch::new("revenue: the cohort revenue definitions differ"));
        }
        let days: Vec<Vec<u32>> = self.ltv.iter().map(|l| l.days.clone()).collect();
        *self = state;
        for (l, days) in self.ltv.iter_mut().zip(days) {
            l.days = days;
        }
        if self.payers.keys().any(|&u| u64::from(u) >= users) {
            return Err(StateMismatch::new("revenue: a payer beyond the users"));
        }
        Ok(0)
    }

    fn read_columns(&mut self, _: Ctx<'_>, _: &mut Columns<'_>) -> Result<(), StateMismatch> {
        Ok(())
    }
}

/// Keeps the days of merged figures in the export window.
pub fn rewindow(out: &mut Figures, in_window: impl Fn(&str) -> bool) {
    if let Some(r) = &mut out.revenue {
        r.rows.retain(|row| in_window(&row.date));
        for t in &mut r.cohorts {
            t.rows.retain(|row| in_window(&row.date));
        }
    }
}

/// `units` of 10^-`scale` as exact decimal text (`"12.30"`).
pub fn decimal_text(units: i128, scale: u32) -> String {
    Decimal::try_from_i128_with_scale(units, scale).map_or_else(|_| format!("{units}e-{scale}"), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_read_exactly_or_refused_by_reason() {
        let two = |raw: &str| amount(Some(raw), 2);
        assert_eq!(two("12.3"), Ok(1230));
        assert_eq!(two("\"12.30\""), Ok(1230));
        assert_eq!(two("0.1"), Ok(10));
        assert_eq!(two("-5"), Ok(-500));
        assert_eq!(two("1e2"), Ok(10_000));
        assert_eq!(two("1.50e-1"), Ok(15));
        assert_eq!(two("12.300"), Ok(1230));
        assert_eq!(two("\"-0.01\""), Ok(-1));
        assert_eq!(amount(None, 2), Err(AmountReject::Absent));
        for raw in ["\"x\"", "true", "null", "{}", "[1]", "\"1,5\"", "\" 3\"", "\"0x10\"", "\"\""] {
            assert_eq!(two(raw), Err(AmountReject::NotANumber), "{raw}");
        }
        assert_eq!(two("1.005"), Err(AmountReject::TooManyDecimals));
        assert_eq!(two("\"0.001\""), Err(AmountReject::TooManyDecimals));
        assert_eq!(two("1e30"), Err(AmountReject::OutOfRange));
        assert_eq!(two("1e999"), Err(AmountReject::OutOfRange));
        assert_eq!(two("\"3 \""), Err(AmountReject::NotANumber));
        assert_eq!(two("\"-\""), Err(AmountReject::NotANumber));
        assert_eq!(two("99999999999999999999"), Err(AmountReject::OutOfRange));
        assert_eq!(amount(Some("7"), 0), Ok(7));
        assert_eq!(decimal_text(30, 2), "0.30");
        assert_eq!(decimal_text(-1230, 2), "-12.30");
        assert_eq!(decimal_text(10i128.pow(20), 2), "1000000000000000000.00");
    }
}
