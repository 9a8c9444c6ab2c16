//! The store's one retry layer: which failures are worth another request, how long to
//! wait, when to give up, and counters of what was ridden out.
//!
//! `object_store`'s own retry loop is switched off (`max_retries = 0`) so that every
//! repeated request goes through here: one budget, one policy, every retry counted. Every
//! request the store makes is safe to repeat: gets, heads and lists read immutable objects,
//! deletes of a missing key succeed, and a create-only put that may have landed before its
//! response was lost is settled by reading the object back (see `S3Store::put_single`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use haagenti_core::RetryStats;
use object_store::client::HttpErrorKind;
use object_store::retry::{RetryContext, RetryFailure, RetryPolicy};

use crate::Class;

/// First backoff ceiling; each retry doubles it up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long and how often one operation may be tried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub(crate) max_retries: usize,
    pub(crate) timeout: Duration,
}

/// One operation's attempts against its [`Budget`].
#[derive(Debug)]
pub(crate) struct Attempts {
    budget: Budget,
    started: Instant,
    made: u32,
}

impl Attempts {
    pub(crate) fn new(budget: Budget) -> Self {
        Attempts {
            budget,
            started: Instant::now(),
            made: 0,
        }
    }

    /// Counts an attempt about to be made.
    pub(crate) fn start(&mut self) {
        self.made += 1;
    }

    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// After a failed attempt: waits a jittered backoff and answers true when another
    /// attempt fits the budget, false (at once) when it does not.
    pub(crate) async fn backoff(&self) -> bool {
        let retries = self.made as usize;
        if retries > self.budget.max_retries {
            return false;
        }
        let wait = jittered(retries);
        if self.started.elapsed() + wait > self.budget.timeout {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }

    /// "3 attempts in 1.2 s", for errors that outlived the budget.
    pub(crate) fn summary(&self) -> String {
        let s = if self.made == 1 { "" } else { "s" };
        format!(
            "{} attempt{s} in {:.1} s",
            self.made,
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// "Full jitter" backoff: uniform in [0, min(MAX, BASE·2^(n-1))], so that many clients
/// throttled at once do not come back in step.
fn jittered(retry: usize) -> Duration {
    let shift = retry.saturating_sub(1).min(16) as u32;
    let ceiling = BASE_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
    let nanos = ceiling.as_nanos() as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { random() % nanos })
}

/// A cheap random number (splitmix64 over a counter seeded by the clock); jitter needs
/// spread, not quality, and no dependency.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.load(Ordering::Relaxed);
    if seed == 0 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        seed = now | 1;
    }
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    STATE.store(z, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a failure of this class may pass if the request is sent again, and under what
/// name it is counted. Transport failures (no response, or a response cut short), 5xx,
/// 429 and 408 answers, S3's `SlowDown` and a 409 from a concurrent conditional write are;
/// answers that say what the object or request is (404, 403, 412, …) are not.
pub(crate) fn retry_cause(class: Class, slow_down: bool) -> Option<&'static str> {
    match class {
        Class::Transport(kind) => Some(transport_cause(kind)),
        Class::Response(Some(status)) => match status {
            503 if slow_down => Some("HTTP 503 SlowDown"),
            429 => Some("HTTP 429"),
            408 => Some("HTTP 408"),
            500..=599 => Some(match status {
                500 => "HTTP 500",
                502 => "HTTP 502",
                503 => "HTTP 503",
                504 => "HTTP 504",
                _ => "HTTP 5xx",
            }),
            // S3 can report InternalError or SlowDown in the body of a 200 answer.
            200 => Some("error in a 200 answer"),
            _ => None,
        },
        Class::Conflict => Some("HTTP 409 conflict"),
        _ => None,
    }
}

fn transport_cause(kind: HttpErrorKind) -> &'static str {
    match kind {
        HttpErrorKind::Connect => "could not connect",
        HttpErrorKind::Timeout => "timed out",
        HttpErrorKind::Interrupted => "connection reset or cut",
        HttpErrorKind::Decode => "response unreadable or cut",
        HttpErrorKind::Request => "connection closed",
        _ => "transport error",
    }
}

/// The store's counters behind [`haagenti_core::FragmentStore::retry_stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    retried: AtomicU64,
    exhausted: AtomicU64,
    causes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub(crate) fn retried(&self, cause: &'static str) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means a panic elsewhere mid-increment: count anyway.
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        *causes.entry(cause).or_default() += 1;
    }

    pub(crate) fn exhausted(&self) {
        self.exhausted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RetryStats {
        let causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        RetryStats {
            retried: self.retried.load(Ordering::Relaxed),
            causes: causes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }
}

/// The same policy for the parts of a multipart upload, which `object_store` sends again
/// itself (the same part number) when this says so.
#[derive(Debug)]
pub(crate) struct PartRetry {
    pub(crate) budget: Budget,
    pub(crate) counters: std::sync::Arc<Counters>,
}

#[async_trait]
impl RetryPolicy for PartRetry {
    async fn retry(&self, context: RetryContext) -> bool {
        let class = match context.failure {
            RetryFailure::Transport(kind) => Class::Transport(kind),
            RetryFailure::Status(status) if status.as_u16() == 409 => Class::Conflict,
            RetryFailure::Status(status) => Class::Response(Some(status.as_u16())),
            _ => return false,
        };
        // A policy sees the status only, not the body that would say SlowDown.
        let Some(cause) = retry_cause(class, false) else {
            return false;
        };
        if context.attempt > self.budget.max_retries {
            self.counters.exhausted();
            return false;
        }
        let wait = jittered(context.attempt);
        if context.elapsed + wait > self.budget.timeout {
            self.counters.exhausted();
            return false;
        }
        self.counters.retried(cause);
        tokio::time::sleep(wait).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_below_it() {
        for retry in 1..40 {
            let shift = (retry - 1).min(16) as u32;
            let ceiling = BASE_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
            for _ in 0..50 {
                assert!(jittered(retry) <= ceiling);
            }
        }
        // Spread, not a constant: 50 draws under a 5 s ceiling are not all equal.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| jittered(30)).collect();
        assert!(draws.len() > 40, "{draws:?}");
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(retry_cause(Class::Transport(HttpErrorKind::Interrupted), false).is_some());
        assert_eq!(
            retry_cause(Class::Response(Some(503)), true),
            Some("HTTP 503 SlowDown")
        );
        assert_eq!(
            retry_cause(Class::Response(Some(503)), false),
            Some("HTTP 503")
        );
        assert!(retry_cause(Class::Response(Some(429)), false).is_some());
        assert!(retry_cause(Class::Conflict, false).is_some());
        for class in [
            Class::Missing,
            Class::Exists,
            Class::Denied,
            Class::Unauthenticated,
            Class::Precondition,
            Class::Response(Some(400)),
            Class::Response(None),
            Class::Local,
        ] {
            assert_eq!(retry_cause(class, false), None, "{class:?}");
        }
    }

    #[tokio::test]
    async fn the_budget_bounds_attempts_and_time() {
        let mut attempts = Attempts::new(Budget {
            max_retries: 3,
            timeout: Duration::from_secs(60),
        });
        let mut made = 0;
        loop {
            attempts.start();
            made += 1;
            if !attempts.backoff().await {
                break;
            }
        }
        assert_eq!(made, 4, "one attempt and three retries");
        assert_eq!(attempts.summary().split(' ').next(), Some("4"));

        let mut attempts = Attempts::new(Budget {
            max_retries: 1000,
            timeout: Duration::ZERO,
        });
        attempts.start();
        assert!(!attempts.backoff().await, "no time left: no retry");
    }
}
