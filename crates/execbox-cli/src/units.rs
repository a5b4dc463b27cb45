//! Durations and sizes on the command line: one parser each, on well-kept crates (`humantime`,
//! `parse-size`).
//!
//! A duration is a number of seconds (`2`, `0.5`) or a number with units (`300ms`, `5s`, `1m`,
//! `1h 30m`, as `humantime` reads them): a bare number in a flag named like a timeout means
//! seconds, as for coreutils `timeout` and curl `-m`.

use std::time::Duration;

/// `2` (seconds), `0.5`, `300ms`, `5s`, `2m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        let secs: f64 = t
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected seconds or e.g. 300ms, 5s"))?;
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} too large"));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {s:?} ({e}): give seconds (`2`, `0.5`) or units (`300ms`, `5s`, `1m`)")
    })
}

/// [`parse_duration`] in whole milliseconds (sub-millisecond parts are dropped).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {s:?} too large"))
}

/// `256M`, `1G`, `64k`, `1MiB`, `1.5M`, or a bare number of bytes. Every unit is binary
/// (`M` and `MB` are MiB, as for `ulimit` and cgroup files), as the `parse-size` crate reads
/// them.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| {
            format!("invalid size {s:?} ({e}): give bytes or units (`64k`, `256M`, `1GiB`)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse_duration_ms("2"), Ok(2000));
        assert_eq!(parse_duration_ms("0.5"), Ok(500));
        assert_eq!(parse_duration_ms(" 20 "), Ok(20_000));
    }

    #[test]
    fn units_are_read() {
        assert_eq!(parse_duration_ms("300ms"), Ok(300));
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h 30m"), Ok(5_400_000));
    }

    #[test]
    fn nonsense_is_refused_with_a_hint() {
        for bad in ["", "x", "5 parsecs", "1.2.3", "-1", "nan", "inf"] {
            let e = parse_duration_ms(bad).unwrap_err();
            assert!(e.contains("duration"), "{bad}: {e}");
        }
        assert!(parse_duration_ms("99999999999999999999999").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert!(parse_size("lots").unwrap_err().contains("lots"));
        assert!(parse_size("99999999999G").is_err());
    }
}
