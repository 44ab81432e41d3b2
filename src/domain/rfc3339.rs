//! Timestamps as the API writes them: chrono's RFC 3339 form (`2026-11-25T04:41:33.515370Z`:
//! UTC with `Z`, and no fraction, or 3, 6 or 9 digits, as few as show the value), byte for
//! byte, written with integer arithmetic instead of the formatting machinery chrono's
//! `Serialize` goes through (about 2,400 instructions a timestamp; a row has two).

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// Longest form written here: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const MAX: usize = 27;

/// `value` as `width` decimal digits at `out[at..]`.
fn put(out: &mut [u8], at: usize, value: u32, width: usize) {
    let mut v = value;
    for i in (at..at + width).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The date and time digits of `YYYY-MM-DDTHH:MM:SS` (separators left as they are).
fn put_fields(out: &mut [u8], year: u32, dt: &DateTime<Utc>) {
    put(out, 0, year, 4);
    put(out, 5, dt.month(), 2);
    put(out, 8, dt.day(), 2);
    put(out, 11, dt.hour(), 2);
    put(out, 14, dt.minute(), 2);
    put(out, 17, dt.second(), 2);
}

/// `dt` in the API's form, or `None` where chrono's own writer is needed (years outside
/// 0–9999, nanosecond precision, a leap second).
fn write(dt: &DateTime<Utc>, out: &mut [u8; MAX]) -> Option<usize> {
    let year = u32::try_from(dt.year()).ok().filter(|y| *y <= 9999)?;
    let nano = dt.nanosecond();
    let fraction = match nano {
        1_000_000_000.. => return None, // a leap second
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => return None, // 9 digits
    };
    put_fields(out, year, dt);
    match fraction {
        3 => put(out, 20, nano / 1_000_000, 3),
        6 => put(out, 20, nano / 1_000, 6),
        _ => {}
    }
    for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        out[at] = c;
    }
    let mut len = 19;
    if fraction > 0 {
        out[19] = b'.';
        len += 1 + fraction;
    }
    out[len] = b'Z';
    Some(len + 1)
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (always three fraction digits), appended to
/// `out`: how sessions write their times, without chrono's formatting machinery.
pub fn push_millis(ms: i64, out: &mut Vec<u8>) {
    let dt = DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let Some(year) = u32::try_from(dt.year()).ok().filter(|y| *y <= 9999) else {
        let text = dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        out.extend_from_slice(text.as_bytes());
        return;
    };
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    put_fields(&mut buf, year, &dt);
    put(&mut buf, 20, dt.timestamp_subsec_millis().min(999), 3);
    out.extend_from_slice(&buf);
}

/// For `#[serde(serialize_with)]` on a `DateTime<Utc>`: the same string chrono's `Serialize`
/// writes.
pub fn serialize<S: Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX];
    match write(dt, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(n) => match std::str::from_utf8(&buf[..n]) {
            Ok(text) => s.serialize_str(text),
            Err(_) => serde::Serialize::serialize(dt, s),
        },
        None => serde::Serialize::serialize(dt, s),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[derive(serde::Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn same_as_chrono(dt: DateTime<Utc>) {
        let fast = serde_json::to_string(&Fast(dt)).unwrap();
        let chrono = serde_json::to_string(&dt).unwrap();
        assert_eq!(fast, chrono, "{dt:?}");
    }

    #[test]
    fn millis_are_written_as_chrono_writes_them() {
        for ms in [0, 1_500, 1_764_669_600_123, 253_402_300_799_999, -1_000] {
            let mut out = Vec::new();
            push_millis(ms, &mut out);
            let want = DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{ms}");
        }
    }

    #[test]
    fn writes_what_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2026, 11, 25, 4, 41, 33).unwrap();
        for nanos in [
            0,
            1_000,
            515_370_000,
            515_000_000,
            100_000_000,
            10_000_000,
            999_999_000,
            1,
            123_456_789,
        ] {
            same_as_chrono(base + chrono::Duration::nanoseconds(nanos));
        }
        for (y, mo, d, h, mi, s) in [
            (0, 1, 1, 0, 0, 0),
            (1, 2, 3, 4, 5, 6),
            (999, 12, 31, 23, 59, 59),
            (1999, 12, 31, 23, 59, 59),
            (9999, 12, 31, 23, 59, 59),
            (10000, 1, 1, 0, 0, 0),
            (-1, 1, 1, 0, 0, 0),
        ] {
            let dt = Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
            same_as_chrono(dt);
            same_as_chrono(dt + chrono::Duration::microseconds(7));
        }
    }
}
