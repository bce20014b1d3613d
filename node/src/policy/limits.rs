//! Rate limits (`constraints.rate_limit`): calls per minute per agent, tool or server,
//! fleet-wide. Each node enforces its share of the limit: ⌈N / members⌉ per minute, as a token
//! bucket that refills continuously. Across the fleet at most `members × ⌈N / members⌉` calls
//! per minute pass (N + members − 1 at worst) when requests spread over every member, and fewer
//! when a member is down or a balancer sends one agent to one node (its share is unused there):
//! the bound errs on the side of refusing. No coordination per request: no Raft, no mesh round trip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use joch_policy::{RateLimit, RatePer};
use parking_lot::Mutex;

const SHARDS: usize = 16;
/// The window `max_retries` counts identical calls in.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(600);
/// Buckets kept per shard before idle, full ones are dropped.
const MAX_PER_SHARD: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// This node's buckets.
pub struct Limiter {
    shards: Vec<Mutex<HashMap<(String, String), Bucket>>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

/// A limit that refused: the rule, its figure, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// `POLICY/RULE`.
    pub rule: String,
    /// Calls per minute, fleet-wide.
    pub per_minute: u32,
    /// What it counts.
    pub per: RatePer,
    /// When a call would pass again.
    pub retry_after: Duration,
}

impl Limiter {
    /// Takes one call from every limit's bucket, or says which limit refused.
    pub fn take(
        &self,
        limits: &[RateLimit],
        agent: &str,
        server: &str,
        name: &str,
        members: usize,
        now: Instant,
    ) -> Result<(), Limited> {
        for l in limits {
            let key = match l.per {
                RatePer::Agent => agent.to_string(),
                RatePer::Tool => format!("{server}.{name}"),
                RatePer::Server => server.to_string(),
            };
            let capacity = (l.per_minute as usize).div_ceil(members.max(1)).max(1) as f64;
            self.take_one(&l.rule, key, capacity, capacity / 60.0, now).map_err(|retry_after| Limited {
                rule: l.rule.clone(),
                per_minute: l.per_minute,
                per: l.per,
                retry_after,
            })?;
        }
        Ok(())
    }

    /// `max_retries: N`: the same call (agent, tool, arguments: `call_key`) is admitted at most
    /// N + 1 times per ten minutes on this node; `Err` says when it would be again.
    pub fn take_repeat(&self, rule: &str, call_key: String, max_retries: u32, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(max_retries) + 1.0;
        self.take_one(rule, call_key, capacity, capacity / REPEAT_WINDOW.as_secs_f64(), now)
    }

    fn take_one(&self, rule: &str, key: String, capacity: f64, per_sec: f64, now: Instant) -> Result<(), Duration> {
        let shard = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (rule, &key).hash(&mut h);
            h.finish() as usize % SHARDS
        };
        let mut map = self.shards[shard].lock();
        if map.len() > MAX_PER_SHARD {
            map.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < capacity);
        }
        let b = map.entry((rule.to_string(), key)).or_insert(Bucket { tokens: capacity, last: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec).min(capacity);
        b.last = now;
        if b.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_takes_its_share_and_refills() {
        let l = Limiter::default();
        let limits = [RateLimit { per_minute: 6, per: RatePer::Agent, rule: "p/r".into() }];
        let t0 = Instant::now();
        // 3 members: 2 per minute here.
        assert!(l.take(&limits, "a", "s", "t", 3, t0).is_ok());
        assert!(l.take(&limits, "a", "s", "t", 3, t0).is_ok());
        let e = l.take(&limits, "a", "s", "t", 3, t0).unwrap_err();
        assert_eq!(e.rule, "p/r");
        assert_eq!(e.retry_after.as_secs(), 30, "one call back every 30 s");
        assert!(l.take(&limits, "b", "s", "t", 3, t0).is_ok(), "another agent has its own bucket");
        assert!(l.take(&limits, "a", "s", "t", 3, t0 + Duration::from_secs(30)).is_ok(), "refilled");
        let per_tool = [RateLimit { per_minute: 1, per: RatePer::Tool, rule: "p/t".into() }];
        assert!(l.take(&per_tool, "a", "s", "t", 3, t0).is_ok(), "at least one per node");
        assert!(l.take(&per_tool, "b", "s", "t", 3, t0).is_err(), "per tool, whoever calls");
        assert!(l.take(&per_tool, "b", "s", "u", 3, t0).is_ok());
        // max_retries: 1 -> the same call twice per ten minutes.
        assert!(l.take_repeat("p/w", "a|s.t|h".into(), 1, t0).is_ok());
        assert!(l.take_repeat("p/w", "a|s.t|h".into(), 1, t0).is_ok());
        assert_eq!(l.take_repeat("p/w", "a|s.t|h".into(), 1, t0).unwrap_err().as_secs(), 300);
        assert!(l.take_repeat("p/w", "a|s.t|other".into(), 1, t0).is_ok(), "other arguments are another call");
    }
}
