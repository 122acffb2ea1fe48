//! Durations on command lines and in MCP tool parameters (`250ms`, `5s`, `2m`, `1h30m`).
//!
//! Parsed by jiff's friendly format, which checks for overflow; a bare number still means
//! seconds, as it always has. Shared by `shunt run`, `shunt mcp` and `shunt sandbox`, so none of
//! them imports another's flags.
use std::time::Duration;

/// A duration that did not parse.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    #[error("`{input}`: expected a duration such as 250ms, 5s, 2m, 1h or 1h30m")]
    Syntax {
        input: String,
        #[source]
        source: jiff::Error,
    },
    #[error("`{input}`: a duration cannot be negative")]
    Negative { input: String },
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `1h30m` (and anything else jiff's friendly or ISO 8601
/// duration formats accept); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let signed: jiff::SignedDuration = s.parse().map_err(|source| DurationError::Syntax {
        input: s.to_string(),
        source,
    })?;
    Duration::try_from(signed).map_err(|_| DurationError::Negative {
        input: s.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn compound_bare_and_bad_durations() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 10ms ").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::Negative { .. })
        ));
        // The old parser multiplied without checking; this would have wrapped around.
        assert!(matches!(
            parse_duration("9999999999999999999h"),
            Err(DurationError::Syntax { .. })
        ));
        assert!(parse_duration("").is_err());
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.starts_with("`soon`: expected a duration"), "{e}");
    }
}
