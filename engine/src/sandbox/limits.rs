//! Per-attempt resource limits and the parsers for their human spellings.
//!
//! Every limit has a default, so a run with no flags can neither hang (fuel
//! and wall-clock deadline) nor flood the host (memory and output caps). The
//! defaults are documented on [`Limits::default`] and in `cairn task run --help`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What one attempt of a task may consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Deterministic CPU budget: roughly one unit per WebAssembly instruction.
    pub fuel: u64,
    /// Wall-clock deadline for the whole attempt, enforced by epoch interruption
    /// while the task computes and by a host timer while it waits in a host call.
    pub timeout: Duration,
    /// Cap on the total linear memory of the component's instances, in bytes.
    pub memory: ByteSize,
    /// Cap on the output document (or a command's stdout), in bytes.
    pub output: ByteSize,
}

impl Limits {
    pub const DEFAULT_FUEL: u64 = 5_000_000_000;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MEMORY: ByteSize = ByteSize(256 << 20);
    pub const DEFAULT_OUTPUT: ByteSize = ByteSize(16 << 20);
    /// No task may be given more linear memory than a 32-bit address space.
    pub const MAX_MEMORY: ByteSize = ByteSize(4 << 30);
}

impl Default for Limits {
    /// 5 000 000 000 fuel (a few seconds of compute), 30 s, 256 MiB memory,
    /// 16 MiB output.
    fn default() -> Self {
        Self {
            fuel: Self::DEFAULT_FUEL,
            timeout: Self::DEFAULT_TIMEOUT,
            memory: Self::DEFAULT_MEMORY,
            output: Self::DEFAULT_OUTPUT,
        }
    }
}

/// A size in bytes, spelled `65536`, `64KiB`, `64MiB`, `1GB`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }
}

/// From a string (`"64MiB"`) or a plain number of bytes.
impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Spelled {
            Bytes(u64),
            Text(String),
        }
        match Spelled::deserialize(deserializer)? {
            Spelled::Bytes(n) => Ok(ByteSize(n)),
            Spelled::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// As a plain number of bytes (which [`Deserialize`](serde::Deserialize) reads back).
impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (write e.g. 65536, 512KiB, 64MiB or 1GiB)")]
pub struct SizeError {
    input: String,
    reason: String,
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed: bytesize::ByteSize = s.trim().parse().map_err(|reason: String| SizeError {
            input: s.to_owned(),
            reason,
        })?;
        Ok(ByteSize(parsed.as_u64()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. 500ms, 5s, 2m or 1h)")]
pub struct DurationError {
    input: String,
    reason: String,
}

/// The longest duration Cairn accepts anywhere (timeouts, delays, ages):
/// 100 years. Checked at parse time so that no later `Instant + duration`
/// or `SystemTime - duration` can overflow, whatever a manifest, a flag or
/// a policy says.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Parse a duration such as `500ms`, `5s`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let duration = parse_age(s)?;
    if duration.is_zero() {
        return Err(DurationError {
            input: s.to_owned(),
            reason: "must be greater than zero".into(),
        });
    }
    Ok(duration)
}

/// Parse an age, as [`parse_duration`] does but allowing zero (`0s`: "everything").
pub fn parse_age(s: &str) -> Result<Duration, DurationError> {
    let fail = |reason: String| DurationError {
        input: quote_cut(s),
        reason,
    };
    let duration = humantime::parse_duration(s.trim()).map_err(|e| fail(e.to_string()))?;
    if duration > MAX_DURATION {
        return Err(fail("must be at most 100 years".into()));
    }
    Ok(duration)
}

/// An age as a config spells it (`"30d"`, `"12h"`, `"0s"`), read with
/// [`parse_age`] and written back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age(pub Duration);

impl<'de> serde::Deserialize<'de> for Age {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_age(&text).map(Age).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Age {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// `text` cut to at most 200 characters for quoting in a message: an
/// error that repeats a 20 MB input back is not an error message.
pub fn quote_cut(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes in all)", &text[..end], text.len()),
    }
}

/// Parse a fuel amount: digits, optionally with `_` separators (`5_000_000`).
pub fn parse_fuel(s: &str) -> Result<u64, String> {
    let digits: String = s.trim().chars().filter(|c| *c != '_').collect();
    match digits.parse::<u64>() {
        Ok(0) => Err(format!("invalid fuel {s:?}: must be greater than zero")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "invalid fuel {s:?}: write a whole number such as 100000000 or 100_000_000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("1 KiB".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!("1kB".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
    }

    #[test]
    fn bad_sizes_say_how_to_write_one() {
        let err = "lots".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("\"lots\"") && err.contains("64MiB"), "{err}");
    }

    #[test]
    fn durations_parse_and_reject_zero_and_garbage() {
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
        let huge = parse_duration("9223372036854775807s")
            .unwrap_err()
            .to_string();
        assert!(huge.contains("at most 100 years"), "{huge}");
        assert!(parse_age("101years").is_err());
        assert!(parse_duration("99years").is_ok());
        let long = "x".repeat(1 << 20);
        let cut = parse_duration(&long).unwrap_err().to_string();
        assert!(cut.len() < 1000, "a huge input is cut in the message");
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .to_string()
                .contains("\"soon\"")
        );
    }

    #[test]
    fn fuel_accepts_separators_and_rejects_zero() {
        assert_eq!(parse_fuel("1_000_000").unwrap(), 1_000_000);
        assert!(parse_fuel("0").is_err());
        assert!(parse_fuel("-5").unwrap_err().contains("whole number"));
    }
}
