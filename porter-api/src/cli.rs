//! What the two binaries' command lines share: the duration syntax of their
//! flags and the log set-up, so that `--poll-interval 500ms` and `RUST_LOG`
//! mean the same to the agent and the controller.

use std::time::Duration;

/// A flag's duration: a whole number with `ms`, `s` (or no unit) or `m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" | "" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("`{text}`: unit must be ms, s or m")),
    }
}

/// Logs to stderr at `RUST_LOG` (default `info`), coloured only on a
/// terminal so that container logs carry no escape codes.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_or_no_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1h").unwrap_err().contains("unit must be"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
    }
}
