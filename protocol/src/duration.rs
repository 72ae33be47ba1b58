//! Human durations for `--expires`: `90s`, `30m`, `12h`, `7d`, `2w`.

use thiserror::Error;

/// A duration string could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("cannot read duration {input:?}: use a number and a unit, e.g. 30m, 12h, 7d, 2w")]
pub struct DurationError {
    input: String,
}

/// Parses `N<unit>` with unit `s`, `m`, `h`, `d` or `w` into seconds.
pub fn parse_duration_secs(input: &str) -> Result<u64, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(err()),
    };
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration_secs("90s"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1_800));
        assert_eq!(parse_duration_secs("1d"), Ok(86_400));
        assert_eq!(parse_duration_secs("2w"), Ok(1_209_600));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "d",
            "10",
            "10x",
            "-1d",
            "0d",
            "99999999999999999999d",
            "1.5h",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad} should fail");
        }
    }
}
