//! Human-written durations (`500ms`, `30s`, `20m`, `2h`, `1h30m`) for kiln.yml and node.yml.
//! Timeouts are read by people, so they are written the way people write them, and printed
//! back the same way.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Why a duration string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration, expected e.g. `30s`, `20m` or `1h30m`")]
    Empty,
    #[error("invalid duration `{text}`, expected e.g. `500ms`, `30s`, `20m` or `1h30m`")]
    Syntax { text: String },
    #[error("invalid duration `{text}`: unit `{unit}` is unknown, expected `ms`, `s`, `m` or `h`")]
    Unit { text: String, unit: String },
    #[error("invalid duration `{text}`: units must go from largest to smallest, each at most once")]
    Order { text: String },
    #[error("duration `{text}` is too large")]
    Overflow { text: String },
    #[error("duration `{text}` must be greater than zero")]
    Zero { text: String },
}

/// Parses `1h30m`, `20m`, `30s`, `500ms`, `2h5m10s`: one or more `<integer><unit>` parts,
/// units `h`, `m`, `s`, `ms`, largest first. A bare number is refused: its unit would be a guess.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = || DurationError::Syntax {
        text: text.to_owned(),
    };
    let overflow = || DurationError::Overflow {
        text: text.to_owned(),
    };
    let mut total = Duration::ZERO;
    // Rank of the previous unit; each part must use a strictly smaller one.
    let mut previous_rank = usize::MAX;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(syntax());
        }
        let number: u64 = rest[..digits_end].parse().map_err(|_| overflow())?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let (rank, part) = match unit {
            "h" => (3, number.checked_mul(3600).map(Duration::from_secs)),
            "m" => (2, number.checked_mul(60).map(Duration::from_secs)),
            "s" => (1, Some(Duration::from_secs(number))),
            "ms" => (0, Some(Duration::from_millis(number))),
            "" => return Err(syntax()),
            other => {
                return Err(DurationError::Unit {
                    text: text.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        if rank >= previous_rank {
            return Err(DurationError::Order {
                text: text.to_owned(),
            });
        }
        previous_rank = rank;
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(overflow)?;
    }
    Ok(total)
}

/// Prints a duration the way [`parse`] reads it (`1h30m`, `500ms`, `0s`), to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        let parts = [
            (millis / 3_600_000, "h"),
            (millis / 60_000 % 60, "m"),
            (millis / 1000 % 60, "s"),
            (millis % 1000, "ms"),
        ];
        for (amount, unit) in parts {
            if amount > 0 {
                write!(f, "{amount}{unit}")?;
            }
        }
        Ok(())
    }
}

/// For `#[serde(deserialize_with = "crate::config::duration::deserialize")]`. A zero duration is
/// refused: as a timeout it would fail every command, as an interval it would spin.
pub fn deserialize<'de, D>(deserializer: D) -> Result<Duration, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    let duration = parse(&text).map_err(serde::de::Error::custom)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom(DurationError::Zero { text }));
    }
    Ok(duration)
}

/// Like [`deserialize`], for an `Option<Duration>` field (use with `#[serde(default)]`).
pub fn deserialize_option<'de, D>(deserializer: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "deserialize")] Duration);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(duration)| duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_durations() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("20m", Duration::from_secs(20 * 60)),
            ("2h", Duration::from_secs(2 * 3600)),
            ("1h30m", Duration::from_secs(90 * 60)),
            ("1h0m5s", Duration::from_secs(3605)),
            ("1s250ms", Duration::from_millis(1250)),
            ("90m", Duration::from_secs(90 * 60)),
            (" 30s ", Duration::from_secs(30)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refuses_invalid_durations() {
        let cases = [
            ("", "empty duration, expected e.g. `30s`, `20m` or `1h30m`"),
            (
                "30",
                "invalid duration `30`, expected e.g. `500ms`, `30s`, `20m` or `1h30m`",
            ),
            (
                "s",
                "invalid duration `s`, expected e.g. `500ms`, `30s`, `20m` or `1h30m`",
            ),
            (
                "1.5h",
                "invalid duration `1.5h`: unit `.` is unknown, expected `ms`, `s`, `m` or `h`",
            ),
            (
                "3d",
                "invalid duration `3d`: unit `d` is unknown, expected `ms`, `s`, `m` or `h`",
            ),
            (
                "1 h",
                "invalid duration `1 h`: unit ` h` is unknown, expected `ms`, `s`, `m` or `h`",
            ),
            (
                "30m1h",
                "invalid duration `30m1h`: units must go from largest to smallest, each at most once",
            ),
            (
                "1m1m",
                "invalid duration `1m1m`: units must go from largest to smallest, each at most once",
            ),
            (
                "-5s",
                "invalid duration `-5s`, expected e.g. `500ms`, `30s`, `20m` or `1h30m`",
            ),
            (
                "99999999999999999999s",
                "duration `99999999999999999999s` is too large",
            ),
            (
                "9999999999999999999h",
                "duration `9999999999999999999h` is too large",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.to_string(), expected, "{text}");
        }
    }

    #[test]
    fn displays_the_way_it_parses() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(20 * 60), "20m"),
            (Duration::from_secs(2 * 3600), "2h"),
            (Duration::from_secs(90 * 60), "1h30m"),
            (Duration::from_millis(3_605_250), "1h5s250ms"),
            (Duration::from_secs(49 * 3600), "49h"),
        ];
        for (duration, expected) in cases {
            let shown = HumanDuration(duration).to_string();
            assert_eq!(shown, expected);
            assert_eq!(parse(&shown), Ok(duration), "{shown} round trip");
        }
    }
}
