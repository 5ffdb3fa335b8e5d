//! Retry policies: how many attempts, how long to wait, which failures.

use std::time::Duration;

use crate::sandbox::FailureClass;
use crate::sandbox::limits::parse_duration;

use crate::manifest::RetrySpec;

/// How delays grow between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same base delay before every retry.
    Fixed,
    /// `delay × 2^(retry − 1)`, capped at `max_delay`.
    Exponential,
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (≥ 1).
    pub attempts: u32,
    pub backoff: Backoff,
    pub delay: Duration,
    pub max_delay: Duration,
    /// Draw each delay uniformly from `[0, bound]` ("full jitter") so many
    /// failing steps do not retry in lockstep.
    pub jitter: bool,
    /// Failure classes worth another attempt.
    pub on: Vec<FailureClass>,
}

impl Default for RetryPolicy {
    /// One attempt (no retries); when retries are asked for: exponential from
    /// 100 ms, capped at 30 s, full jitter, on retryable task errors and timeouts.
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Backoff::Exponential,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            jitter: true,
            on: vec![FailureClass::TaskRetryable, FailureClass::Timeout],
        }
    }
}

/// Most attempts a step may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

impl RetryPolicy {
    /// Validate a policy as written; errors name the field and say what to write.
    pub fn from_spec(spec: &RetrySpec) -> Result<Self, String> {
        let mut policy = Self::default();
        if let Some(attempts) = spec.attempts {
            if !(1..=MAX_ATTEMPTS).contains(&attempts) {
                return Err(format!(
                    "retry.attempts = {attempts}: must be between 1 and {MAX_ATTEMPTS}"
                ));
            }
            policy.attempts = attempts;
        }
        if let Some(backoff) = &spec.backoff {
            policy.backoff = match backoff.as_str() {
                "fixed" => Backoff::Fixed,
                "exponential" => Backoff::Exponential,
                other => {
                    return Err(format!(
                        "retry.backoff = {other:?}: write \"fixed\" or \"exponential\""
                    ));
                }
            };
        }
        if let Some(delay) = &spec.delay {
            policy.delay = parse_duration(delay).map_err(|e| format!("retry.delay: {e}"))?;
        }
        if let Some(max) = &spec.max_delay {
            policy.max_delay = parse_duration(max).map_err(|e| format!("retry.max_delay: {e}"))?;
        }
        if let Some(jitter) = spec.jitter {
            policy.jitter = jitter;
        }
        if policy.max_delay < policy.delay {
            return Err("retry.max_delay is shorter than retry.delay".into());
        }
        if let Some(on) = &spec.on {
            policy.on = on
                .iter()
                .map(|name| retryable_class(name))
                .collect::<Result<_, _>>()?;
        }
        Ok(policy)
    }

    /// Should a failure of this class on attempt `attempt` (1-based) be retried?
    pub fn retries(&self, class: FailureClass, attempt: u32) -> bool {
        attempt < self.attempts && self.on.contains(&class)
    }

    /// The longest wait before retry number `retry` (1 = the second attempt).
    pub fn bound(&self, retry: u32) -> Duration {
        let base = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32
                    .checked_pow(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX);
                self.delay.checked_mul(factor).unwrap_or(self.max_delay)
            }
        };
        base.min(self.max_delay)
    }

    /// The wait before retry number `retry`, given a uniform draw in `[0, 1)`.
    pub fn delay(&self, retry: u32, uniform: f64) -> Duration {
        let bound = self.bound(retry);
        if self.jitter {
            bound.mul_f64(uniform.clamp(0.0, 1.0))
        } else {
            bound
        }
    }
}

fn retryable_class(name: &str) -> Result<FailureClass, String> {
    let class = FailureClass::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
            format!(
                "retry.on: unknown failure class {name:?} (classes: {})",
                names.join(", ")
            )
        })?;
    match class {
        FailureClass::OutOfFuel
        | FailureClass::Denied
        | FailureClass::MemoryLimit
        | FailureClass::OutputTooLarge => Err(format!(
            "retry.on: {name} is never retried: the sandbox is deterministic, so the same attempt would fail the same way; raise the limit or the grant instead"
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(attempts: u32, backoff: &str) -> RetrySpec {
        RetrySpec {
            attempts: Some(attempts),
            backoff: Some(backoff.into()),
            delay: Some("100ms".into()),
            max_delay: Some("1s".into()),
            ..RetrySpec::default()
        }
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let p = RetryPolicy::from_spec(&spec(10, "exponential")).unwrap();
        let bounds: Vec<u128> = (1..=6).map(|r| p.bound(r).as_millis()).collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            p.bound(200),
            Duration::from_secs(1),
            "huge exponents saturate at the cap"
        );
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_bound() {
        let p = RetryPolicy::from_spec(&spec(5, "exponential")).unwrap();
        for i in 0..100 {
            let u = f64::from(i) / 100.0;
            assert!(p.delay(3, u) <= p.bound(3));
        }
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        let fixed = RetryPolicy {
            jitter: false,
            ..RetryPolicy::from_spec(&spec(5, "fixed")).unwrap()
        };
        assert_eq!(fixed.delay(4, 0.3), Duration::from_millis(100));
    }

    #[test]
    fn only_listed_classes_are_retried_and_attempts_are_counted() {
        let p = RetryPolicy::from_spec(&spec(3, "fixed")).unwrap();
        assert!(p.retries(FailureClass::TaskRetryable, 1));
        assert!(p.retries(FailureClass::Timeout, 2));
        assert!(
            !p.retries(FailureClass::Timeout, 3),
            "the third attempt was the last"
        );
        assert!(!p.retries(FailureClass::TaskFatal, 1));
        assert!(!p.retries(FailureClass::OutOfFuel, 1));
    }

    #[test]
    fn deterministic_failures_cannot_be_made_retryable() {
        let bad = RetrySpec {
            on: Some(vec!["out-of-fuel".into()]),
            ..RetrySpec::default()
        };
        assert!(
            RetryPolicy::from_spec(&bad)
                .unwrap_err()
                .contains("never retried")
        );
        let unknown = RetrySpec {
            on: Some(vec!["flaky".into()]),
            ..RetrySpec::default()
        };
        assert!(
            RetryPolicy::from_spec(&unknown)
                .unwrap_err()
                .contains("task-retryable")
        );
        assert!(
            RetryPolicy::from_spec(&RetrySpec {
                attempts: Some(0),
                ..RetrySpec::default()
            })
            .is_err()
        );
    }
}
