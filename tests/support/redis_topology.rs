//! Replicated Redis deployments on 127.0.0.1 for the failover tests: a
//! Sentinel deployment (one master, two replicas, three sentinels) and a
//! Redis Cluster (three masters, one replica each). Every server is a
//! child process on a free loopback port in a temporary directory, without
//! persistence; it is SIGKILLed and reaped on drop. Readiness is polled
//! with a bound, never assumed after a delay.
//!
//! Included by the tests that need it (`#[path]`), next to `mod support`.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::tool;

/// The Sentinel master name the tests use.
pub const MASTER_NAME: &str = "cg";

/// One `redis-server` or `redis-sentinel` child.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    /// Stops it at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Hands the process over to a closure that SIGKILLs it when called
    /// (from another task, mid-stream); the node counts as dead from now.
    pub fn killer(&mut self) -> impl FnOnce() + Send + 'static {
        let mut child = self.child.take();
        move || {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ok` every 20 ms until it holds; panics naming `what` after `bound`.
pub fn poll_until(what: &str, bound: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One command to `port` (short timeouts); `None` when it does not answer.
pub fn ask<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(300))
        .ok()?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn).ok()
}

fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    let info: String = ask(port, &["INFO", section])?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// A child started by `command(port)` on a port `pick` chooses
/// ([`free_port`] but in the harness's own test). A port is free when
/// picked and bound again by the child later, so another process can take
/// it in between; a child that exits (its bind failed) is started again on
/// a new port, a bounded number of times. Ready when the port answers
/// with the child's own process id (`INFO server`, which `redis-server`
/// and `redis-sentinel` both serve): the process that took the port may
/// be another test's Redis, which answers PING as well.
fn start_node(
    what: &str,
    mut pick: impl FnMut() -> u16,
    command: impl Fn(u16) -> std::process::Command,
) -> Node {
    for _ in 0..5 {
        let port = pick();
        let child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let pid = child.id().to_string();
        let mut node = Node {
            port,
            child: Some(child),
        };
        let mut exited = false;
        poll_until(
            &format!("{what} on {port}"),
            Duration::from_secs(10),
            || {
                exited = node
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                exited || info_field(port, "server", "process_id").as_deref() == Some(pid.as_str())
            },
        );
        if !exited {
            return node;
        }
        node.kill();
    }
    panic!("{what} exited at start five times (ports taken?)");
}

/// A `redis-server` on a free port with `extra()`'s arguments (called once
/// per try: they may name ports of their own), started again on new ports
/// when its port was taken ([`start_node`]).
fn server(dir: &std::path::Path, extra: impl Fn() -> Vec<String>) -> Node {
    start_node("redis-server", free_port, |port| {
        let mut cmd = tool("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--maxmemory-policy",
            "noeviction",
            "--port",
            &port.to_string(),
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra());
        cmd
    })
}

/// A `redis-sentinel` monitoring the master on `master` as
/// [`MASTER_NAME`], on a port `pick` chooses, started again on another
/// when that one was taken ([`start_node`]). Its configuration file (a
/// sentinel rewrites its own) is `dir/sentinel-PORT.conf`.
pub fn sentinel(dir: &std::path::Path, master: u16, pick: impl FnMut() -> u16) -> Node {
    start_node("redis-sentinel", pick, |port| {
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut cmd = tool("redis-sentinel");
        cmd.arg(&conf);
        cmd
    })
}

// === Sentinel ===

/// One master, two replicas and three sentinels monitoring it as
/// [`MASTER_NAME`] (quorum 2, `down-after-milliseconds` 1000).
pub struct SentinelDeployment {
    pub servers: Vec<Node>,
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl SentinelDeployment {
    pub fn start() -> SentinelDeployment {
        let dir = tempfile::tempdir().unwrap();
        let master = server(dir.path(), Vec::new);
        let replica_of = vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port.to_string(),
        ];
        let servers = vec![
            master,
            server(dir.path(), || replica_of.clone()),
            server(dir.path(), || replica_of.clone()),
        ];
        let m = servers[0].port;
        let sentinels = (0..3).map(|_| sentinel(dir.path(), m, free_port)).collect();
        let d = SentinelDeployment {
            servers,
            sentinels,
            _dir: dir,
        };
        d.wait_ready();
        d
    }

    /// Replicas linked, every sentinel sees two replicas and two other
    /// sentinels and can reach its quorum.
    fn wait_ready(&self) {
        let m = self.servers[0].port;
        poll_until("replicas online", Duration::from_secs(20), || {
            let info: Option<String> = ask(m, &["INFO", "replication"]);
            info.is_some_and(|i| i.matches("state=online").count() == 2)
        });
        for s in &self.sentinels {
            poll_until("sentinels know each other", Duration::from_secs(30), || {
                let Some(fields) = ask::<Vec<String>>(s.port, &["SENTINEL", "MASTER", MASTER_NAME])
                else {
                    return false;
                };
                let get = |k: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv[0] == k)
                        .map(|kv| kv[1].clone())
                };
                get("num-slaves").as_deref() == Some("2")
                    && get("num-other-sentinels").as_deref() == Some("2")
            });
            poll_until("sentinel quorum", Duration::from_secs(10), || {
                ask::<String>(s.port, &["SENTINEL", "CKQUORUM", MASTER_NAME])
                    .is_some_and(|a| a.starts_with("OK"))
            });
        }
    }

    /// `["127.0.0.1:PORT", ...]` of the sentinels.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().filter(|s| s.alive()).find_map(|s| {
            let addr: Vec<String> = ask(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
            )?;
            addr.get(1)?.parse().ok()
        })
    }

    /// Waits until the sentinels name a master other than `old` that
    /// accepts writes; returns its port.
    pub fn wait_new_master(&self, old: u16) -> u16 {
        let mut new = 0;
        poll_until("a new master", Duration::from_secs(30), || {
            match self.master_port() {
                Some(p) if p != old => {
                    new = p;
                    info_field(p, "replication", "role").as_deref() == Some("master")
                }
                _ => false,
            }
        });
        new
    }
}

// === Cluster ===

/// Three masters with one replica each (`cluster-node-timeout` 1000).
pub struct ClusterDeployment {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl ClusterDeployment {
    pub fn start() -> ClusterDeployment {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(server(dir.path(), || {
                let bus = free_port();
                let conf = dir.path().join(format!("nodes-{bus}.conf"));
                vec![
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-config-file".to_owned(),
                    conf.display().to_string(),
                    "--cluster-node-timeout".to_owned(),
                    "1000".to_owned(),
                    "--cluster-port".to_owned(),
                    bus.to_string(),
                ]
            }));
        }
        let out = tool("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let d = ClusterDeployment { nodes, _dir: dir };
        for n in &d.nodes {
            poll_until("cluster ok on every node", Duration::from_secs(30), || {
                let info: Option<String> = ask(n.port, &["CLUSTER", "INFO"]);
                info.is_some_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:6")
                })
            });
        }
        for n in &d.nodes {
            if info_field(n.port, "replication", "role").as_deref() == Some("slave") {
                poll_until("replica in sync", Duration::from_secs(30), || {
                    info_field(n.port, "replication", "master_link_status").as_deref() == Some("up")
                });
            }
        }
        d
    }

    /// Seed URLs of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .expect("a live node")
            .port
    }

    /// The ports of the primaries owning slots now.
    pub fn masters(&self) -> Vec<u16> {
        let nodes: String = ask(self.live_port(), &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        nodes
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2)?.contains("master") && f.len() > 8)
                    .then(|| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// The master owning slot 0, as `CLUSTER NODES` says.
    pub fn master_of_slot_zero(&self) -> u16 {
        let nodes: String = ask(self.live_port(), &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        nodes
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let owns = f.iter().skip(8).any(|s| s.starts_with("0-") || *s == "0");
                (f.get(2)?.contains("master") && owns)
                    .then(|| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())
                    .flatten()
            })
            .expect("an owner of slot 0")
    }

    /// Waits until a replica owns the dead master's slots and the cluster
    /// is ok again; returns the new owner's port.
    pub fn wait_promoted(&self, old: u16) -> u16 {
        let mut new = 0;
        poll_until("a promoted replica", Duration::from_secs(30), || {
            let port = self.live_port();
            let ok = ask::<String>(port, &["CLUSTER", "INFO"])
                .is_some_and(|i| i.contains("cluster_state:ok"));
            new = self.master_of_slot_zero();
            ok && new != old
        });
        new
    }
}
