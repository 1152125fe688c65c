//! How an activity call runs and is retried: [`ActivityOptions`] (timeout, retry) and
//! [`RetryPolicy`] (attempts, backoff, which failures). Retries are durable timers between
//! attempts, so they survive restarts like any other step.

use std::time::Duration;

use durable_schemas::Failure;

/// How one activity call runs ([`OrchestrationContext::call_activity_with_options`]).
#[derive(Debug, Clone, Default)]
pub struct ActivityOptions {
    /// How long each attempt may run past its start or last heartbeat before it fails with kind
    /// `Timeout`; `None`: the processor's `DURABLE_ACTIVITY_TIMEOUT`.
    pub timeout: Option<Duration>,
    /// How failed attempts are retried; `None`: not at all.
    pub retry: Option<RetryPolicy>,
}

impl ActivityOptions {
    /// These options with `timeout` for each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// These options with failed attempts retried as `policy` says.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// How `call_activity_with_retry` retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub first_interval: Duration,
    /// Multiplier applied to the delay after each failed attempt.
    pub backoff: f64,
    /// Cap on the delay.
    pub max_interval: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Which failures are retried.
    pub retry_on: RetryOn,
}

/// Which failures a [`RetryPolicy`] retries.
#[derive(Debug, Clone)]
pub enum RetryOn {
    /// Every failure.
    Any,
    /// Only failures of these kinds.
    Kinds(Vec<String>),
    /// Failures for which the function returns true.
    Predicate(fn(&Failure) -> bool),
}

impl RetryPolicy {
    /// Retry up to `max_attempts` in all, starting at `first_interval` and doubling up to 5 min.
    pub fn new(max_attempts: u32, first_interval: Duration) -> Self {
        Self {
            first_interval,
            backoff: 2.0,
            max_interval: Duration::from_secs(300),
            max_attempts,
            retry_on: RetryOn::Any,
        }
    }

    /// Set the backoff multiplier.
    pub fn backoff(mut self, factor: f64) -> Self {
        self.backoff = factor;
        self
    }

    /// Set the maximum delay.
    pub fn max_interval(mut self, max: Duration) -> Self {
        self.max_interval = max;
        self
    }

    /// Retry only failures of these kinds.
    pub fn only_kinds<I: IntoIterator<Item = S>, S: Into<String>>(mut self, kinds: I) -> Self {
        self.retry_on = RetryOn::Kinds(kinds.into_iter().map(Into::into).collect());
        self
    }

    /// Retry only failures for which `predicate` returns true.
    pub fn retry_if(mut self, predicate: fn(&Failure) -> bool) -> Self {
        self.retry_on = RetryOn::Predicate(predicate);
        self
    }

    /// Whether `failure` after attempt number `attempt` (1-based) is retried.
    pub fn should_retry(&self, failure: &Failure, attempt: u32) -> bool {
        attempt < self.max_attempts
            && match &self.retry_on {
                RetryOn::Any => true,
                RetryOn::Kinds(kinds) => kinds.contains(&failure.kind),
                RetryOn::Predicate(p) => p(failure),
            }
    }

    /// Delay after failed attempt number `attempt` (1-based). Deterministic: no jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.backoff.max(1.0).powi(attempt.saturating_sub(1) as i32);
        let ms = (self.first_interval.as_millis() as f64 * factor).min(self.max_interval.as_millis() as f64);
        Duration::from_millis(ms as u64)
    }
}
