//! The Redis replay store: several gateways share one Redis (or a
//! Redis-compatible server), each claim an atomic Lua script. Redis must
//! never evict callgate's keys (see [`RedisStore`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use super::{Claim, Confirmed, Key, StoreError, Token};
use crate::secret::redact_url;

/// Claim: returns the current value, or, after taking the key, the
/// event's attempt number (counted in `KEYS[2]`, kept for `ARGV[3]` ms).
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
";

/// Renew: our in-flight value, or a lapsed one, is (re)set for `ARGV[2]` ms.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Confirm: the event becomes delivered whatever held it; 1 when that was
/// our claim, 2 when the key was gone, 3 when someone else held it.
const CONFIRM: &str = r"
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
if v == ARGV[1] then return 1 end
if v == false then return 2 end
return 3
";

/// Release: delete only our own in-flight value (the attempt count stays).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Forget: delete only a nonce.
const FORGET: &str = r"
if redis.call('GET', KEYS[1]) == 'n' then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `maxmemory-policy` values that can evict callgate's keys (all of them
/// carry a TTL, so the `volatile-*` ones evict them too).
const EVICTING: [&str; 8] = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
    // Not a Redis policy: an answer naming none we know.
    "unknown",
];

/// How often the request path reads `maxmemory-policy` again, so a change
/// (either way) is seen without a `/readyz` probe.
pub const POLICY_RECHECK: Duration = Duration::from_secs(30);

/// `RedisStore::policy` states besides an index into [`EVICTING`].
const POLICY_UNCHECKED: u8 = u8::MAX;
const POLICY_SAFE: u8 = u8::MAX - 1;

/// A Redis (or Redis-compatible) store shared by several gateways. One
/// multiplexed connection per gateway, reconnected in the background after
/// a failure; every command is bounded by the configured timeout. Values:
/// `f:<instance>:<token>` while in flight, `d` once delivered, `n` for a
/// nonce; `<event key>:at` counts an event's claims until it is delivered.
///
/// Redis must never evict these keys: its `maxmemory-policy` is read
/// (`INFO memory`) at start, on every `/readyz`, before the first claim and
/// then at most every [`POLICY_RECHECK`] from the request path; while it is
/// anything but `noeviction` every claim is refused
/// ([`StoreError::Evicting`]).
#[derive(Clone)]
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    claim: Arc<redis::Script>,
    renew: Arc<redis::Script>,
    confirm: Arc<redis::Script>,
    release: Arc<redis::Script>,
    forget: Arc<redis::Script>,
    instance: Arc<str>,
    next_token: Arc<AtomicU64>,
    /// The URL without its password, for messages.
    shown: Arc<str>,
    /// The last `maxmemory-policy` read: an index into [`EVICTING`],
    /// [`POLICY_SAFE`] or [`POLICY_UNCHECKED`].
    policy: Arc<AtomicU8>,
    /// How long an event's attempt count is kept (`replay.ttl`).
    attempts_ttl: Arc<AtomicU64>,
    /// When the policy was last read, in milliseconds since `epoch`.
    policy_read: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

impl RedisStore {
    /// Prepares the store without connecting: a gateway starts (and fails
    /// closed) while Redis is down, and recovers when it returns.
    pub fn new(
        url: &str,
        timeout: Duration,
        tls_ca: Option<&[u8]>,
    ) -> Result<RedisStore, StoreError> {
        let client = match tls_ca {
            None => redis::Client::open(url),
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        }
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact_url(url))))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut id = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut id);
        Ok(RedisStore {
            conn,
            claim: Arc::new(redis::Script::new(CLAIM)),
            renew: Arc::new(redis::Script::new(RENEW)),
            confirm: Arc::new(redis::Script::new(CONFIRM)),
            release: Arc::new(redis::Script::new(RELEASE)),
            forget: Arc::new(redis::Script::new(FORGET)),
            instance: hex::encode(id).into(),
            next_token: Arc::new(AtomicU64::new(1)),
            shown: redact_url(url).into(),
            policy: Arc::new(AtomicU8::new(POLICY_UNCHECKED)),
            attempts_ttl: Arc::new(AtomicU64::new(48 * 3600 * 1000)),
            policy_read: Arc::new(AtomicU64::new(0)),
            epoch: std::time::Instant::now(),
        })
    }

    /// How long an undelivered event's attempt count is kept (the gateway
    /// sets `replay.ttl`; default 48 hours).
    pub fn set_attempts_ttl(&self, ttl: Duration) {
        self.attempts_ttl.store(millis(ttl), Ordering::Relaxed);
    }

    fn err(&self, e: redis::RedisError) -> StoreError {
        StoreError::Unavailable(format!("{}: {}", self.shown, e))
    }

    fn value(&self, token: Token) -> String {
        format!("f:{}:{}", self.instance, token.id)
    }

    /// Reads `maxmemory-policy` and remembers it. `Err(Evicting)` when it
    /// can evict; an unreachable Redis is `Err(Unavailable)` and leaves
    /// what was known.
    pub async fn check_policy(&self) -> Result<(), StoreError> {
        self.policy_read
            .store(millis(self.epoch.elapsed()), Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let policy = info
            .lines()
            .find_map(|l| l.strip_prefix("maxmemory_policy:"))
            .map(str::trim);
        let state = match policy {
            Some("noeviction") => POLICY_SAFE,
            Some(p) => EVICTING
                .iter()
                .position(|e| *e == p)
                .unwrap_or(EVICTING.len() - 1) as u8,
            // INFO without the field: not a Redis we can vouch for.
            None => (EVICTING.len() - 1) as u8,
        };
        self.policy.store(state, Ordering::Relaxed);
        match self.evicting() {
            None => Ok(()),
            Some(policy) => Err(StoreError::Evicting {
                store: self.shown.to_string(),
                policy,
            }),
        }
    }

    /// The evicting policy last read, if any.
    pub fn evicting(&self) -> Option<String> {
        let state = self.policy.load(Ordering::Relaxed);
        EVICTING.get(usize::from(state)).map(|p| (*p).to_owned())
    }

    pub(super) async fn claim(
        &self,
        key: &Key,
        in_flight_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let now = millis(self.epoch.elapsed());
        let read = self.policy_read.load(Ordering::Relaxed);
        if self.policy.load(Ordering::Relaxed) == POLICY_UNCHECKED {
            // First contact (Redis was down at start): read the policy
            // before trusting the store with anything.
            self.check_policy().await?;
        } else if now.saturating_sub(read) >= millis(POLICY_RECHECK)
            && self
                .policy_read
                .compare_exchange(read, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // One request in 30 s reads it again; an unreachable Redis
            // fails the claim below anyway.
            match self.check_policy().await {
                Ok(()) | Err(StoreError::Evicting { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(policy) = self.evicting() {
            return Err(StoreError::Evicting {
                store: self.shown.to_string(),
                policy,
            });
        }
        let token_id = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let redis_key = key.redis();
        let answer: redis::Value = self
            .claim
            .key(&redis_key)
            .key(attempts_key(&redis_key))
            .arg(self.value(Token {
                id: token_id,
                attempt: 0,
            }))
            .arg(millis(in_flight_ttl))
            .arg(millis(Duration::from_millis(
                self.attempts_ttl.load(Ordering::Relaxed),
            )))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match answer {
            redis::Value::Int(n) => Claim::New(Token {
                id: token_id,
                attempt: u32::try_from(n).unwrap_or(u32::MAX),
            }),
            redis::Value::BulkString(v) if v == b"d" => Claim::Delivered,
            redis::Value::SimpleString(v) if v == "d" => Claim::Delivered,
            // In flight, or a nonce that happens to share the key: not ours.
            _ => Claim::InFlight,
        })
    }

    pub(super) async fn renew(
        &self,
        key: &Key,
        token: Token,
        in_flight_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .renew
            .key(key.redis())
            .arg(self.value(token))
            .arg(millis(in_flight_ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(renewed == 1)
    }

    pub(super) async fn confirm(
        &self,
        key: &Key,
        token: Token,
        ttl: Duration,
    ) -> Result<Confirmed, StoreError> {
        let mut conn = self.conn.clone();
        let redis_key = key.redis();
        let found: i64 = self
            .confirm
            .key(&redis_key)
            .key(attempts_key(&redis_key))
            .arg(self.value(token))
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match found {
            1 => Confirmed::Held,
            2 => Confirmed::Lapsed,
            _ => Confirmed::Taken,
        })
    }

    pub(super) async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(key.redis())
            .arg(self.value(token))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) async fn record_delivered(
        &self,
        key: &Key,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let redis_key = key.redis();
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&redis_key)
            .arg("d")
            .arg("PX")
            .arg(millis(ttl))
            .ignore()
            .cmd("DEL")
            .arg(attempts_key(&redis_key))
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) async fn remember(&self, key: &Key, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key.redis())
            .arg("n")
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(set.is_some())
    }

    pub(super) async fn forget(&self, key: &Key) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .forget
            .key(key.redis())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) async fn entries(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }
}

/// Where an event's attempt count lives next to its key.
fn attempts_key(event_key: &str) -> String {
    format!("{event_key}:at")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
