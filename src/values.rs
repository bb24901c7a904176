//! How setting values are written, as upstream writes them: Go durations
//! (`500ms`, `1m30s`), whole seconds, regex lists. The `deserialize_with`
//! helpers here are used on the settings structs' fields; they sit in their
//! own module so that the converter, pipeline and store can use them without
//! importing the configuration loader, which imports them.

use std::time::Duration;

use regex::Regex;
use serde::de::{Deserialize, Deserializer, Error};

/// Parses a Go-style duration: `500ms`, `1s`, `1m30s`, `2h`, `1.5s`, `250us`;
/// also `d` for days (`30d`), which Go does not have.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("expected a duration such as 500ms, 1s, 1m30s or 30d, got {s:?}");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A Go-style duration.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// A Go-style duration longer than zero (a zero batch wait would never wait).
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = duration(d)?;
    if v.is_zero() {
        return Err(D::Error::custom("must be longer than zero"));
    }
    Ok(v)
}

/// A whole number of seconds (upstream's `maxBackoff`).
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_secs(u64::deserialize(d)?))
}

/// A count of at least one (an empty batch would never be cut).
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(D::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// A list of regexes, compiled here so that a bad one stops start-up and
/// nothing downstream compiles them again.
pub fn regexes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Regex>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|re| {
            Regex::new(re)
                .map_err(|e| D::Error::custom(format!("{re:?} is not a valid regex: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        for bad in ["", "s", "5", "1x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
