//! The master of a Sentinel deployment, followed through failovers. The
//! `redis` crate resolves the master once and keeps talking to that address
//! (after a crash: broken pipe for ever; after a failover where the old
//! master lives on, or a partition: to a demoted or abandoned node), so the
//! Redis store uses this instead:
//!
//! - every sentinel's event channel is watched; from the first sign of a
//!   failover of our master (`+odown`, `+try-failover`, ... `+promoted-slave`)
//!   the cached connections are dropped and every command fails closed
//!   ("fenced": the store-down answer, 503, the platform retries) until
//!   `+switch-master` names the new master, which is used directly (after a
//!   `ROLE` check), or until [`FENCE_LIMIT`] passes (an aborted failover);
//! - any error on a connection drops it, and the next command resolves the
//!   master again through the sentinels;
//! - once a second the cached connection's `ROLE` is checked, for the case
//!   where every event was missed.
//!
//! A change of the master's address counts as a failover (metrics, the
//! store's re-assertion of unreplicated markers).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult};
use tokio::sync::RwLock;

use super::link::{Lane, SentinelTarget, certificates};

/// Longest a failover may keep the store fenced without `+switch-master`;
/// after it the sentinels are asked again (they never name a master that
/// is down).
pub const FENCE_LIMIT: Duration = Duration::from_secs(10);

/// How often the cached connection's `ROLE` is checked.
const ROLE_CHECK: Duration = Duration::from_secs(1);

/// Events that announce a failover of a master (fence until it ends).
const FAILOVER_STARTS: [&str; 7] = [
    "+odown",
    "+try-failover",
    "+elected-leader",
    "+failover-state-select-slave",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "+promoted-slave",
];

pub(super) struct SentinelMaster {
    client: tokio::sync::Mutex<SentinelClient>,
    name: String,
    /// One connection per lane, to the master in use.
    claims: RwLock<Option<MultiplexedConnection>>,
    confirms: RwLock<Option<MultiplexedConnection>>,
    /// Since when a failover is under way.
    fenced: Mutex<Option<Instant>>,
    /// Where `+switch-master` said the new master is.
    announced: Mutex<Option<(String, u16)>>,
    /// The master in use, `host:port`.
    master: Mutex<Option<String>>,
    failovers: AtomicU64,
    last_failover: AtomicI64,
    config: AsyncConnectionConfig,
    /// The sentinels' clients (auth, TLS), for the event watchers.
    sentinels: Vec<redis::Client>,
    /// How to reach a master at an announced address.
    auth: redis::RedisConnectionInfo,
    tls: bool,
    tls_ca: Option<Vec<u8>>,
    watching: AtomicBool,
}

impl SentinelMaster {
    pub(super) fn new(
        t: &SentinelTarget,
        timeout: Duration,
        tls_ca: Option<&[u8]>,
    ) -> RedisResult<SentinelMaster> {
        let mut b = SentinelClientBuilder::new(
            t.sentinels.iter().map(|(h, p)| addr(h, *p, t.sentinel_tls)),
            t.master_name.clone(),
            SentinelServerType::Master,
        )?;
        if let Some(user) = &t.sentinel_auth.username {
            b = b.set_client_to_sentinel_username(user);
        }
        if let Some(pw) = t.sentinel_auth.password_text() {
            b = b.set_client_to_sentinel_password(pw);
        }
        if let Some(user) = &t.auth.username {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(pw) = t.auth.password_text() {
            b = b.set_client_to_redis_password(pw);
        }
        if t.sentinel_tls {
            b = b.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(pem) = tls_ca {
                b = b.set_client_to_sentinel_certificates(certificates(pem));
            }
        }
        if t.tls {
            b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if let Some(pem) = tls_ca {
                b = b.set_client_to_redis_certificates(certificates(pem));
            }
        }
        let mut sentinels = Vec::new();
        for (host, port) in &t.sentinels {
            let info = addr(host, *port, t.sentinel_tls)
                .into_connection_info()?
                .set_redis_settings(t.sentinel_auth.settings());
            sentinels.push(match (t.sentinel_tls, tls_ca) {
                (true, Some(pem)) => redis::Client::build_with_tls(info, certificates(pem))?,
                _ => redis::Client::open(info)?,
            });
        }
        Ok(SentinelMaster {
            client: tokio::sync::Mutex::new(b.build()?),
            name: t.master_name.clone(),
            claims: RwLock::new(None),
            confirms: RwLock::new(None),
            fenced: Mutex::new(None),
            announced: Mutex::new(None),
            master: Mutex::new(None),
            failovers: AtomicU64::new(0),
            last_failover: AtomicI64::new(0),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            sentinels,
            auth: t.auth.settings(),
            tls: t.tls,
            tls_ca: tls_ca.map(<[u8]>::to_vec),
            watching: AtomicBool::new(false),
        })
    }

    fn lane(&self, lane: Lane) -> &RwLock<Option<MultiplexedConnection>> {
        match lane {
            Lane::Claims => &self.claims,
            Lane::Confirms => &self.confirms,
        }
    }

    /// Whether a failover is under way (and not older than [`FENCE_LIMIT`]).
    fn is_fenced(&self) -> bool {
        let Ok(mut fenced) = self.fenced.lock() else {
            return true;
        };
        match *fenced {
            Some(since) if since.elapsed() < FENCE_LIMIT => true,
            Some(_) => {
                *fenced = None;
                false
            }
            None => false,
        }
    }

    /// The connection of `lane` to the current master, resolved when there
    /// is none. Fails closed while a failover is under way.
    pub(super) async fn conn(self: &Arc<Self>, lane: Lane) -> RedisResult<MultiplexedConnection> {
        if !self.watching.swap(true, Ordering::SeqCst) {
            self.watch();
        }
        if self.is_fenced() {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "a Sentinel failover is under way",
            )));
        }
        let slot = self.lane(lane);
        if let Some(c) = slot.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = slot.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Boxed: finding and connecting to the master is some 3 KB of
        // future, and unboxed it sat in every store call's future and so in
        // every request's, memory store or not, copied whole into the
        // request task's box each time (about 8,500 bytes; now a fraction).
        // Only a (re)connection pays for the box.
        let (conn, addr) = Box::pin(self.resolve()).await?;
        self.note_master(addr);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The master: where `+switch-master` said, if that node says it is
    /// a master; else what the sentinels answer.
    async fn resolve(&self) -> RedisResult<(MultiplexedConnection, String)> {
        let announced = self.announced.lock().ok().and_then(|a| a.clone());
        if let Some((host, port)) = announced {
            match self.connect_announced(&host, port).await {
                Ok(c) => return Ok((c, format!("{host}:{port}"))),
                Err(e) => {
                    tracing::warn!(master = %format!("{host}:{port}"), error = %e, "the announced Redis master does not answer as a master; asking the sentinels");
                    if let Ok(mut a) = self.announced.lock() {
                        *a = None;
                    }
                }
            }
        }
        let client = self.client.lock().await.async_get_client().await?;
        let addr = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => {
                format!("{h}:{p}")
            }
            other => other.to_string(),
        };
        Ok((self.connect_primary(&client).await?, addr))
    }

    async fn connect_announced(&self, host: &str, port: u16) -> RedisResult<MultiplexedConnection> {
        let addr = addr(host, port, self.tls);
        let info = addr
            .into_connection_info()?
            .set_redis_settings(self.auth.clone());
        let client = match (&self.tls_ca, self.tls) {
            (Some(pem), true) => redis::Client::build_with_tls(info, certificates(pem))?,
            _ => redis::Client::open(info)?,
        };
        self.connect_primary(&client).await
    }

    /// A connection to `client`'s node, which must say it is a master.
    async fn connect_primary(&self, client: &redis::Client) -> RedisResult<MultiplexedConnection> {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let role: redis::Role = redis::cmd("ROLE").query_async(&mut conn).await?;
        if !matches!(role, redis::Role::Primary { .. }) {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "the node named as master is not a master (ROLE)",
            )));
        }
        Ok(conn)
    }

    /// Remembers the master in use; a new address is a failover.
    fn note_master(&self, addr: String) {
        let Ok(mut master) = self.master.lock() else {
            return;
        };
        if master.as_ref().is_some_and(|m| *m != addr) {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            self.last_failover
                .store(crate::clock::unix_now(), Ordering::Relaxed);
            tracing::warn!(master = %addr, previous = %master.as_deref().unwrap_or(""), "replay store: a new Redis master (Sentinel failover)");
        }
        *master = Some(addr);
    }

    /// After an error on `lane`: its connection may not reach the master
    /// any more; the next command resolves it again.
    pub(super) async fn failed(&self, lane: Lane, _e: &RedisError) {
        *self.lane(lane).write().await = None;
    }

    async fn drop_connections(&self) {
        *self.claims.write().await = None;
        *self.confirms.write().await = None;
    }

    pub(super) fn master(&self) -> Option<String> {
        self.master.lock().ok().and_then(|m| m.clone())
    }

    pub(super) fn failovers(&self) -> (u64, i64) {
        (
            self.failovers.load(Ordering::Relaxed),
            self.last_failover.load(Ordering::Relaxed),
        )
    }

    /// Starts the event watchers (one per sentinel) and the `ROLE` check;
    /// each ends once the store is gone.
    fn watch(self: &Arc<Self>) {
        for client in &self.sentinels {
            tokio::spawn(watch_events(Arc::downgrade(self), client.clone()));
        }
        tokio::spawn(check_role(Arc::downgrade(self)));
    }

    /// One sentinel event about our master.
    async fn event(&self, channel: &str, payload: &str) {
        let words: Vec<&str> = payload.split_whitespace().collect();
        if channel == "+switch-master" {
            // <name> <old-ip> <old-port> <new-ip> <new-port>
            if let [name, _, _, host, port] = words[..]
                && name == self.name
            {
                if let (Ok(port), Ok(mut a)) = (port.parse::<u16>(), self.announced.lock()) {
                    *a = Some((host.to_owned(), port));
                }
                self.drop_connections().await;
                if let Ok(mut f) = self.fenced.lock() {
                    *f = None;
                }
            }
            return;
        }
        if !names_master(&words, &self.name) {
            return;
        }
        if channel == "-odown" {
            // The master is back before a failover began.
            if let Ok(mut f) = self.fenced.lock() {
                *f = None;
            }
        } else if FAILOVER_STARTS.contains(&channel) {
            let first = self
                .fenced
                .lock()
                .map(|mut f| {
                    let first = f.is_none();
                    if first {
                        *f = Some(Instant::now());
                    }
                    first
                })
                .unwrap_or(false);
            if first {
                tracing::warn!(
                    event = channel,
                    "replay store fenced: a Sentinel failover is under way (notifications get the store-down answer)"
                );
                self.drop_connections().await;
            }
        }
    }
}

/// Whether a sentinel event's payload is about master `name`:
/// `master <name> <ip> <port> ...` or `... @ <name> <ip> <port>`.
fn names_master(words: &[&str], name: &str) -> bool {
    (words.first() == Some(&"master") && words.get(1) == Some(&name))
        || words.windows(2).any(|w| w[0] == "@" && w[1] == name)
}

async fn watch_events(me: Weak<SentinelMaster>, client: redis::Client) {
    use futures_util::StreamExt;
    let mut channels: Vec<&str> = FAILOVER_STARTS.to_vec();
    channels.extend(["+switch-master", "-odown"]);
    loop {
        if me.strong_count() == 0 {
            return;
        }
        let mut ps = match client.get_async_pubsub().await {
            Ok(ps) => ps,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if ps.subscribe(&channels).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut stream = ps.on_message();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                // Nothing for a second: check that the store still exists.
                Err(_) => {}
                // The sentinel went away: subscribe again.
                Ok(None) => break,
                Ok(Some(msg)) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    let Some(me) = me.upgrade() else { return };
                    me.event(msg.get_channel_name(), &payload).await;
                }
            }
            if me.strong_count() == 0 {
                return;
            }
        }
    }
}

async fn check_role(me: Weak<SentinelMaster>) {
    let mut tick = tokio::time::interval(ROLE_CHECK);
    loop {
        tick.tick().await;
        let Some(me) = me.upgrade() else { return };
        let Some(mut conn) = me.claims.read().await.clone() else {
            continue;
        };
        let role: RedisResult<redis::Role> = redis::cmd("ROLE").query_async(&mut conn).await;
        if !matches!(role, Ok(redis::Role::Primary { .. })) {
            me.drop_connections().await;
        }
    }
}

/// A Redis or sentinel address, over TLS (certificates verified) or not.
fn addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> SentinelMaster {
        let target = SentinelTarget {
            sentinels: vec![("127.0.0.1".to_owned(), 1)],
            master_name: "cg".to_owned(),
            sentinel_auth: Default::default(),
            sentinel_tls: false,
            auth: Default::default(),
            tls: false,
        };
        SentinelMaster::new(&target, Duration::from_millis(200), None).unwrap()
    }

    #[test]
    fn events_about_other_masters_are_ignored() {
        let words = |p: &'static str| p.split_whitespace().collect::<Vec<_>>();
        assert!(names_master(
            &words("master cg 10.0.0.1 6379 #quorum 2/2"),
            "cg"
        ));
        assert!(names_master(
            &words("slave 10.0.0.2:6379 10.0.0.2 6379 @ cg 10.0.0.1 6379"),
            "cg"
        ));
        assert!(!names_master(&words("master other 10.0.0.1 6379"), "cg"));
        assert!(!names_master(
            &words("slave 10.0.0.2:6379 10.0.0.2 6379 @ cgx 10.0.0.1 6379"),
            "cg"
        ));
    }

    #[tokio::test]
    async fn a_failover_fences_until_switch_master_names_the_new_master() {
        let m = master();
        assert!(!m.is_fenced());
        m.event("+try-failover", "master other 10.0.0.1 6379").await;
        assert!(!m.is_fenced(), "another master's failover");
        m.event("+try-failover", "master cg 10.0.0.1 6379").await;
        assert!(m.is_fenced());
        m.event("+switch-master", "other 10.0.0.1 6379 10.0.0.3 6379")
            .await;
        assert!(m.is_fenced(), "another master's switch");
        m.event("+switch-master", "cg 10.0.0.1 6379 10.0.0.2 6380")
            .await;
        assert!(!m.is_fenced());
        assert_eq!(
            m.announced.lock().unwrap().clone(),
            Some(("10.0.0.2".to_owned(), 6380))
        );
        // A master that recovers before any failover lifts the fence.
        m.event("+odown", "master cg 10.0.0.2 6380 #quorum 2/2")
            .await;
        assert!(m.is_fenced());
        m.event("-odown", "master cg 10.0.0.2 6380").await;
        assert!(!m.is_fenced());
    }

    #[test]
    fn a_fence_lapses_after_its_limit() {
        let m = master();
        *m.fenced.lock().unwrap() = Some(Instant::now() - FENCE_LIMIT);
        assert!(!m.is_fenced());
        assert!(m.fenced.lock().unwrap().is_none());
    }
}
