//! CF time decoding: numeric time values with `units = "<unit> since <date>"` and a
//! `calendar` turned into calendar dates.
//!
//! Catalogs need the time range of a dataset as RFC 3339 strings, and climate model output
//! mostly uses calendars that are not the civil one (`noleap`, `360_day`, ...). Pulling in a
//! date library would not help with those, so this is a small decoder of our own: every
//! calendar is a bijection between dates and a day count, and decoding is "reference day
//! count + offset, back to a date".

use std::fmt;

/// Why a time axis cannot be decoded. Messages name the offending attribute text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CfTimeError {
    /// The `units` attribute is not `<unit> since <reference date>`.
    #[error("units '{0}' are not of the form '<unit> since <date>'")]
    NotTimeUnits(String),
    /// The unit before `since` is not a time unit we know (microseconds to years; months and years
    /// are udunits' fixed fractions of the calendar's year).
    #[error("unknown time unit '{0}'")]
    Unit(String),
    /// The reference date after `since` cannot be parsed, or is not a day of the calendar.
    #[error("cannot parse reference date '{0}'")]
    Date(String),
    /// The `calendar` attribute names no CF calendar.
    #[error("unsupported calendar '{0}'")]
    Calendar(String),
    /// A time value is not finite, or so far from the reference date (beyond about 3 million years)
    /// that it cannot be a date.
    #[error("time value {0} is out of range")]
    Range(f64),
}

/// The CF calendars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calendar {
    /// Julian before 1582-10-15, Gregorian from then on (CF `standard`/`gregorian`).
    Standard,
    /// The Gregorian calendar extended back before 1582 (CF `proleptic_gregorian`).
    ProlepticGregorian,
    /// Every fourth year a leap year (CF `julian`).
    Julian,
    /// `noleap`/`365_day`.
    NoLeap,
    /// `all_leap`/`366_day`.
    AllLeap,
    /// Twelve months of 30 days (CF `360_day`).
    Day360,
}

impl Calendar {
    /// Parses the `calendar` attribute (case-insensitive; absent means `standard`).
    pub fn parse(s: Option<&str>) -> Result<Self, CfTimeError> {
        let Some(s) = s else {
            return Ok(Calendar::Standard);
        };
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "standard" | "gregorian" => Calendar::Standard,
            "proleptic_gregorian" => Calendar::ProlepticGregorian,
            "julian" => Calendar::Julian,
            "noleap" | "365_day" => Calendar::NoLeap,
            "all_leap" | "366_day" => Calendar::AllLeap,
            "360_day" => Calendar::Day360,
            _ => return Err(CfTimeError::Calendar(s.to_string())),
        })
    }

    /// True for calendars whose dates are real days of the civil (Gregorian) calendar from
    /// 1582-10-15 on, so decoded dates can be compared with wall-clock dates.
    pub fn is_real(self) -> bool {
        matches!(
            self,
            Calendar::Standard | Calendar::ProlepticGregorian | Calendar::Julian
        )
    }
}

/// A date and time in some calendar (no time zone: CF times are UTC once the reference
/// offset is applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CfDate {
    /// Year of the calendar; 0 and negative years are allowed (udunits parses them).
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, from 1 (up to 30 in `360_day`).
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Minute, 0–59.
    pub minute: u32,
    /// Second, 0–59.
    pub second: u32,
    /// Microseconds within the second, 0–999999.
    pub micros: u32,
}

impl CfDate {
    /// RFC 3339 text (`YYYY-MM-DDThh:mm:ss[.ffffff]Z`), the form STAC requires.
    ///
    /// A date that does not exist in the civil calendar (30 February in `360_day`, or 29
    /// February of a non-leap year in `all_leap`) is moved to the last day of its month, so
    /// catalogs get a valid timestamp at most two days off. Years outside 0..=9999 have no
    /// RFC 3339 form: `None`.
    pub fn to_rfc3339(&self) -> Option<String> {
        if !(0..=9999).contains(&self.year) {
            return None;
        }
        let last = greg_month_len(self.year, self.month);
        let day = self.day.min(last);
        let mut s = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, day, self.hour, self.minute, self.second
        );
        if self.micros != 0 {
            s.push_str(&format!(".{:06}", self.micros));
        }
        s.push('Z');
        Some(s)
    }
}

impl fmt::Display for CfDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

const MICROS_PER_DAY: i128 = 86_400_000_000;

/// A parsed `units` attribute with its calendar: decodes values to dates.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeAxis {
    /// Microseconds per unit.
    unit_micros: f64,
    calendar: Calendar,
    /// Reference instant: day number in the calendar and microseconds into that day (the
    /// time-zone offset already applied).
    ref_day: i64,
    ref_micros: i128,
}

impl TimeAxis {
    /// Parses `units` (e.g. `days since 1850-01-01 00:00:00`) and `calendar`.
    pub fn new(units: &str, calendar: Option<&str>) -> Result<Self, CfTimeError> {
        let calendar = Calendar::parse(calendar)?;
        let lower = units.trim().to_ascii_lowercase();
        let (unit, date) = lower
            .split_once(" since ")
            .ok_or_else(|| CfTimeError::NotTimeUnits(units.to_string()))?;
        let unit_micros = unit_micros(unit.trim(), calendar)?;
        let (d, tz_minutes) = parse_date(date.trim()).ok_or_else(|| CfTimeError::Date(date.to_string()))?;
        if d.month == 0 || d.month > 12 || d.day == 0 || d.day > month_len(calendar, d.year, d.month) {
            return Err(CfTimeError::Date(date.to_string()));
        }
        let ref_day = day_number(calendar, d.year, d.month, d.day);
        let ref_micros = (i128::from(d.hour) * 3600 + i128::from(d.minute) * 60 + i128::from(d.second))
            * 1_000_000
            + i128::from(d.micros)
            - i128::from(tz_minutes) * 60_000_000;
        Ok(TimeAxis {
            unit_micros,
            calendar,
            ref_day,
            ref_micros,
        })
    }

    /// The calendar the axis's values are counted in.
    pub fn calendar(&self) -> Calendar {
        self.calendar
    }

    /// The date of one numeric value (rounded to the microsecond).
    pub fn decode(&self, value: f64) -> Result<CfDate, CfTimeError> {
        let offset = value * self.unit_micros;
        // 1e17 µs is about 3 million years: beyond any model run, and safe in i128/i64.
        if !offset.is_finite() || offset.abs() > 1e17 {
            return Err(CfTimeError::Range(value));
        }
        let total = self.ref_micros + offset.round() as i128;
        let days = total.div_euclid(MICROS_PER_DAY);
        let rem = total.rem_euclid(MICROS_PER_DAY);
        let day = self.ref_day + days as i64;
        let (year, month, dom) = from_day_number(self.calendar, day);
        let secs = (rem / 1_000_000) as u32;
        Ok(CfDate {
            year,
            month,
            day: dom,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            micros: (rem % 1_000_000) as u32,
        })
    }

    /// The value of a date in this axis's units (the inverse of [`TimeAxis::decode`]; the
    /// date must be one of the calendar's). Reductions label periods with it.
    pub fn encode(&self, d: &CfDate) -> f64 {
        let day = day_number(self.calendar, d.year, d.month, d.day);
        let micros = i128::from(day - self.ref_day) * MICROS_PER_DAY
            + (i128::from(d.hour) * 3600 + i128::from(d.minute) * 60 + i128::from(d.second)) * 1_000_000
            + i128::from(d.micros)
            - self.ref_micros;
        micros as f64 / self.unit_micros
    }

    /// Microseconds per unit.
    pub fn unit_micros(&self) -> f64 {
        self.unit_micros
    }

    /// The reference instant in microseconds since the calendar's day 0: two axes of the
    /// same calendar differ by the difference of these.
    pub fn reference_micros(&self) -> i128 {
        i128::from(self.ref_day) * MICROS_PER_DAY + self.ref_micros
    }

    /// Seconds per unit (for steps of regular axes).
    pub fn unit_seconds(&self) -> f64 {
        self.unit_micros / 1e6
    }
}

fn unit_micros(unit: &str, calendar: Calendar) -> Result<f64, CfTimeError> {
    const S: f64 = 1e6;
    // udunits' year (used by CF for `years`/`months` outside 360_day calendars).
    let year_days = match calendar {
        Calendar::Day360 => 360.0,
        Calendar::NoLeap => 365.0,
        Calendar::AllLeap => 366.0,
        _ => 365.242_198_781,
    };
    Ok(match unit {
        "microseconds" | "microsecond" | "us" | "usec" | "usecs" => 1.0,
        "milliseconds" | "millisecond" | "ms" | "msec" | "msecs" => 1e3,
        "seconds" | "second" | "s" | "sec" | "secs" => S,
        "minutes" | "minute" | "min" | "mins" => 60.0 * S,
        "hours" | "hour" | "h" | "hr" | "hrs" => 3600.0 * S,
        "days" | "day" | "d" => 86_400.0 * S,
        "weeks" | "week" => 7.0 * 86_400.0 * S,
        "months" | "month" => year_days / 12.0 * 86_400.0 * S,
        "years" | "year" | "yr" | "common_years" => year_days * 86_400.0 * S,
        _ => return Err(CfTimeError::Unit(unit.to_string())),
    })
}

/// Parses `Y-M-D[ T]h:m:s[.f][Z| UTC|±hh[:mm]]`; returns the date and the zone offset in
/// minutes. Lenient like udunits: single-digit fields, missing time, negative years.
fn parse_date(s: &str) -> Option<(CfDate, i32)> {
    let s = s.trim().trim_end_matches(" utc").trim_end_matches('z').trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (date, rest) = match body.find(['t', ' ']) {
        Some(i) => (&body[..i], body[i + 1..].trim()),
        None => (body, ""),
    };
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next().map_or(Some(1), |p| p.parse().ok())?;
    let day: u32 = parts.next().map_or(Some(1), |p| p.parse().ok())?;
    if parts.next().is_some() {
        return None;
    }
    let year = if neg { -year } else { year };
    let mut d = CfDate {
        year,
        month,
        day,
        hour: 0,
        minute: 0,
        second: 0,
        micros: 0,
    };
    let mut tz = 0i32;
    if !rest.is_empty() {
        // split off a zone: "+05:30", "-6", " +0100"
        let (time, zone) = match rest.find(['+', '-']) {
            Some(i) => (rest[..i].trim(), Some(rest[i..].trim())),
            None => (rest, None),
        };
        let mut t = time.split(':');
        d.hour = t
            .next()
            .filter(|x| !x.is_empty())
            .map_or(Some(0), |x| x.parse().ok())?;
        d.minute = t.next().map_or(Some(0), |x| x.parse().ok())?;
        if let Some(sec) = t.next() {
            let x: f64 = sec.parse().ok()?;
            if !(0.0..61.0).contains(&x) {
                return None;
            }
            d.second = x.trunc() as u32;
            d.micros = ((x - x.trunc()) * 1e6).round().min(999_999.0) as u32;
        }
        if d.hour > 23 || d.minute > 59 {
            return None;
        }
        if let Some(z) = zone {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let z = &z[1..];
            let (h, m) = match z.split_once(':') {
                Some((h, m)) => (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?),
                None if z.len() == 4 => (z[..2].parse().ok()?, z[2..].parse().ok()?),
                None => (z.parse().ok()?, 0),
            };
            tz = sign * (h * 60 + m);
        }
    }
    Some((d, tz))
}

fn is_greg_leap(y: i64) -> bool {
    y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0)
}

fn greg_month_len(y: i64, m: u32) -> u32 {
    match m {
        2 if is_greg_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days in a month of the given calendar.
pub fn month_len(cal: Calendar, y: i64, m: u32) -> u32 {
    const NOLEAP: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let idx = (m.clamp(1, 12) - 1) as usize;
    match cal {
        Calendar::Day360 => 30,
        Calendar::NoLeap => NOLEAP[idx],
        Calendar::AllLeap => {
            if m == 2 {
                29
            } else {
                NOLEAP[idx]
            }
        }
        Calendar::ProlepticGregorian => greg_month_len(y, m),
        Calendar::Julian => {
            if m == 2 && y.rem_euclid(4) == 0 {
                29
            } else {
                NOLEAP[idx]
            }
        }
        Calendar::Standard => {
            if (y, m) <= (1582, 10) {
                month_len(Calendar::Julian, y, m)
            } else {
                greg_month_len(y, m)
            }
        }
    }
}

/// Julian day number of a proleptic Gregorian date (valid for all i64-range years we use).
fn jdn_gregorian(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let a = (14 - m) / 12;
    let y = y + 4800 - a;
    let m = m + 12 * a - 3;
    d + (153 * m + 2) / 5 + 365 * y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400) - 32045
}

fn jdn_julian(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let a = (14 - m) / 12;
    let y = y + 4800 - a;
    let m = m + 12 * a - 3;
    d + (153 * m + 2) / 5 + 365 * y + y.div_euclid(4) - 32083
}

fn from_jdn_gregorian(j: i64) -> (i64, u32, u32) {
    let a = j + 32044;
    let b = (4 * a + 3).div_euclid(146_097);
    let c = a - 146_097 * b / 4;
    let d = (4 * c + 3) / 1461;
    let e = c - 1461 * d / 4;
    let m = (5 * e + 2) / 153;
    let day = e - (153 * m + 2) / 5 + 1;
    let month = m + 3 - 12 * (m / 10);
    let year = 100 * b + d - 4800 + m / 10;
    (year, month as u32, day as u32)
}

fn from_jdn_julian(j: i64) -> (i64, u32, u32) {
    let c = j + 32082;
    let d = (4 * c + 3).div_euclid(1461);
    let e = c - 1461 * d / 4;
    let m = (5 * e + 2) / 153;
    let day = e - (153 * m + 2) / 5 + 1;
    let month = m + 3 - 12 * (m / 10);
    let year = d - 4800 + m / 10;
    (year, month as u32, day as u32)
}

/// First day of the Gregorian calendar in the `standard` calendar (1582-10-15) as JDN.
const GREGORIAN_START_JDN: i64 = 2_299_161;

fn cum_days(lens: impl Iterator<Item = u32>, m: u32) -> i64 {
    lens.take((m.saturating_sub(1)) as usize).map(i64::from).sum()
}

/// A day count for the calendar: consecutive days get consecutive numbers (reductions
/// number days and hours with it).
pub fn day_number(cal: Calendar, y: i64, m: u32, d: u32) -> i64 {
    match cal {
        Calendar::ProlepticGregorian => jdn_gregorian(y, m, d),
        Calendar::Julian => jdn_julian(y, m, d),
        Calendar::Standard => {
            if (y, m, d) >= (1582, 10, 15) {
                jdn_gregorian(y, m, d)
            } else {
                jdn_julian(y, m, d)
            }
        }
        Calendar::NoLeap => y * 365 + cum_days((1..=12).map(|k| month_len(cal, y, k)), m) + i64::from(d) - 1,
        Calendar::AllLeap => y * 366 + cum_days((1..=12).map(|k| month_len(cal, y, k)), m) + i64::from(d) - 1,
        Calendar::Day360 => y * 360 + i64::from(m - 1) * 30 + i64::from(d) - 1,
    }
}

/// The date (year, month, day) of a [`day_number`].
pub fn from_day_number(cal: Calendar, n: i64) -> (i64, u32, u32) {
    let split = |len: i64| {
        let y = n.div_euclid(len);
        let mut r = n.rem_euclid(len);
        let mut m = 1u32;
        loop {
            let ml = i64::from(month_len(cal, y, m));
            if r < ml || m == 12 {
                return (y, m, (r + 1) as u32);
            }
            r -= ml;
            m += 1;
        }
    };
    match cal {
        Calendar::ProlepticGregorian => from_jdn_gregorian(n),
        Calendar::Julian => from_jdn_julian(n),
        Calendar::Standard => {
            if n >= GREGORIAN_START_JDN {
                from_jdn_gregorian(n)
            } else {
                from_jdn_julian(n)
            }
        }
        Calendar::NoLeap => split(365),
        Calendar::AllLeap => split(366),
        Calendar::Day360 => split(360),
    }
}

/// ISO 8601 duration of a constant step in seconds (`P1D`, `PT6H`, `PT30M`), for the
/// datacube `step` of regular time axes. `None` for steps that are not whole seconds.
pub fn iso_duration(seconds: f64) -> Option<String> {
    if !(seconds.is_finite() && seconds > 0.0) || (seconds - seconds.round()).abs() > 1e-6 {
        return None;
    }
    let mut s = seconds.round() as u64;
    let days = s / 86_400;
    s %= 86_400;
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if h + m + sec > 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if sec > 0 {
            out.push_str(&format!("{sec}S"));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(units: &str, cal: &str, v: f64) -> String {
        TimeAxis::new(units, Some(cal))
            .and_then(|t| t.decode(v))
            .map(|d| d.to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn noleap_and_365_day() {
        assert_eq!(
            iso("days since 2000-01-01", "noleap", 365.0),
            "2001-01-01 00:00:00"
        );
        assert_eq!(
            iso("days since 2000-01-01", "365_day", 59.0),
            "2000-03-01 00:00:00"
        );
        assert_eq!(
            iso("days since 2000-01-01", "noleap", 58.0),
            "2000-02-28 00:00:00"
        );
        // 200 years of noleap are exactly 73000 days
        assert_eq!(
            iso("days since 1850-01-01", "noleap", 73000.0),
            "2050-01-01 00:00:00"
        );
        assert_eq!(
            iso("days since 2000-01-01", "noleap", -1.0),
            "1999-12-31 00:00:00"
        );
    }

    #[test]
    fn day360() {
        assert_eq!(
            iso("days since 2000-01-01", "360_day", 360.0),
            "2001-01-01 00:00:00"
        );
        assert_eq!(
            iso("days since 2000-01-01", "360_day", 59.0),
            "2000-02-30 00:00:00"
        );
        assert_eq!(
            iso("days since 2000-01-01", "360_day", 15.5),
            "2000-01-16 12:00:00"
        );
        assert_eq!(
            iso("months since 2000-01-01", "360_day", 13.0),
            "2001-02-01 00:00:00"
        );
        let d = TimeAxis::new("days since 2000-01-01", Some("360_day"))
            .unwrap()
            .decode(59.0)
            .unwrap();
        // 30 February has no civil form: the last day of the month stands in for it
        assert_eq!(d.to_rfc3339().unwrap(), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn leap_rules_differ_by_calendar() {
        assert_eq!(iso("days since 1900-02-28", "julian", 1.0), "1900-02-29 00:00:00");
        assert_eq!(
            iso("days since 1900-02-28", "proleptic_gregorian", 1.0),
            "1900-03-01 00:00:00"
        );
        assert_eq!(
            iso("days since 1900-02-28", "standard", 1.0),
            "1900-03-01 00:00:00"
        );
        assert_eq!(
            iso("days since 2001-02-28", "all_leap", 1.0),
            "2001-02-29 00:00:00"
        );
        assert_eq!(
            iso("days since 2001-02-28", "366_day", 2.0),
            "2001-03-01 00:00:00"
        );
        assert_eq!(
            iso("days since 2000-02-28", "gregorian", 1.0),
            "2000-02-29 00:00:00"
        );
    }

    #[test]
    fn standard_calendar_skips_ten_days_in_1582() {
        assert_eq!(
            iso("days since 1582-10-04", "standard", 1.0),
            "1582-10-15 00:00:00"
        );
        assert_eq!(
            iso("days since 1582-10-15", "standard", -1.0),
            "1582-10-04 00:00:00"
        );
        assert_eq!(
            iso("days since 1582-10-04", "proleptic_gregorian", 1.0),
            "1582-10-05 00:00:00"
        );
        // the Unix epoch in days since 1-1-1: Julian year 1 starts two days before the
        // proleptic Gregorian one (cftime gives 719164 and 719162)
        assert_eq!(
            iso("days since 0001-01-01", "standard", 719_164.0),
            "1970-01-01 00:00:00"
        );
        assert_eq!(
            iso("days since 0001-01-01", "proleptic_gregorian", 719_162.0),
            "1970-01-01 00:00:00"
        );
    }

    #[test]
    fn units_and_reference_forms() {
        assert_eq!(
            iso("hours since 1970-01-01 00:00:00", "standard", 25.0),
            "1970-01-02 01:00:00"
        );
        assert_eq!(
            iso("seconds since 1970-01-01T00:00:00Z", "standard", 86_401.0),
            "1970-01-02 00:00:01"
        );
        assert_eq!(
            iso("minutes since 2000-1-1", "standard", 90.0),
            "2000-01-01 01:30:00"
        );
        // a zone offset: 00:00 at +01:00 is 23:00 UTC the day before
        assert_eq!(
            iso("hours since 2000-01-01 00:00:00 +01:00", "standard", 0.0),
            "1999-12-31 23:00:00"
        );
        assert_eq!(
            iso("days since 2000-01-01 00:00:00 UTC", "standard", 0.5),
            "2000-01-01 12:00:00"
        );
        assert_eq!(iso("DAYS SINCE 1850-01-01", "NOLEAP", 0.0), "1850-01-01 00:00:00");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(
            TimeAxis::new("K", None),
            Err(CfTimeError::NotTimeUnits(_))
        ));
        assert!(matches!(
            TimeAxis::new("fortnights since 2000-01-01", None),
            Err(CfTimeError::Unit(_))
        ));
        assert!(matches!(
            TimeAxis::new("days since yesterday", None),
            Err(CfTimeError::Date(_))
        ));
        assert!(matches!(
            TimeAxis::new("days since 2000-02-30", Some("noleap")),
            Err(CfTimeError::Date(_))
        ));
        assert!(TimeAxis::new("days since 2000-02-30", Some("360_day")).is_ok());
        assert!(matches!(
            TimeAxis::new("days since 2000-01-01", Some("lunar")),
            Err(CfTimeError::Calendar(_))
        ));
        let t = TimeAxis::new("days since 2000-01-01", None).unwrap();
        assert!(t.decode(f64::NAN).is_err());
        assert!(t.decode(1e30).is_err());
    }

    #[test]
    fn rfc3339_and_durations() {
        let t = TimeAxis::new("days since 2000-01-01", Some("noleap")).unwrap();
        assert_eq!(
            t.decode(0.25).unwrap().to_rfc3339().unwrap(),
            "2000-01-01T06:00:00Z"
        );
        assert_eq!(iso_duration(86_400.0).as_deref(), Some("P1D"));
        assert_eq!(iso_duration(6.0 * 3600.0).as_deref(), Some("PT6H"));
        assert_eq!(iso_duration(90_000.0).as_deref(), Some("P1DT1H"));
        assert_eq!(iso_duration(0.5), None);
    }

    #[test]
    fn round_trips_every_calendar() {
        for cal in [
            Calendar::Standard,
            Calendar::ProlepticGregorian,
            Calendar::Julian,
            Calendar::NoLeap,
            Calendar::AllLeap,
            Calendar::Day360,
        ] {
            for n in (-800_000..800_000).step_by(997) {
                let base = day_number(cal, 1, 1, 1) + n;
                let (y, m, d) = from_day_number(cal, base);
                assert_eq!(day_number(cal, y, m, d), base, "{cal:?} {y}-{m}-{d}");
                assert!(d >= 1 && d <= month_len(cal, y, m), "{cal:?} {y}-{m}-{d}");
            }
        }
    }
}
