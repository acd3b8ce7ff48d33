//! Schedule expressions and their fire times, in the schedule's own time zone.
//!
//! Accepted:
//! - `cron(M H DOM MON DOW)`: the usual 5 fields. DOW 0-7 (0 and 7 = Sunday) or SUN-SAT;
//!   MON 1-12 or JAN-DEC; `*`, lists `a,b`, ranges `a-b`, steps `*/n` and `a-b/n`. Restrict
//!   day-of-month or day-of-week, not both (Vixie cron ORs them, EventBridge refuses it; skiff
//!   refuses it rather than guess).
//! - `cron(M H DOM MON DOW YEAR)`: EventBridge's 6 fields. DOW 1-7 = SUN-SAT, `?` allowed in
//!   DOM or DOW, YEAR 1970-2199. `L`, `W` and `#` are refused: the `cron` crate skiff uses has
//!   no way to express them.
//! - `rate(N minute|minutes|hour|hours|day|days)`: every N units from the schedule's start.
//! - `at(YYYY-MM-DDTHH:MM:SS)`: once, at that wall-clock time in the schedule's zone.
//!
//! Daylight saving time, for cron schedules that fire at fixed hours: a time the clocks skip
//! (02:30 on a spring-forward night) fires once, at the instant the clocks jump (03:00 local);
//! a time that happens twice (01:30 on a fall-back night) fires once, the first time.
//! Schedules with `*` in the hour field fire by elapsed time instead: every slot that exists,
//! both passes through a repeated hour, none in a skipped one.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A bad expression or zone, with the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ScheduleError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> ScheduleError {
    ScheduleError {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone)]
pub enum Expr {
    Cron {
        /// In the `cron` crate's 7-field form (seconds first, year last).
        schedule: Box<cron::Schedule>,
        /// `*` in the hour field: fire by elapsed time through DST changes.
        hourly_wildcard: bool,
    },
    Rate(Duration),
    At(NaiveDateTime),
}

/// A parsed schedule: when it fires, in which zone.
#[derive(Debug, Clone)]
pub struct Expression {
    pub expr: Expr,
    pub tz: Tz,
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Checks one cron field: tokens `*`, `?` (where allowed), numbers and names in range,
/// ranges, steps. Returns whether it restricts anything.
fn check_field(spec: &FieldSpec, value: &str, any_ok: bool) -> Result<bool, ScheduleError> {
    let field = format!("expression: {} field {value:?}", spec.name);
    if value.contains(['L', 'W', '#']) && !spec.names.iter().any(|n| value.contains(n)) {
        return Err(bad(
            field,
            "L, W and # are not supported (use explicit days instead)",
        ));
    }
    if value == "*" {
        return Ok(false);
    }
    if value == "?" {
        return if any_ok {
            Ok(false)
        } else {
            Err(bad(
                field,
                "? is only allowed in day-of-month or day-of-week",
            ))
        };
    }
    for token in value.split(',') {
        let (range, step) = match token.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (token, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n > 0 => {}
                _ => {
                    return Err(bad(
                        &field,
                        format!("{s:?} is not a step (a whole number > 0)"),
                    ))
                }
            }
        }
        if range == "*" && step.is_some() {
            continue;
        }
        let value_of = |v: &str| -> Result<u32, ScheduleError> {
            if let Ok(n) = v.parse::<u32>() {
                if (spec.min..=spec.max).contains(&n) {
                    return Ok(n);
                }
                return Err(bad(
                    &field,
                    format!("{n} is outside {}-{}", spec.min, spec.max),
                ));
            }
            spec.names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(v))
                .map(|i| i as u32)
                .ok_or_else(|| bad(&field, format!("{v:?} is not a value of this field")))
        };
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value_of(a)?, value_of(b)?);
                if a > b {
                    return Err(bad(&field, format!("the range {range} runs backwards")));
                }
            }
            None => {
                value_of(range)?;
            }
        }
    }
    Ok(true)
}

/// Standard cron day-of-week numbers (0-7, Sunday 0 and 7) in the crate's (1-7 = SUN-SAT).
fn translate_dow(value: &str) -> String {
    let num = |v: &str| -> String {
        match v.parse::<u32>() {
            Ok(7) => "1".into(),
            Ok(n) => (n + 1).to_string(),
            Err(_) => v.to_string(),
        }
    };
    value
        .split(',')
        .map(|token| {
            let (range, step) = match token.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (token, None),
            };
            let range = match range.split_once('-') {
                // "5-7" (Fri-Sun): the crate's Sunday is 1, so split the wrap.
                Some((a, "7")) if a != "7" => {
                    let start = num(a);
                    return match step {
                        Some(s) => format!("{start}-7/{s}"),
                        None => format!("{start}-7,1"),
                    };
                }
                Some((a, b)) => format!("{}-{}", num(a), num(b)),
                None if range == "*" => "*".to_string(),
                None => num(range),
            };
            match step {
                Some(s) => format!("{range}/{s}"),
                None => range,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_cron(inner: &str) -> Result<Expr, ScheduleError> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    let spec = |name, min, max, names| FieldSpec {
        name,
        min,
        max,
        names,
    };
    let (minute, hour, dom, month, dow, year, eventbridge) = match fields.as_slice() {
        [m, h, d, mo, w] => (*m, *h, *d, *mo, *w, "*", false),
        [m, h, d, mo, w, y] => (*m, *h, *d, *mo, *w, *y, true),
        _ => {
            return Err(bad(
                "expression",
                format!(
                    "cron() takes 5 fields (minute hour day-of-month month day-of-week) or 6 \
                     (…, year), not {}",
                    fields.len()
                ),
            ))
        }
    };
    check_field(&spec("minute", 0, 59, &[]), minute, false)?;
    let hour_restricted = check_field(&spec("hour", 0, 23, &[]), hour, false)?;
    let dom_restricted = check_field(&spec("day-of-month", 1, 31, &[]), dom, true)?;
    check_field(&spec("month", 1, 12, MONTHS), month, false)?;
    let dow_restricted = if eventbridge {
        check_field(&spec("day-of-week", 1, 7, DAYS), dow, true)?
    } else {
        check_field(&spec("day-of-week", 0, 7, DAYS), dow, true)?
    };
    check_field(&spec("year", 1970, 2199, &[]), year, false)?;
    if dom_restricted && dow_restricted {
        return Err(bad(
            "expression",
            "restrict day-of-month or day-of-week, not both (put * or ? in one of them)",
        ));
    }
    let dow = if eventbridge {
        dow.to_string()
    } else {
        translate_dow(dow)
    };
    let text = format!("0 {minute} {hour} {dom} {month} {dow} {year}");
    let schedule = cron::Schedule::from_str(&text)
        .map_err(|e| bad("expression", format!("cron({inner}): {e}")))?;
    Ok(Expr::Cron {
        schedule: Box::new(schedule),
        hourly_wildcard: !hour_restricted,
    })
}

fn parse_rate(inner: &str) -> Result<Expr, ScheduleError> {
    let field = "expression";
    let (n, unit) = inner
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| bad(field, format!("rate({inner}): write rate(5 minutes)")))?;
    let n: i64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        bad(
            field,
            format!("rate({inner}): {n:?} is not a whole number > 0"),
        )
    })?;
    let d = match (unit.trim(), n) {
        ("minute", 1) | ("minutes", _) => Duration::minutes(n),
        ("hour", 1) | ("hours", _) => Duration::hours(n),
        ("day", 1) | ("days", _) => Duration::days(n),
        ("second", 1) | ("seconds", _) => Duration::seconds(n),
        (u, _) => {
            return Err(bad(
                field,
                format!("rate({inner}): {u:?}: use minute(s), hour(s), day(s) or second(s), singular only for 1"),
            ))
        }
    };
    Ok(Expr::Rate(d))
}

impl Expression {
    /// Parses an expression and an IANA zone name ("" = UTC).
    pub fn parse(expression: &str, zone: &str) -> Result<Expression, ScheduleError> {
        let tz: Tz = if zone.is_empty() {
            Tz::UTC
        } else {
            zone.parse().map_err(|_| {
                bad(
                    "timezone",
                    format!(
                        "{zone:?} is not an IANA time zone (Europe/Berlin, America/New_York, UTC)"
                    ),
                )
            })?
        };
        let e = expression.trim();
        let inner = |prefix: &str| {
            e.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
        };
        let expr = if let Some(i) = inner("cron(") {
            parse_cron(i)?
        } else if let Some(i) = inner("rate(") {
            parse_rate(i)?
        } else if let Some(i) = inner("at(") {
            Expr::At(
                NaiveDateTime::parse_from_str(i, "%Y-%m-%dT%H:%M:%S").map_err(|err| {
                    bad(
                        "expression",
                        format!("at({i}): {err}; write at(2026-12-01T09:00:00)"),
                    )
                })?,
            )
        } else {
            return Err(bad(
                "expression",
                format!("{e:?}: write cron(...), rate(...) or at(...)"),
            ));
        };
        Ok(Expression { expr, tz })
    }

    /// The instants a wall-clock time stands for. Fixed-hour schedules: a skipped time is the
    /// instant the clocks jump, a repeated time its first pass. Hour-wildcard schedules (by
    /// elapsed time): a skipped time is none, a repeated time both passes.
    fn instants(&self, local: NaiveDateTime, by_elapsed_time: bool) -> Vec<DateTime<Utc>> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) if by_elapsed_time => {
                vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(first, _) => vec![first.with_timezone(&Utc)],
            LocalResult::None if by_elapsed_time => vec![],
            LocalResult::None => {
                // The first wall-clock minute that exists after the gap.
                let mut probe = local;
                for _ in 0..(4 * 60) {
                    probe += Duration::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                        return vec![t.with_timezone(&Utc)];
                    }
                }
                vec![]
            }
        }
    }

    /// The next fire time strictly after `after`, or None when there is none (an `at` passed,
    /// a cron with no more years). `anchor` is where a rate counts from.
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.expr {
            Expr::Rate(d) => {
                let step = d.num_milliseconds();
                let since = (after - anchor).num_milliseconds();
                let k = if since < 0 { 0 } else { since / step + 1 };
                Some(anchor + Duration::milliseconds(k * step))
            }
            Expr::At(local) => self
                .instants(*local, false)
                .into_iter()
                .find(|t| *t > after),
            Expr::Cron {
                schedule,
                hourly_wildcard,
            } => {
                // Walk wall-clock times (as if they were UTC) from a little before `after`'s,
                // map each to its instants, keep the first after `after`. Around a DST change
                // the order of instants differs from the order of wall-clock times, hence the
                // margin on both sides.
                let local_after = after.with_timezone(&self.tz).naive_local();
                let start = Utc.from_utc_datetime(&(local_after - Duration::hours(3)));
                let horizon = local_after + Duration::hours(3);
                let mut best: Option<DateTime<Utc>> = None;
                for naive in schedule.after(&start).map(|t| t.naive_utc()) {
                    if naive > horizon && best.is_some() {
                        break;
                    }
                    for t in self.instants(naive, *hourly_wildcard) {
                        if t > after && best.is_none_or(|b| t < b) {
                            best = Some(t);
                        }
                    }
                    if naive > horizon + Duration::days(366 * 200) {
                        break;
                    }
                }
                best
            }
        }
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(
        &self,
        after: DateTime<Utc>,
        anchor: DateTime<Utc>,
        n: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t, anchor) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(t: &Expression, times: &[DateTime<Utc>]) -> Vec<String> {
        times
            .iter()
            .map(|x| {
                x.with_timezone(&t.tz)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn five_and_six_field_crons() {
        let t = Expression::parse("cron(30 9 * * 1-5)", "Europe/Berlin").unwrap();
        // Friday 2026-11-20 10:00 Berlin → Monday 09:30.
        let next = t.upcoming(utc("2026-11-20T09:00:00Z"), utc("2026-01-01T00:00:00Z"), 2);
        assert_eq!(
            local(&t, &next),
            ["2026-11-23 09:30 CET", "2026-11-24 09:30 CET"]
        );
        // Sunday as 0 and as 7, and the wrap 5-7.
        for e in ["cron(0 12 * * 0)", "cron(0 12 * * 7)", "cron(0 12 * * SUN)"] {
            let t = Expression::parse(e, "UTC").unwrap();
            let n = t.next_after(utc("2026-11-23T00:00:00Z"), utc("2026-01-01T00:00:00Z"));
            assert_eq!(n, Some(utc("2026-11-29T12:00:00Z")), "{e}");
        }
        let t = Expression::parse("cron(0 12 * * 5-7)", "UTC").unwrap();
        let next = t.upcoming(utc("2026-11-23T00:00:00Z"), utc("2026-01-01T00:00:00Z"), 3);
        assert_eq!(
            next,
            [
                utc("2026-11-27T12:00:00Z"),
                utc("2026-11-28T12:00:00Z"),
                utc("2026-11-29T12:00:00Z")
            ]
        );
        // EventBridge's form: DOW 2 = Monday, ? and a year.
        let t = Expression::parse("cron(0 8 ? * 2 2026)", "UTC").unwrap();
        let next = t.upcoming(utc("2026-12-25T00:00:00Z"), utc("2026-01-01T00:00:00Z"), 5);
        assert_eq!(next, [utc("2026-12-28T08:00:00Z")], "no 2027 dates");
    }

    #[test]
    fn bad_expressions_name_the_field() {
        for (e, zone, want) in [
            ("cron(61 * * * *)", "UTC", "minute field"),
            ("cron(0 24 * * *)", "UTC", "hour field"),
            ("cron(0 0 32 * *)", "UTC", "day-of-month field"),
            ("cron(0 0 * 13 *)", "UTC", "month field"),
            ("cron(0 0 * * 8)", "UTC", "day-of-week field"),
            ("cron(0 0 L * ? *)", "UTC", "L, W and # are not supported"),
            ("cron(0 0 1 * 1)", "UTC", "not both"),
            ("cron(0 0 ? * *)", "UTC", ""),
            ("cron(0 0 * *)", "UTC", "5 fields"),
            ("cron(*/0 * * * *)", "UTC", "step"),
            ("cron(5-1 * * * *)", "UTC", "backwards"),
            ("rate(0 minutes)", "UTC", "whole number > 0"),
            ("rate(5 fortnights)", "UTC", "fortnights"),
            ("rate(1 minutes)", "UTC", ""),
            ("at(2026-13-01T00:00:00)", "UTC", "at("),
            ("every 5 minutes", "UTC", "write cron"),
            ("rate(5 minutes)", "Mars/Olympus", "timezone"),
        ] {
            match Expression::parse(e, zone) {
                Ok(_) => assert!(want.is_empty(), "{e} should be refused"),
                Err(err) => {
                    assert!(!want.is_empty(), "{e}: {err}");
                    assert!(err.to_string().contains(want), "{e}: {err}");
                }
            }
        }
    }

    #[test]
    fn spring_forward_fires_a_skipped_time_once_at_the_jump() {
        // New York, 2026-03-08: 02:00 EST → 03:00 EDT; 02:30 does not exist.
        let t = Expression::parse("cron(30 2 * * *)", "America/New_York").unwrap();
        let next = t.upcoming(utc("2026-03-06T12:00:00Z"), utc("2026-01-01T00:00:00Z"), 4);
        assert_eq!(
            local(&t, &next),
            [
                "2026-03-07 02:30 EST",
                "2026-03-08 03:00 EDT",
                "2026-03-09 02:30 EDT",
                "2026-03-10 02:30 EDT"
            ]
        );
        // By elapsed time, an every-15-minutes schedule has no slots in the skipped hour.
        let t = Expression::parse("cron(*/15 * * * *)", "America/New_York").unwrap();
        let next = t.upcoming(utc("2026-03-08T06:40:00Z"), utc("2026-01-01T00:00:00Z"), 3);
        assert_eq!(
            local(&t, &next),
            [
                "2026-03-08 01:45 EST",
                "2026-03-08 03:00 EDT",
                "2026-03-08 03:15 EDT"
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once() {
        // New York, 2026-11-01: 02:00 EDT → 01:00 EST; 01:30 happens twice.
        let t = Expression::parse("cron(30 1 * * *)", "America/New_York").unwrap();
        let next = t.upcoming(utc("2026-10-31T12:00:00Z"), utc("2026-01-01T00:00:00Z"), 3);
        assert_eq!(
            local(&t, &next),
            [
                "2026-11-01 01:30 EDT",
                "2026-11-02 01:30 EST",
                "2026-11-03 01:30 EST"
            ]
        );
        // By elapsed time, an every-30-minutes schedule passes through the hour twice.
        let t = Expression::parse("cron(*/30 * * * *)", "America/New_York").unwrap();
        let next = t.upcoming(utc("2026-11-01T05:10:00Z"), utc("2026-01-01T00:00:00Z"), 4);
        assert_eq!(
            local(&t, &next),
            [
                "2026-11-01 01:30 EDT",
                "2026-11-01 01:00 EST",
                "2026-11-01 01:30 EST",
                "2026-11-01 02:00 EST"
            ]
        );
    }

    #[test]
    fn rates_count_from_their_anchor_and_at_fires_once() {
        let t = Expression::parse("rate(5 minutes)", "").unwrap();
        let anchor = utc("2026-11-23T12:00:00Z");
        assert_eq!(
            t.next_after(utc("2026-11-23T11:00:00Z"), anchor),
            Some(anchor)
        );
        assert_eq!(
            t.next_after(utc("2026-11-23T12:07:00Z"), anchor),
            Some(utc("2026-11-23T12:10:00Z"))
        );
        assert_eq!(
            t.next_after(utc("2026-11-23T12:10:00Z"), anchor),
            Some(utc("2026-11-23T12:15:00Z"))
        );
        let t = Expression::parse("at(2026-12-01T09:00:00)", "Europe/Berlin").unwrap();
        assert_eq!(
            t.next_after(utc("2026-11-23T00:00:00Z"), anchor),
            Some(utc("2026-12-01T08:00:00Z"))
        );
        assert_eq!(t.next_after(utc("2026-12-01T08:00:00Z"), anchor), None);
    }
}
