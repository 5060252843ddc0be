//! Human durations for config keys and CLI flags: `100us`, `500ms`, `10s`,
//! `5m`, `24h`, `90d`.

use std::time::Duration;

/// Parses `<number><unit>` with unit one of `us`, `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
/// A message saying what was expected, for the caller to prefix with the key name.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (write e.g. \"10s\", \"500ms\", \"24h\")"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number (write e.g. \"10s\")"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too large"))
    };
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "{s:?} has unknown unit {unit:?} (use us, ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse("10").is_err());
        assert!(parse("s").is_err());
        assert!(parse("10y").is_err());
        assert!(parse("99999999999999999999d").is_err());
    }
}
