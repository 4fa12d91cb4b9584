//! The delivery journal: every notification about to be forwarded is
//! appended to a local file before the upstream sees it, and its outcome
//! after. It serves three purposes:
//! * at start, the memory replay store is warmed from it, so a restart does
//!   not forget which events were delivered within `replay.ttl`;
//! * `callgate journal list` shows what arrived and how it ended;
//! * `callgate journal redeliver` re-sends verified events to the shop, for
//!   the day the shop was down longer than the platform kept retrying.
//!
//! Format: JSON lines in `journal.dir`, one file at a time per writer (a
//! gateway has one writer, a [`Lane`], per worker thread, each with its own
//! file), named `<UTC time>-<kind>-<pid>-<n>.jsonl` (`n` ten digits, counted
//! across the lanes) so names sort by age; a new file is never named before a file already there (a clock
//! stepped back names it one second after the latest). A `received`
//! record holds the route, provider, event id, source address, the request's
//! end-to-end headers (never `Authorization`/`Cookie`, never `X-Callgate-*`)
//! and the body in Base64: exactly what is needed to verify the signature
//! again and forward. An `outcome` record says how the delivery ended. No
//! key, secret or MAC is ever written; the files are created mode 0600,
//! each new (`O_EXCL`: never a file or symlink that was already there).
//!
//! How records reach the disk depends on `journal.fsync`:
//! * `always`: through one writer thread that group-commits: whatever is
//!   queued is written in one `write` and synced before the notifications
//!   waiting on it are forwarded (a crash cannot lose an accepted record;
//!   costs one fdatasync per batch);
//! * `interval` (default): the arrival is written by the request itself,
//!   before its forward (a `write` to the page cache, no hand-off to
//!   another thread: the load benchmark measured that hand-off at 15-25 µs
//!   and two context switches per forward; the mutex is held only to
//!   count the bytes and take the file, not across the `write`, which the
//!   kernel appends whole under `O_APPEND`), so that a crash of callgate
//!   (`kill -9`) leaves it in the file and the platform's retry is marked
//!   as a repeat. Arrivals that a worker thread's requests reach together
//!   share that `write` ([`Gather`]): the first lets the thread's other
//!   ready tasks run once, then writes every line they added, and none of
//!   them is forwarded before the `write` returned. The outcome is queued for the journal thread,
//!   which writes what is queued with one `write` [`BATCH_DELAY`] after the
//!   first record (the ack does not wait on the file; a crash in those
//!   milliseconds loses an outcome, which only makes callgate mark a repeat
//!   it need not have). A timer thread syncs every [`SYNC_EVERY`], outside
//!   the mutex, files rotated away included: the kernel holds appends to a
//!   file while it is synced, for as long as the sync takes, so each sync
//!   is kept small (a power cut can lose up to that much of the records,
//!   which the platform's retries cover, since nothing unconfirmed was
//!   acknowledged);
//! * `never`: written like `interval`, syncing left to the OS.
//!
//! A failed write (disk full) fails requests closed: the request whose
//! arrival could not be written has its claim released and gets 503 and
//! its failure ack, and the platform retries. Under `interval` and `never`
//! an outcome the journal thread could not write is kept and tried again
//! every [`RETRY_EVERY`], and so are the outcomes queued while it fails (up
//! to [`MAX_QUEUED`] bytes, then refused): an outcome lost there would
//! leave a delivery the shop took looking unfinished. Under `always` the
//! writer keeps the outcomes a group commit could not write and writes
//! them first with the next one.
//!
//! Rotation: a new file when the current one reaches `max_file_bytes` or
//! `max_file_age` (and at each start); the newest `max_files` files are
//! kept, and older ones whose last write is younger than `replay.ttl` while
//! the journal stays within `max_files × max_file_bytes` bytes and
//! [`files_kept_at_most`] files (starts within `replay.ttl` hold little),
//! so the journal never exceeds about `max_files × max_file_bytes`. A file
//! another writer has open is never deleted ([`held_open`]).
//! A file deleted while its last write (its newest record) is younger than
//! `replay.ttl` takes with it deliveries the memory store is warmed from at
//! start: each such deletion is logged (WARN) and counted
//! (`callgate_journal_pruned_within_ttl_total`), and the time of the newest
//! record deleted is kept in [`PRUNED_MARK`], so that the next start can say
//! which deliveries it no longer remembers ([`WarmUp::forgotten_through`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

mod line;
pub use line::{ArrivalLine, Body, Headers};

/// When the journal is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    Always,
    #[default]
    Interval,
    Never,
}

/// The compiled `[journal]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub max_file_bytes: u64,
    pub max_files: usize,
    pub max_file_age: Duration,
}

/// What the journal's files are kept for: at start the memory replay store
/// is warmed with the deliveries they hold that are younger than
/// `replay.ttl`. Pruning tells when it deletes a file that young.
#[derive(Clone)]
pub struct Retention {
    /// `replay.ttl`.
    pub ttl: Duration,
    /// The replay store keeps delivered events itself (Redis): a file
    /// pruned early shortens only `journal list` and `journal redeliver`.
    pub store_remembers: bool,
    /// `callgate_journal_pruned_within_ttl_total`.
    pub pruned_within_ttl: prometheus::IntCounter,
}

/// The file in `journal.dir` that holds the Unix time of the newest record
/// pruned while younger than `replay.ttl` (not a `.jsonl` file: readers pass
/// it by).
pub const PRUNED_MARK: &str = ".pruned-within-ttl";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Received(Received),
    Outcome(OutcomeRecord),
}

/// A notification about to be forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// Id of this arrival, shared with its outcome record.
    pub rid: String,
    /// Unix seconds.
    pub unix: i64,
    /// The route's name.
    pub route: String,
    /// The route's replay namespace, written only when it is not the
    /// route's name (so records of routes without `replay_namespace` are
    /// as they always were): absent means the route's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub provider: String,
    /// The merchant the event belongs to (`Verified::merchant`); empty in
    /// records written before replay keys held the merchant.
    #[serde(default)]
    pub merchant: String,
    pub event_id: String,
    pub client: String,
    /// End-to-end request headers, in order.
    pub headers: Vec<(String, String)>,
    /// The request body, standard Base64.
    pub body: String,
    /// The `X-Callgate-Attempt` it was forwarded with.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The merchant's order number (`normalize::order_number`), for the
    /// console's search after a restart; absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub rid: String,
    pub unix: i64,
    pub route: String,
    /// As in [`Received::namespace`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// As in [`Received::merchant`].
    #[serde(default)]
    pub merchant: String,
    pub event_id: String,
    /// The `callgate_requests_total` outcome label.
    pub outcome: String,
    pub status: u16,
    /// Written by `callgate journal redeliver`.
    #[serde(default)]
    pub redelivery: bool,
    /// The shop's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_status: Option<u16>,
    /// How long the shop took, in milliseconds, when it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_ms: Option<f64>,
}

impl OutcomeRecord {
    /// Whether the shop confirmed this delivery.
    pub fn delivered(&self) -> bool {
        self.outcome == "forwarded"
    }

    /// The replay namespace the delivery was made in.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(&self.route)
    }

    /// The event this outcome is of.
    pub fn event(&self) -> Event {
        Event::of(
            self.namespace().to_owned(),
            self.merchant.clone(),
            self.event_id.clone(),
        )
    }
}

/// What a record says of the replay namespace of `route`, whose namespace
/// is `namespace`: nothing when it is the route's name.
pub fn namespace_field(route: &str, namespace: &str) -> Option<String> {
    (route != namespace).then(|| namespace.to_owned())
}

/// Why the journal could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("journal writer has stopped")]
    Stopped,
}

enum Cmd {
    Write {
        line: Vec<u8>,
        /// Kept and written with a later batch when this one fails (an
        /// outcome; an arrival that failed was refused instead).
        keep: bool,
        done: Option<oneshot::Sender<Result<(), JournalError>>>,
    },
    Flush(oneshot::Sender<()>),
}

/// How long the journal thread lets a batch of outcome records gather
/// after its first one (`fsync = "interval"` and `"never"`).
pub const BATCH_DELAY: Duration = Duration::from_millis(2);

/// How often dirty journal data is synced under `fsync = "interval"`.
/// Often, so that each sync has little to write: while a file is synced
/// the kernel holds appends to it for as long as the sync takes to
/// allocate and write what is dirty (measured on this project's test
/// machine: up to 20-60 ms once a second with a second's worth of records,
/// about 5 ms with 100 ms' worth).
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// How often the journal thread tries again outcome records it could not
/// write.
pub const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Bytes of outcome records queued at most before appending requests wait
/// for the journal thread (a disk slower than the notifications arriving).
pub const MAX_QUEUED: usize = 16 * 1024 * 1024;

/// Handle to the journal writer. Cloning shares the writer.
#[derive(Clone)]
pub struct Journal {
    /// The journal directory (`journal.dir`).
    dir: PathBuf,
    /// One writer per worker thread ([`use_lane`]), each with a file of its
    /// own; one under `fsync = "always"`.
    lanes: Arc<[Lane]>,
    fsync: Fsync,
}

/// A writer with its current file and its way of writing. Worker threads
/// each write their own lane: two threads appending to one file contend in
/// the kernel for the file's locks (on this machine two threads appending
/// 2.6 KB lines to one file spent 4.2-4.9 µs of CPU a `write`, to a file
/// each 2.1-2.3 µs), and the files are read back as one journal.
struct Lane {
    writer: Arc<Mutex<Writer>>,
    sink: Sink,
}

thread_local! {
    /// The lane this thread writes ([`use_lane`]); otherwise its slot's.
    static LANE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Makes this thread write lane `index` (modulo the lanes a journal has)
/// of every journal: each gateway worker its own.
pub fn use_lane(index: usize) {
    LANE.with(|l| l.set(Some(index)));
}

/// Where an appended record goes.
#[derive(Clone)]
enum Sink {
    /// `fsync = "always"`: the group-commit thread.
    GroupCommit(mpsc::Sender<Cmd>),
    /// `interval`, `never`: durable records are written by the request,
    /// the others queued for the journal thread.
    Direct(Arc<BatchThread>),
}

impl Journal {
    /// Opens a new journal file in `config.dir` and starts the writer.
    /// `kind` names the writer in the file name (`gateway`, `redeliver`);
    /// `retention` says which files are still young enough to matter.
    pub fn open(
        config: &JournalConfig,
        kind: &str,
        retention: Retention,
    ) -> Result<Journal, JournalError> {
        Journal::open_lanes(config, kind, retention, 1)
    }

    /// As [`Journal::open`], with a file for each of `lanes` writers (at
    /// least one; one under `fsync = "always"`, whose one thread writes
    /// every record): a gateway opens one per worker.
    pub fn open_lanes(
        config: &JournalConfig,
        kind: &str,
        retention: Retention,
        lanes: usize,
    ) -> Result<Journal, JournalError> {
        let lanes = if config.fsync == Fsync::Always {
            1
        } else {
            lanes.max(1)
        };
        let shared = Shared::default();
        let lanes = (0..lanes)
            .map(|_| Lane::open(config, kind, retention.clone(), &shared))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Journal {
            dir: config.dir.clone(),
            lanes: lanes.into(),
            fsync: config.fsync,
        })
    }

    /// The lane this thread writes.
    fn lane(&self) -> &Lane {
        let i = LANE.with(|l| l.get()).unwrap_or_else(thread_slot);
        &self.lanes[i % self.lanes.len()]
    }
}

impl Lane {
    fn open(
        config: &JournalConfig,
        kind: &str,
        retention: Retention,
        shared: &Shared,
    ) -> Result<Lane, JournalError> {
        let writer = Arc::new(Mutex::new(Writer::new(
            config.clone(),
            kind,
            retention,
            shared.clone(),
        )?));
        let fsync = config.fsync;
        let thread_error = |what: &str, e: std::io::Error| JournalError::Io {
            path: config.dir.display().to_string(),
            reason: format!("cannot start the {what}: {e}"),
        };
        let sink = match fsync {
            Fsync::Always => {
                let (tx, mut rx) = mpsc::channel::<Cmd>(8192);
                let writer = writer.clone();
                std::thread::Builder::new()
                    .name("callgate-journal".into())
                    .spawn(move || {
                        while let Some(first) = rx.blocking_recv() {
                            let mut batch = vec![first];
                            while batch.len() < 1024 {
                                match rx.try_recv() {
                                    Ok(c) => batch.push(c),
                                    Err(_) => break,
                                }
                            }
                            lock(&writer).run(batch);
                        }
                    })
                    .map_err(|e| thread_error("writer", e))?;
                Sink::GroupCommit(tx)
            }
            Fsync::Interval | Fsync::Never => {
                if fsync == Fsync::Interval {
                    // Holds the writer weakly: the timer ends with the journal.
                    let weak = Arc::downgrade(&writer);
                    std::thread::Builder::new()
                        .name("callgate-journal-sync".into())
                        .spawn(move || sync_every(&weak, SYNC_EVERY))
                        .map_err(|e| thread_error("sync timer", e))?;
                }
                let queue = Arc::new(Queue {
                    state: Mutex::new(Queued {
                        bytes: Vec::with_capacity(64 * 1024),
                        waiting: Vec::new(),
                        failed: None,
                        retained: 0,
                        stopped: false,
                    }),
                    ready: Condvar::new(),
                    room: Condvar::new(),
                });
                let (shared, w) = (queue.clone(), writer.clone());
                let thread = std::thread::Builder::new()
                    .name("callgate-journal".into())
                    .spawn(move || write_batches(&shared, &w))
                    .map_err(|e| thread_error("writer", e))?;
                Sink::Direct(Arc::new(BatchThread {
                    queue,
                    thread: Mutex::new(Some(thread)),
                    gathers: (0..GATHERS).map(|_| Gather::default()).collect(),
                    #[cfg(test)]
                    arrival_writes: Default::default(),
                }))
            }
        };
        Ok(Lane { writer, sink })
    }
}

impl Journal {
    /// The directory the journal is written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record. When `durable`, returns once it is written (and
    /// synced, under `fsync = "always"`): an arrival is written before its
    /// forward, so that after a crash (`kill -9`) the journal still shows
    /// the event was sent. Otherwise it may only be queued by then (under
    /// `interval` and `never`, for the journal thread, which writes a
    /// batch with one `write` [`BATCH_DELAY`] after its first record; a
    /// crash can lose the last few milliseconds of such records, which
    /// only makes callgate mark a repeat it need not have marked).
    pub async fn append(&self, record: &Record, durable: bool) -> Result<(), JournalError> {
        match record {
            Record::Received(r) => {
                self.write(&Line::Arrival(ArrivalLine::of(r)), durable)
                    .await
            }
            Record::Outcome(o) => self.write(&Line::Outcome(o), durable).await,
        }
    }

    /// Appends an arrival, durably (as [`Journal::append`]), written from
    /// the request's own borrowed fields: its body is Base64-encoded
    /// straight into the line.
    pub async fn append_arrival(&self, arrival: &ArrivalLine<'_>) -> Result<(), JournalError> {
        self.write(&Line::Arrival(*arrival), true).await
    }

    async fn write(&self, record: &Line<'_>, durable: bool) -> Result<(), JournalError> {
        let lane = self.lane();
        match &lane.sink {
            Sink::GroupCommit(tx) => {
                let mut line = Vec::with_capacity(4096);
                serialise(&mut line, record)?;
                let keep = matches!(record, Line::Outcome(_));
                if !durable {
                    return tx
                        .send(Cmd::Write {
                            line,
                            keep,
                            done: None,
                        })
                        .await
                        .map_err(|_| JournalError::Stopped);
                }
                let (done, wait) = oneshot::channel();
                tx.send(Cmd::Write {
                    line,
                    keep,
                    done: Some(done),
                })
                .await
                .map_err(|_| JournalError::Stopped)?;
                wait.await.map_err(|_| JournalError::Stopped)?
            }
            Sink::Direct(batch) => {
                let gather = &batch.gathers[thread_slot() % GATHERS];
                let lead = LINE.with_borrow_mut(|line| {
                    serialise(line, record)?;
                    if !durable {
                        return batch.queue.push(line).map(|()| None);
                    }
                    Ok(Some(gather.join(line)))
                })?;
                match lead {
                    None => Ok(()),
                    Some(Joined::Follow(done)) => done.await.map_err(|_| JournalError::Stopped)?,
                    Some(Joined::Lead) => {
                        let mut lead = Lead {
                            lane,
                            gather,
                            done: false,
                        };
                        // Lets the tasks this thread has ready run first:
                        // their arrivals join this `write`.
                        tokio::task::yield_now().await;
                        lead.write()
                    }
                }
            }
        }
    }

    /// Writes and syncs everything written or queued so far; for shutdown.
    pub async fn flush(&self) {
        for lane in self.lanes.iter() {
            lane.flush().await;
        }
    }

    /// Whether outcome records are waited for too (`fsync = "always"`).
    pub fn outcomes_durable(&self) -> bool {
        self.fsync == Fsync::Always
    }
}

impl Lane {
    /// Appends one whole line with the mutex held only to make room for
    /// it: the file is taken and the line's bytes counted under the lock,
    /// then written outside it (`O_APPEND`: concurrent appends land whole,
    /// one after the other). The line is marked for the sync timer once it
    /// is in the file.
    fn append_line(&self, line: &[u8]) -> Result<(), JournalError> {
        let current = lock(&self.writer).reserve(line.len())?;
        match (&current.file).write_all(line) {
            Ok(()) => {
                current.dirty.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // Part of the line may be in the file: the next line starts
                // on a new one. Concurrent appends that already followed it
                // are cut off with it (only a full disk writes part of a
                // line, and then they fail too).
                current.dirty.store(true, Ordering::Release);
                let mut w = lock(&self.writer);
                if w.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &current)) {
                    w.torn = true;
                }
                Err(JournalError::Io {
                    path: current.path.display().to_string(),
                    reason: crate::load::io_reason(&e),
                })
            }
        }
    }

    /// Writes and syncs everything written or queued so far.
    async fn flush(&self) {
        match &self.sink {
            Sink::GroupCommit(tx) => {
                let (done, wait) = oneshot::channel();
                if tx.send(Cmd::Flush(done)).await.is_ok() {
                    let _ = wait.await;
                }
            }
            Sink::Direct(batch) => {
                let (done, wait) = oneshot::channel();
                batch.queue.flush(done);
                let _ = wait.await;
            }
        }
    }
}

/// A record about to be written: an arrival borrowed from the request,
/// or an outcome.
enum Line<'a> {
    Arrival(ArrivalLine<'a>),
    Outcome(&'a OutcomeRecord),
}

/// One journal line (the record as JSON and a line break) in `line`.
fn serialise(line: &mut Vec<u8>, record: &Line<'_>) -> Result<(), JournalError> {
    line.clear();
    match record {
        Line::Arrival(a) => line::arrival(line, a).map_err(|e| JournalError::Io {
            path: "-".into(),
            reason: format!("cannot encode the body: {e}"),
        }),
        Line::Outcome(o) => {
            line::outcome(line, o);
            Ok(())
        }
    }
}

thread_local! {
    /// The record being serialised, reused by each thread's appends.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(4096));
}

/// The sync timer of `fsync = "interval"`: takes the dirty files' handles
/// under the lock and syncs them outside it, so requests keep writing.
fn sync_every(writer: &std::sync::Weak<Mutex<Writer>>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(writer) = writer.upgrade() else {
            break;
        };
        let (retired, current) = lock(&writer).take_dirty();
        let mut again = Vec::new();
        for (file, path) in retired {
            // A file rotated away that a request still holds may yet get
            // that request's line: synced now and once more after it let go.
            let in_flight = Arc::strong_count(&file) > 1;
            if let Err(e) = file.file.sync_data() {
                tracing::error!(file = %path.display(), error = %e, "journal sync failed");
            }
            if in_flight {
                again.push((file, path));
            }
        }
        if let Some((file, path)) = current
            && let Err(e) = file.file.sync_data()
        {
            tracing::error!(file = %path.display(), error = %e, "journal sync failed");
        }
        if !again.is_empty() {
            lock(&writer).retired.extend(again);
        }
        drop(writer);
    }
}

// === the queued records of `interval` and `never` ===

/// Records waiting for the journal thread, and what it reports back.
struct Queue {
    state: Mutex<Queued>,
    /// The batch went from empty to not empty, a flush was asked, or the
    /// journal was dropped.
    ready: Condvar,
    /// The journal thread took a batch: room for more.
    room: Condvar,
}

struct Queued {
    bytes: Vec<u8>,
    /// Flushes waiting for the next write and sync.
    waiting: Vec<oneshot::Sender<Result<(), JournalError>>>,
    /// Why the journal thread's last write failed; until a write works
    /// again, appends are queued only while the queue and what the thread
    /// holds stay under [`MAX_QUEUED`].
    failed: Option<JournalError>,
    /// Bytes the journal thread holds from a write that failed, to write
    /// again.
    retained: usize,
    stopped: bool,
}

/// Ends the journal thread, after writing and syncing what is queued,
/// when the last handle is dropped.
struct BatchThread {
    queue: Arc<Queue>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Arrivals gathering for one `write`, one set per thread slot.
    gathers: Box<[Gather]>,
    /// The `write`s of gathered arrivals so far.
    #[cfg(test)]
    arrival_writes: std::sync::atomic::AtomicUsize,
}

// === arrivals written together: one `write` per worker and turn ===

/// How many sets of gathering arrivals a journal keeps; a thread uses the
/// one of its slot ([`thread_slot`]). More threads than sets share one,
/// which is as correct, only less often alone in it.
const GATHERS: usize = 16;

/// The arrivals one thread's requests have serialised while the first of
/// them lets the thread's other ready tasks run: that first one (the
/// leader) then writes them all with one `write` and tells the others how
/// it went. A `write` costs the same few microseconds in the kernel
/// whether it carries one 2 KB line or several (docs/performance.md,
/// *Fourteenth round*), so arrivals that come together on a busy worker
/// share that cost, and each is still in the file before its forward.
#[derive(Default)]
struct Gather {
    state: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    bytes: Vec<u8>,
    /// The arrivals after the leader's, waiting for its `write`.
    waiting: Vec<oneshot::Sender<Result<(), JournalError>>>,
    /// A leader has the batch and will write it.
    led: bool,
    /// The last batch's buffer, kept for the next one.
    spare: Vec<u8>,
}

/// What an arrival that joined a batch does next.
enum Joined {
    /// Write the batch.
    Lead,
    /// Wait for the leader's word.
    Follow(oneshot::Receiver<Result<(), JournalError>>),
}

impl Gather {
    fn join(&self, line: &[u8]) -> Joined {
        let mut g = lock(&self.state);
        g.bytes.extend_from_slice(line);
        if g.led {
            let (done, wait) = oneshot::channel();
            g.waiting.push(done);
            Joined::Follow(wait)
        } else {
            g.led = true;
            Joined::Lead
        }
    }
}

/// The leader of a batch. Writes it when told, or when dropped before
/// (its request's task ended while it waited its turn): the arrivals that
/// joined it are never left waiting.
struct Lead<'a> {
    lane: &'a Lane,
    gather: &'a Gather,
    done: bool,
}

impl Lead<'_> {
    /// Writes the batch with one `write` (as [`Journal::append_line`]) and
    /// tells every arrival in it how it went.
    fn write(&mut self) -> Result<(), JournalError> {
        self.done = true;
        let (mut bytes, waiting) = {
            let mut g = lock(&self.gather.state);
            g.led = false;
            let spare = std::mem::take(&mut g.spare);
            (
                std::mem::replace(&mut g.bytes, spare),
                std::mem::take(&mut g.waiting),
            )
        };
        // One `write` to the page cache, on the request's own thread (a
        // hand-off to another thread measured 15-25 µs and two context
        // switches), and not under the writer's mutex (a thread preempted
        // on its way out of the `write` held it for milliseconds while the
        // other workers queued behind it, docs/performance.md, *Ninth
        // round*).
        let result = self.lane.append_line(&bytes);
        #[cfg(test)]
        if let Sink::Direct(b) = &self.lane.sink {
            b.arrival_writes.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, arrivals = waiting.len() + 1, "journal write failed; notifications are refused until it works");
        }
        for w in waiting {
            let _ = w.send(result.clone());
        }
        bytes.clear();
        let mut g = lock(&self.gather.state);
        if g.spare.capacity() < bytes.capacity() {
            g.spare = bytes;
        }
        result
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.write();
        }
    }
}

/// A small number for each thread, different for each of the first
/// [`GATHERS`] threads that append: picks the thread's [`Gather`].
fn thread_slot() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

impl Drop for BatchThread {
    fn drop(&mut self) {
        lock(&self.queue.state).stopped = true;
        self.queue.ready.notify_one();
        self.queue.room.notify_all();
        let thread = match self.thread.get_mut() {
            Ok(t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn wait_on<'a>(c: &Condvar, g: MutexGuard<'a, Queued>) -> MutexGuard<'a, Queued> {
    match c.wait(g) {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Queue {
    /// Queues one serialised record. While the journal thread's writes
    /// fail (a full disk) the record is still queued, to be written with
    /// the retry, unless that would hold more than [`MAX_QUEUED`]: an
    /// outcome dropped here would leave a delivery the shop took looking
    /// unfinished, for `journal redeliver --outcome unfinished` to send
    /// again.
    fn push(&self, line: &[u8]) -> Result<(), JournalError> {
        let mut q = lock(&self.state);
        while q.bytes.len() >= MAX_QUEUED && q.failed.is_none() && !q.stopped {
            q = wait_on(&self.room, q);
        }
        if let Some(e) = &q.failed
            && q.bytes.len() + q.retained + line.len() > MAX_QUEUED
        {
            return Err(e.clone());
        }
        if q.stopped {
            return Err(JournalError::Stopped);
        }
        let first = q.bytes.is_empty() && q.waiting.is_empty();
        q.bytes.extend_from_slice(line);
        drop(q);
        if first {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn flush(&self, done: oneshot::Sender<Result<(), JournalError>>) {
        let mut q = lock(&self.state);
        let first = q.bytes.is_empty() && q.waiting.is_empty();
        q.waiting.push(done);
        drop(q);
        if first {
            self.ready.notify_one();
        }
    }
}

/// The journal thread of `interval` and `never`: waits for a first record,
/// lets the batch gather for [`BATCH_DELAY`], writes it with one `write`;
/// keeps what it could not write and tries again every [`RETRY_EVERY`]. A
/// flush writes at once and syncs. After the last handle is dropped, writes
/// and syncs what is left, and ends.
fn write_batches(queue: &Queue, writer: &Mutex<Writer>) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut waiting = Vec::new();
    loop {
        let mut q = lock(&queue.state);
        while q.bytes.is_empty() && q.waiting.is_empty() && !q.stopped {
            if batch.is_empty() {
                q = wait_on(&queue.ready, q);
                continue;
            }
            // A batch that failed: try again after a while.
            let (g, timeout) = match queue.ready.wait_timeout(q, RETRY_EVERY) {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            q = g;
            if timeout.timed_out() {
                break;
            }
        }
        let stopped = q.stopped;
        let in_a_hurry = stopped || !q.waiting.is_empty();
        if !in_a_hurry && !q.bytes.is_empty() && batch.is_empty() {
            drop(q);
            std::thread::sleep(BATCH_DELAY);
            q = lock(&queue.state);
        }
        // A batch that failed stays first: records keep their order.
        batch.extend_from_slice(&q.bytes);
        q.bytes.clear();
        waiting.append(&mut q.waiting);
        drop(q);
        queue.room.notify_all();

        let mut result = Ok(());
        {
            let mut w = lock(writer);
            if !batch.is_empty() {
                match w.write_lines(&batch) {
                    Ok(()) => batch.clear(),
                    Err((written, e)) => {
                        // Keep the records not wholly written; a record cut
                        // in the middle is written again whole after a line
                        // break.
                        batch.drain(..written);
                        result = Err(e);
                    }
                }
            }
            if in_a_hurry {
                w.sync_now();
            }
        }
        let mut q = lock(&queue.state);
        q.retained = batch.len();
        match (&result, q.failed.is_some()) {
            (Err(e), false) => {
                tracing::error!(error = %e, "journal write failed; notifications are refused until it works");
                q.failed = Some(e.clone());
            }
            (Ok(()), true) if batch.is_empty() => {
                tracing::info!("journal writes work again");
                q.failed = None;
            }
            _ => {}
        }
        let done = stopped && q.bytes.is_empty() && q.waiting.is_empty();
        drop(q);
        queue.room.notify_all();
        for w in waiting.drain(..) {
            let _ = w.send(result.clone());
        }
        if done {
            return;
        }
    }
}

/// The writer or the queue, whatever a thread that panicked while holding
/// it left: whole records or a torn line, which is marked (`torn`) and
/// skipped by readers; the journal goes on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// === writer ===

/// How a journal file's name starts: the UTC time it was opened at.
const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// A journal file's name: `<UTC time>-<kind>-<pid>-<n>.jsonl`, `n` the
/// writer's count of its files, ten digits (all a `u32` takes), so that
/// the files one writer opens within one second sort in the order it
/// opened them (unpadded, its tenth file sorted before its ninth).
fn file_name(stamp: &str, kind: &str, pid: u32, seq: u32) -> String {
    format!("{stamp}-{kind}-{pid}-{seq:010}.jsonl")
}

struct Writer {
    config: JournalConfig,
    kind: String,
    retention: Retention,
    /// The file appends go to, shared with requests writing a line
    /// outside the lock.
    file: Option<Arc<OpenFile>>,
    path: PathBuf,
    /// Bytes written to the current file, or handed out for writing.
    size: u64,
    opened: Instant,
    /// The last write failed part-way: start the next batch on a new line.
    torn: bool,
    /// What the lanes of one journal share.
    shared: Shared,
    /// Files rotated away, possibly with unsynced writes, for the sync
    /// timer.
    retired: Vec<Synced>,
    /// `fsync = "always"`: outcome records a failed group commit could not
    /// write, written first with the next one.
    kept: Vec<u8>,
}

/// A file for the sync timer, with its path for the error message.
type Synced = (Arc<OpenFile>, PathBuf);

/// An open journal file and whether it has writes not yet synced.
struct OpenFile {
    file: File,
    path: PathBuf,
    dirty: AtomicBool,
}

/// What the lanes of one journal share: the number in their files' names
/// (so that each new name sorts after the others' and none is tried
/// twice), and turns at pruning the directory (so that two lanes do not
/// delete the same file, or write the prune mark, at once).
#[derive(Clone, Default)]
struct Shared {
    seq: Arc<std::sync::atomic::AtomicU32>,
    pruning: Arc<Mutex<()>>,
}

impl Writer {
    fn new(
        config: JournalConfig,
        kind: &str,
        retention: Retention,
        shared: Shared,
    ) -> Result<Writer, JournalError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| JournalError::Io {
            path: config.dir.display().to_string(),
            reason: crate::load::io_reason(&e),
        })?;
        let mut w = Writer {
            config,
            kind: kind.to_owned(),
            retention,
            file: None,
            path: PathBuf::new(),
            size: 0,
            opened: Instant::now(),
            torn: false,
            shared,
            retired: Vec::new(),
            kept: Vec::new(),
        };
        w.rotate()?;
        Ok(w)
    }

    fn io(&self, e: &std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.display().to_string(),
            reason: crate::load::io_reason(e),
        }
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        // The file rotated away is this writer's to prune from now on, as
        // any old file: its lock protects only the file written to. (A
        // request may still be writing its line to it.)
        if let Some(current) = &self.file {
            let _ = rustix::fs::flock(&current.file, rustix::fs::FlockOperation::Unlock);
        }
        match self.config.fsync {
            Fsync::Always => self.sync_now(),
            // Synced by the timer, outside the lock requests write under.
            // A request may still be writing its line to it: the timer
            // syncs it until no request holds it.
            Fsync::Interval => {
                if let Some(file) = self.file.take() {
                    self.retired.push((file, self.path.clone()));
                }
            }
            Fsync::Never => {}
        }
        // Only a file this journal creates (`O_EXCL`): the name is after
        // every name listed, but one of the same name may have appeared
        // since, created by a process of the same pid (another container's
        // pid 1 on the same directory), which the first record would join;
        // or a symlink. The next number is tried instead.
        let mut options = OpenOptions::new();
        options.create_new(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let stamp = self.next_stamp();
        let mut tries = 0u32;
        let (path, file) = loop {
            let seq = self
                .shared
                .seq
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            tries += 1;
            let name = file_name(&stamp, &self.kind, std::process::id(), seq);
            let path = self.config.dir.join(name);
            match options.open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 1000 => {}
                Err(e) => {
                    return Err(JournalError::Io {
                        path: path.display().to_string(),
                        reason: crate::load::io_reason(&e),
                    });
                }
            }
        };
        // Held for as long as this is the current file (released at the
        // next rotation, or by the kernel when it is closed, the process
        // ends however it ends): no other writer's pruning deletes it. A
        // file system without locks leaves it unprotected, as before locks
        // were taken.
        if let Err(e) =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            tracing::debug!(file = %path.display(), error = %e, "cannot lock the journal file");
        }
        self.size = 0;
        self.file = Some(Arc::new(OpenFile {
            file,
            path: path.clone(),
            dirty: AtomicBool::new(false),
        }));
        self.path = path;
        self.opened = Instant::now();
        self.prune();
        Ok(())
    }

    /// The time a new file's name starts with: now, unless a file in the
    /// directory is named as late (the wall clock stepped back since it
    /// was opened: an NTP step, a VM restored; or a process of a larger
    /// pid opened one within this second): then one second after the
    /// latest of them. A new file sorts after every file there, so readers
    /// read it last and pruning, which deletes the first names, keeps it
    /// longest. Names other than a journal file's are passed by.
    fn next_stamp(&self) -> String {
        let now = chrono::Utc::now().format(STAMP).to_string();
        // (name, one second after its time) of the latest name a new
        // name can follow: a name of the year 9999's last second (a stray
        // file, a clock once set that far) cannot be followed in four
        // digits (the year 10000 is written `+10000`, which sorts before
        // every name), so it is passed by as other names are.
        let latest = journal_files(&self.config.dir).iter().rev().find_map(|p| {
            let name = p.file_name()?.to_str()?;
            let at = chrono::NaiveDateTime::parse_from_str(name.get(..16)?, STAMP).ok()?;
            let next = at.checked_add_signed(chrono::Duration::seconds(1))?;
            (chrono::Datelike::year(&next) <= 9999).then(|| (name.to_owned(), next))
        });
        let Some((name, next)) = latest else {
            return now;
        };
        let first_try = file_name(
            &now,
            &self.kind,
            std::process::id(),
            self.shared.seq.load(Ordering::Relaxed).wrapping_add(1),
        );
        if first_try > name {
            return now;
        }
        next.format(STAMP).to_string()
    }

    /// Deletes the oldest files beyond `max_files` (never the current one,
    /// nor a file another writer still has open: see [`held_open`]).
    ///
    /// A file whose last write (its newest record) is younger than
    /// `replay.ttl` may hold deliveries the memory store is warmed from at
    /// start, so it is deleted only to keep the journal's bounds: its
    /// bytes within `max_files × max_file_bytes`, its files within
    /// [`files_kept_at_most`]. Otherwise a few files holding little (one
    /// opened at each start: frequent deploys, a crash loop) would push
    /// out deliveries the disk bound had room for. Files older than
    /// `replay.ttl` go first; young ones oldest first, and only while a
    /// bound is passed. Each young deletion is logged and counted, and the
    /// newest record deleted is marked in [`PRUNED_MARK`] for the next
    /// start. A file whose time cannot be read counts as young (it cannot
    /// be shown old).
    fn prune(&self) {
        let _turn = lock(&self.shared.pruning);
        let files = journal_files(&self.config.dir);
        if files.len() <= self.config.max_files {
            return;
        }
        let size = |f: &Path| std::fs::symlink_metadata(f).map_or(0, |m| m.len());
        let mut bytes: u64 = files.iter().map(|f| size(f)).sum();
        let mut count = files.len();
        let excess = files.len() - self.config.max_files;
        let now = std::time::SystemTime::now();
        // Oldest first: (file, last write, bytes).
        let mut young = Vec::new();
        for old in files.into_iter().filter(|f| *f != self.path).take(excess) {
            if held_open(&old) {
                tracing::debug!(file = %old.display(), "an old journal file is kept: a writer still has it open");
                continue;
            }
            let meta = std::fs::symlink_metadata(&old);
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let written = meta.and_then(|m| m.modified()).unwrap_or(now);
            if now.duration_since(written).unwrap_or_default() < self.retention.ttl {
                young.push((old, written, len));
            } else if self.delete(&old) {
                bytes = bytes.saturating_sub(len);
                count -= 1;
            }
        }
        let budget = self
            .config
            .max_file_bytes
            .saturating_mul(u64::try_from(self.config.max_files).unwrap_or(u64::MAX));
        let most = files_kept_at_most(self.config.max_files);
        let mut newest_young: Option<std::time::SystemTime> = None;
        for (old, written, len) in young {
            if bytes <= budget && count <= most {
                break;
            }
            if self.delete(&old) {
                bytes = bytes.saturating_sub(len);
                count -= 1;
                let age = now.duration_since(written).unwrap_or_default();
                self.pruned_young(&old, age);
                newest_young = Some(newest_young.map_or(written, |n| n.max(written)));
            }
        }
        if let Some(at) = newest_young {
            self.mark_pruned(at);
        }
    }

    /// Deletes an old journal file; says why not when it cannot.
    fn delete(&self, old: &Path) -> bool {
        match std::fs::remove_file(old) {
            Ok(()) => true,
            // Deleted meanwhile by another process's journal.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(file = %old.display(), error = %e, "cannot delete an old journal file");
                false
            }
        }
    }

    /// Says that `file`, deleted, held records younger than `replay.ttl`,
    /// what that costs with this replay store, and what to change.
    fn pruned_young(&self, file: &Path, age: Duration) {
        self.retention.pruned_within_ttl.inc();
        let age = crate::load::format_duration(Duration::from_secs(age.as_secs()));
        let ttl = crate::load::format_duration(self.retention.ttl);
        let (max_files, max_file_bytes) = (self.config.max_files, self.config.max_file_bytes);
        if self.retention.store_remembers {
            tracing::warn!(file = %file.display(), newest_record_age = %age, ttl = %ttl, store = "redis", max_files, max_file_bytes,
                "a journal file younger than replay.ttl was deleted to keep the journal within journal.max_files × journal.max_file_bytes (and 1024 files): the Redis replay store still knows its deliveries, but journal list and journal redeliver no longer show them; raise journal.max_files or journal.max_file_bytes so that the journal holds replay.ttl of traffic");
        } else {
            tracing::warn!(file = %file.display(), newest_record_age = %age, ttl = %ttl, store = "memory", max_files, max_file_bytes,
                "a journal file younger than replay.ttl was deleted to keep the journal within journal.max_files × journal.max_file_bytes (and 1024 files): after a restart the memory replay store no longer knows the deliveries it recorded, and a platform's retry of one of them is forwarded again; raise journal.max_files or journal.max_file_bytes so that the journal holds replay.ttl of traffic, or use replay.store = \"redis\"");
        }
    }

    /// Keeps in [`PRUNED_MARK`] the time of the newest record deleted
    /// while younger than `replay.ttl` (the later of `at` and what it held).
    /// Written aside and renamed over it: never half a time, never through
    /// a link. A failure is logged; the WARN of the deletion stands.
    fn mark_pruned(&self, at: std::time::SystemTime) {
        let unix = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mark = self.config.dir.join(PRUNED_MARK);
        let unix = read_pruned_mark(&self.config.dir).map_or(unix, |t| t.max(unix));
        let aside = self.config.dir.join(format!("{PRUNED_MARK}.new"));
        let written = (|| {
            // One left by a process killed mid-write; a link is removed,
            // not followed.
            match std::fs::remove_file(&aside) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut options = OpenOptions::new();
            options.create_new(true).write(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            options
                .open(&aside)?
                .write_all(format!("{unix}\n").as_bytes())?;
            std::fs::rename(&aside, &mark)
        })();
        if let Err(e) = written {
            tracing::warn!(file = %mark.display(), error = %e,
                "cannot record that journal files younger than replay.ttl were deleted: the next start cannot say so");
        }
    }

    /// The files rotated away, and the current one if it has unsynced
    /// writes (marked clean): the caller syncs them without holding the
    /// writer.
    fn take_dirty(&mut self) -> (Vec<Synced>, Option<Synced>) {
        let current = self
            .file
            .as_ref()
            .filter(|f| f.dirty.swap(false, Ordering::AcqRel))
            .map(|f| (f.clone(), self.path.clone()));
        (std::mem::take(&mut self.retired), current)
    }

    fn sync_now(&mut self) {
        for (retired, path) in std::mem::take(&mut self.retired) {
            if let Err(e) = retired.file.sync_data() {
                tracing::error!(file = %path.display(), error = %e, "journal sync failed");
            }
        }
        if let Some(current) = &self.file
            && current.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = current.file.sync_data()
        {
            tracing::error!(file = %self.path.display(), error = %e, "journal sync failed");
        }
    }

    /// Room for one line of `len` bytes, to be written by the caller
    /// outside the lock: starts a new file if the current one is full or
    /// old (as [`Writer::write_lines`]), ends a torn line, and counts the
    /// bytes. Returns the file.
    fn reserve(&mut self, len: usize) -> Result<Arc<OpenFile>, JournalError> {
        if self.size >= self.config.max_file_bytes
            || self.opened.elapsed() >= self.config.max_file_age
            || self.file.is_none()
        {
            self.rotate()?;
        }
        let Some(current) = self.file.clone() else {
            return Err(JournalError::Stopped);
        };
        if self.torn {
            (&current.file).write_all(b"\n").map_err(|e| self.io(&e))?;
            self.torn = false;
            self.size += 1;
        }
        self.size += len as u64;
        Ok(current)
    }

    /// One group commit (`fsync = "always"`): write the batch in one go,
    /// sync, then answer everyone waiting on it.
    ///
    /// Outcome records it cannot write (a full disk) are kept, up to
    /// [`MAX_QUEUED`] bytes, and written first with the next batch or
    /// flush: a lost outcome would leave a delivery the shop took looking
    /// unfinished. The requests waiting on them are still told it failed.
    fn run(&mut self, batch: Vec<Cmd>) {
        let mut buf = std::mem::take(&mut self.kept);
        // (end in `buf`, kept on failure) of each line after the kept ones.
        let mut ends = vec![(buf.len(), true)];
        let mut waiting = Vec::new();
        let mut flushes = Vec::new();
        for cmd in batch {
            match cmd {
                Cmd::Write { line, keep, done } => {
                    buf.extend_from_slice(&line);
                    ends.push((buf.len(), keep));
                    waiting.extend(done);
                }
                Cmd::Flush(done) => flushes.push(done),
            }
        }
        let result = if buf.is_empty() {
            Ok(())
        } else {
            self.write_lines(&buf).map_err(|(written, e)| {
                let mut start = 0;
                for &(end, keep) in &ends {
                    if end > written && keep && self.kept.len() + (end - start) <= MAX_QUEUED {
                        self.kept.extend_from_slice(&buf[start.max(written)..end]);
                    }
                    start = end;
                }
                e
            })
        };
        self.sync_now();
        if let Err(e) = &result {
            tracing::error!(error = %e, "journal write failed; notifications are refused until it works");
        }
        for done in waiting {
            let _ = done.send(result.clone());
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Writes whole lines, starting a new file whenever the current one
    /// has reached `max_file_bytes` (so a file ends at most one line past
    /// it) or `max_file_age`. On an error, also says how many bytes of
    /// `buf` are in the file as whole lines: the rest is to be written again.
    fn write_lines(&mut self, buf: &[u8]) -> Result<(), (usize, JournalError)> {
        let mut done = 0;
        while done < buf.len() {
            if self.size >= self.config.max_file_bytes
                || self.opened.elapsed() >= self.config.max_file_age
                || self.file.is_none()
            {
                self.rotate().map_err(|e| (done, e))?;
            }
            let rest = &buf[done..];
            // Lines up to the first one that reaches the size limit.
            let room = usize::try_from(self.config.max_file_bytes.saturating_sub(self.size))
                .unwrap_or(usize::MAX);
            let end = match rest.get(room.saturating_sub(1)..) {
                Some(tail) => tail
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |p| room.saturating_sub(1) + p + 1),
                None => rest.len(),
            };
            self.write(&rest[..end]).map_err(|e| (done, e))?;
            done += end;
        }
        Ok(())
    }

    /// Appends `buf` (whole lines) to the current file.
    fn write(&mut self, buf: &[u8]) -> Result<(), JournalError> {
        let Some(current) = self.file.clone() else {
            return Err(JournalError::Stopped);
        };
        let mut file = &current.file;
        let result = (|| {
            if self.torn {
                file.write_all(b"\n")?;
            }
            file.write_all(buf)
        })();
        current.dirty.store(true, Ordering::Release);
        match result {
            Ok(()) => {
                self.torn = false;
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                Err(self.io(&e))
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.sync_now();
    }
}

/// Files the journal keeps at most: beyond `max_files`, files younger than
/// `replay.ttl` are kept (within the byte bound) up to this many, so that a
/// crash loop opening a file at each start cannot fill the directory.
pub fn files_kept_at_most(max_files: usize) -> usize {
    max_files.max(MAX_FILES_WITHIN_TTL)
}

/// [`files_kept_at_most`] for the usual `max_files`: a start every three
/// minutes for two days.
pub const MAX_FILES_WITHIN_TTL: usize = 1024;

/// Whether a journal writer still has `file` open as its current file:
/// another one on the same directory (the running gateway's current file,
/// seen from a `journal redeliver` of its own, and the reverse). Each
/// writer holds a lock (`flock`) on its current file until it rotates
/// away from it; the kernel releases it when the file is closed, however
/// the process ends. Deleting such a file would lose every record written
/// to it afterwards (appended to a file no longer in the directory). A file
/// that cannot be opened or locked otherwise (a symlink, a file system
/// without locks) counts as not held, as before locks were taken.
fn held_open(file: &Path) -> bool {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a link, and never blocking on a FIFO.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options.custom_flags(i32::try_from(flags.bits()).unwrap_or(0));
    }
    let Ok(f) = options.open(file) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK
    )
}

// === reading ===

/// The journal files in `dir`, oldest first.
pub fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Reads every record in `dir`, oldest file first. Lines that do not parse
/// (a write cut short by a crash or a full disk) are skipped and counted; a
/// file deleted between the listing and its reading is passed by.
pub fn read_dir(dir: &Path, mut each: impl FnMut(Record)) -> Result<usize, JournalError> {
    let mut skipped = 0;
    for path in journal_files(dir) {
        let file = match File::open(&path) {
            Ok(file) => file,
            // Pruned since it was listed (a rotation in the gateway, or a
            // `journal redeliver` of its own): what it held is gone for
            // every reader alike, and the others are still to be read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(JournalError::Io {
                    path: path.display().to_string(),
                    reason: crate::load::io_reason(&e),
                });
            }
        };
        for line in BufReader::new(file).split(b'\n') {
            let Ok(line) = line else {
                skipped += 1;
                continue;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => each(r),
                Err(_) => skipped += 1,
            }
        }
    }
    Ok(skipped)
}

/// An event as the journal names it: by the replay namespace it was
/// delivered in (the route's name unless the route set
/// `replay_namespace`), so that a route renamed with its old namespace, or
/// two routes sharing one, see one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Event {
    pub namespace: String,
    /// Empty for records written before records carried the merchant.
    pub merchant: String,
    pub event_id: String,
}

impl Event {
    fn of(namespace: String, merchant: String, event_id: String) -> Event {
        Event {
            namespace,
            merchant,
            event_id,
        }
    }
}

/// What start-up needs from the journal, read in one pass without keeping
/// any body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WarmUp {
    /// Delivered events still within `ttl`, with the time left, for warming
    /// the memory store.
    pub delivered: Vec<(Event, Duration)>,
    /// Events whose forward started within `ttl` and that were never
    /// delivered: (event, forwards begun, time left). The memory store is
    /// warmed with these counts, so the next copy goes out with
    /// `X-Callgate-Attempt` one higher.
    pub attempted: Vec<(Event, u32, Duration)>,
    /// Arrivals with no recorded outcome, oldest first: (route, event id,
    /// attempt). A forward cut short by a stop or a crash: the shop may or
    /// may not have it.
    pub unfinished: Vec<(String, String, u32)>,
    /// The last [`RECENT_KEPT`] arrivals that have an outcome, oldest first,
    /// without their bodies and headers: the console's deliveries after a
    /// restart.
    pub recent: Vec<(Received, OutcomeRecord)>,
    /// Lines that did not parse (a write cut short by a crash or a full
    /// disk, damage) and were skipped: start-up says how many.
    pub skipped: usize,
    /// When files younger than `ttl` were pruned ([`PRUNED_MARK`]): the
    /// Unix time of the newest record deleted, if still within `ttl`.
    /// Deliveries journaled up to then may be missing from `delivered`.
    pub forgotten_through: Option<i64>,
}

/// The time [`PRUNED_MARK`] in `dir` holds, if it holds one. Only its
/// first bytes are read, never through a link and never blocking (it is
/// written aside and renamed: anything else there is not ours, and a FIFO
/// or a link to `/dev/zero` would hold up every start and rotation).
fn read_pruned_mark(dir: &Path) -> Option<i64> {
    use std::io::Read;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options.custom_flags(i32::try_from(flags.bits()).unwrap_or(0));
    }
    let file = options.open(dir.join(PRUNED_MARK)).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Arrivals [`warm_up`] keeps for the console.
pub const RECENT_KEPT: usize = 2048;

/// Reads the journal in `dir` once for start-up (see [`WarmUp`]).
pub fn warm_up(dir: &Path, ttl: Duration, now: i64) -> Result<WarmUp, JournalError> {
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut delivered: HashMap<Event, i64> = HashMap::new();
    // event → (forwards begun, latest arrival)
    let mut attempted: HashMap<Event, (u32, i64)> = HashMap::new();
    // rid → (arrival order, route, event, attempt), until its outcome is read.
    let mut open: HashMap<String, (usize, String, String, u32)> = HashMap::new();
    let mut order = 0usize;
    // rid → (arrival without body or headers, its outcome), newest last.
    let mut recent: HashMap<String, (Received, Option<OutcomeRecord>)> = HashMap::new();
    let mut recent_order: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    // Outcomes read before their arrival (a clock stepped back between
    // rotations sorts the newer file first).
    let mut early: HashMap<String, OutcomeRecord> = HashMap::new();
    let skipped = read_dir(dir, |r| match r {
        Record::Received(rec) => {
            if recent_order.len() >= RECENT_KEPT
                && let Some(old) = recent_order.pop_front()
            {
                recent.remove(&old);
            }
            let lite = Received {
                rid: rec.rid.clone(),
                unix: rec.unix,
                route: rec.route.clone(),
                namespace: rec.namespace.clone(),
                provider: rec.provider.clone(),
                merchant: rec.merchant.clone(),
                event_id: rec.event_id.clone(),
                client: rec.client.clone(),
                headers: Vec::new(),
                body: String::new(),
                attempt: rec.attempt,
                order: rec.order.clone(),
            };
            let ended = early.remove(&rec.rid);
            let finished = ended.is_some();
            recent_order.push_back(rec.rid.clone());
            recent.insert(rec.rid.clone(), (lite, ended));
            order += 1;
            if now.saturating_sub(rec.unix) < ttl_secs {
                let slot = attempted.entry(rec.event()).or_insert((0, rec.unix));
                // Each arrival is a forward begun; its attempt number covers
                // earlier ones in files rotated away.
                slot.0 = slot.0.saturating_add(1).max(rec.attempt);
                slot.1 = slot.1.max(rec.unix);
            }
            if !finished {
                open.insert(rec.rid, (order, rec.route, rec.event_id, rec.attempt));
            }
        }
        Record::Outcome(o) => {
            if open.remove(&o.rid).is_none() && !recent.contains_key(&o.rid) {
                early.insert(o.rid.clone(), o.clone());
            }
            if let Some(slot) = recent.get_mut(&o.rid) {
                slot.1 = Some(o.clone());
            }
            if o.delivered() && now.saturating_sub(o.unix) < ttl_secs {
                let at = delivered.entry(o.event()).or_insert(o.unix);
                *at = (*at).max(o.unix);
            }
        }
    })?;
    let left = |at: i64| {
        let left = ttl_secs.saturating_sub(now.saturating_sub(at));
        (left > 0).then(|| Duration::from_secs(left.unsigned_abs()))
    };
    let attempted = attempted
        .into_iter()
        .filter(|(key, _)| !delivered.contains_key(key))
        .filter_map(|(event, (n, at))| left(at).map(|l| (event, n, l)))
        .collect();
    let delivered = delivered
        .into_iter()
        .filter_map(|(event, at)| left(at).map(|l| (event, l)))
        .collect();
    let mut unfinished: Vec<(usize, String, String, u32)> = open.into_values().collect();
    unfinished.sort();
    let recent = recent_order
        .into_iter()
        .filter_map(|rid| match recent.remove(&rid) {
            Some((rec, Some(outcome))) => Some((rec, outcome)),
            _ => None,
        })
        .collect();
    let forgotten_through = read_pruned_mark(dir).filter(|&t| now.saturating_sub(t) < ttl_secs);
    Ok(WarmUp {
        skipped,
        forgotten_through,
        recent,
        delivered,
        attempted,
        unfinished: unfinished
            .into_iter()
            .map(|(_, route, id, attempt)| (route, id, attempt))
            .collect(),
    })
}

/// Delivered events still within `ttl` at `now`, with the time left, for
/// warming the memory store.
pub fn delivered_within(
    dir: &Path,
    ttl: Duration,
    now: i64,
) -> Result<Vec<(Event, Duration)>, JournalError> {
    Ok(warm_up(dir, ttl, now)?.delivered)
}

/// One arrival with how it ended, for `journal list` and `redeliver`.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub received: Received,
    /// The last outcome recorded for this arrival, if any.
    pub outcome: Option<OutcomeRecord>,
}

/// Every arrival in `dir`, oldest first, joined with its outcome.
pub fn arrivals(dir: &Path) -> Result<(Vec<Arrival>, Vec<OutcomeRecord>), JournalError> {
    let mut list: Vec<Arrival> = Vec::new();
    let mut by_rid: HashMap<String, usize> = HashMap::new();
    // Outcomes read before their arrival (a clock stepped back between
    // rotations sorts the newer file first).
    let mut early: HashMap<String, OutcomeRecord> = HashMap::new();
    let mut redeliveries = Vec::new();
    read_dir(dir, |r| match r {
        Record::Received(rec) => {
            by_rid.insert(rec.rid.clone(), list.len());
            let outcome = early.remove(&rec.rid);
            list.push(Arrival {
                received: rec,
                outcome,
            });
        }
        Record::Outcome(o) => {
            if let Some(&i) = by_rid.get(&o.rid) {
                list[i].outcome = Some(o.clone());
            } else {
                early.insert(o.rid.clone(), o.clone());
            }
            if o.redelivery {
                redeliveries.push(o);
            }
        }
    })?;
    // Each worker writes a file of its own, and files are read one after
    // the other: their arrivals interleave in time. A stable sort keeps
    // file-then-line order among arrivals of the same second.
    list.sort_by_key(|a| a.received.unix);
    Ok((list, redeliveries))
}

/// How an arrival ended, as `journal list` and `--outcome` name it: the
/// outcome label, or `unfinished` when none was recorded.
pub fn outcome_label(a: &Arrival) -> &str {
    a.outcome
        .as_ref()
        .map_or("unfinished", |o| o.outcome.as_str())
}

/// Which arrivals `journal list` and `journal redeliver` work on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub route: Option<String>,
    /// An outcome label, or `unfinished`.
    pub outcome: Option<String>,
    /// Unix seconds.
    pub since: Option<i64>,
}

impl Filter {
    pub fn matches(&self, a: &Arrival) -> bool {
        self.route.as_deref().is_none_or(|r| a.received.route == r)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| outcome_label(a) == o)
            && self.since.is_none_or(|t| a.received.unix >= t)
    }
}

/// Which events were ever delivered, by the gateway or a redelivery.
pub fn delivered_events(
    arrivals: &[Arrival],
    redeliveries: &[OutcomeRecord],
) -> std::collections::HashSet<Event> {
    arrivals
        .iter()
        .filter_map(|a| a.outcome.as_ref())
        .chain(redeliveries.iter())
        .filter(|o| o.delivered())
        .map(OutcomeRecord::event)
        .collect()
}

impl Received {
    /// The replay namespace the arrival was claimed in.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(&self.route)
    }

    /// The event this arrival is of.
    pub fn event(&self) -> Event {
        Event::of(
            self.namespace().to_owned(),
            self.merchant.clone(),
            self.event_id.clone(),
        )
    }
}

/// A fresh arrival id: 16 hex digits, unique among the ids any thread of
/// any callgate process draws (as unlikely to repeat as 64 random bits).
///
/// Each thread draws a random starting point once and then walks a
/// splitmix64 sequence: distinct states give distinct ids (the mixing is a
/// bijection), and two threads' walks only meet if their random starting
/// points lie within the number of ids drawn of each other. Drawing 64
/// random bits per request cost about 2,400 instructions.
pub fn new_rid() -> String {
    /// Odd, so that the walk visits every state before repeating.
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rid_seed());
    }
    let state = STATE.with(|s| {
        let v = s.get().wrapping_add(GAMMA);
        s.set(v);
        v
    });
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    hex::encode(z.to_be_bytes())
}

/// A thread's random starting point; should the system's generator fail,
/// the clock and a process-wide count still keep threads apart.
fn rid_seed() -> u64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_ok() {
        return u64::from_be_bytes(b);
    }
    static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = THREADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Parses `--since`: an RFC 3339 time, or a duration back from `now`
/// (`24h`, `30m`).
pub fn parse_since(s: &str, now: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    let d = crate::load::parse_duration(s)
        .map_err(|_| format!("`{s}` is neither an RFC 3339 time nor a duration like 24h"))?;
    Ok(now - i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_ids_do_not_repeat_within_or_across_threads() {
        let draw = || (0..50_000).map(|_| new_rid()).collect::<Vec<_>>();
        let other = std::thread::spawn(draw);
        let mut ids = draw();
        ids.extend(other.join().unwrap());
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    fn config(dir: &Path, fsync: Fsync) -> JournalConfig {
        JournalConfig {
            dir: dir.to_path_buf(),
            fsync,
            max_file_bytes: 1 << 20,
            max_files: 4,
            max_file_age: Duration::from_secs(3600),
        }
    }

    /// A `replay.ttl` of zero: no file is younger, so tests that do not
    /// look at pruning stay silent.
    fn retention() -> Retention {
        Retention {
            ttl: Duration::ZERO,
            store_remembers: false,
            pruned_within_ttl: prometheus::IntCounter::new("t", "t").unwrap(),
        }
    }

    /// A `replay.ttl` of two days, counting young deletions in `counter`.
    fn two_days(store_remembers: bool, counter: &prometheus::IntCounter) -> Retention {
        Retention {
            ttl: TWO_DAYS,
            store_remembers,
            pruned_within_ttl: counter.clone(),
        }
    }

    /// The `rid` of every arrival in `dir`, in the order the journal reads
    /// them.
    fn arrival_rids(dir: &Path) -> Vec<String> {
        let mut read = Vec::new();
        read_dir(dir, |r| {
            if let Record::Received(r) = r {
                read.push(r.rid)
            }
        })
        .unwrap();
        read
    }

    fn received(rid: &str, event: &str) -> Record {
        Record::Received(Received {
            rid: rid.into(),
            unix: 1000,
            route: "r".into(),
            namespace: None,
            provider: "alipay".into(),
            merchant: "m".into(),
            event_id: event.into(),
            client: "127.0.0.1".into(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: "YT0x".into(),
            attempt: 1,
            order: None,
        })
    }

    fn outcome(rid: &str, event: &str, outcome: &str, unix: i64) -> Record {
        Record::Outcome(OutcomeRecord {
            rid: rid.into(),
            unix,
            route: "r".into(),
            namespace: None,
            merchant: "m".into(),
            event_id: event.into(),
            outcome: outcome.into(),
            status: 200,
            redelivery: false,
            shop_status: None,
            shop_ms: None,
        })
    }

    #[tokio::test]
    async fn records_round_trip_and_join() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&config(dir.path(), Fsync::Always), "gateway", retention()).unwrap();
        j.append(&received("1", "e1"), true).await.unwrap();
        j.append(&outcome("1", "e1", "upstream_error", 1001), true)
            .await
            .unwrap();
        j.append(&received("2", "e1"), true).await.unwrap();
        j.append(&outcome("2", "e1", "forwarded", 1002), true)
            .await
            .unwrap();
        j.append(&received("3", "e2"), true).await.unwrap();
        let (list, redeliveries) = arrivals(dir.path()).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].outcome.as_ref().unwrap().outcome, "upstream_error");
        assert_eq!(list[1].outcome.as_ref().unwrap().outcome, "forwarded");
        assert!(list[2].outcome.is_none());
        let delivered = delivered_events(&list, &redeliveries);
        let event = |id: &str| Event::of("r".into(), "m".into(), id.into());
        assert!(delivered.contains(&event("e1")));
        assert!(!delivered.contains(&event("e2")));
    }

    #[tokio::test]
    async fn warm_up_keeps_only_delivered_within_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&config(dir.path(), Fsync::Always), "gateway", retention()).unwrap();
        j.append(&outcome("1", "old", "forwarded", 100), true)
            .await
            .unwrap();
        j.append(&outcome("2", "new", "forwarded", 950), true)
            .await
            .unwrap();
        j.append(&outcome("3", "failed", "upstream_error", 990), true)
            .await
            .unwrap();
        let got = delivered_within(dir.path(), Duration::from_secs(100), 1000).unwrap();
        assert_eq!(
            got,
            vec![(
                Event::of("r".into(), "m".into(), "new".into()),
                Duration::from_secs(50)
            )]
        );
    }

    #[test]
    fn records_written_before_the_merchant_field_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20260101T000000Z-gateway-1-1.jsonl"),
            b"{\"type\":\"outcome\",\"rid\":\"1\",\"unix\":990,\"route\":\"r\",\"event_id\":\"e\",\"outcome\":\"forwarded\",\"status\":200}\n",
        )
        .unwrap();
        let got = delivered_within(dir.path(), Duration::from_secs(100), 1000).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.merchant.as_str(), got[0].0.event_id.as_str()),
            ("", "e")
        );
    }

    /// An event is named by the replay namespace it was delivered in: a
    /// record without `namespace` (every record of a route without
    /// `replay_namespace`, and every record written before the key
    /// existed) is in its route's name; a renamed route's record that
    /// carries its old name as namespace is the same event.
    #[test]
    fn records_name_events_by_their_replay_namespace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20260101T000000Z-gateway-1-1.jsonl"),
            concat!(
                "{\"type\":\"outcome\",\"rid\":\"1\",\"unix\":990,\"route\":\"a\",\"merchant\":\"m\",\"event_id\":\"e\",\"outcome\":\"forwarded\",\"status\":200}\n",
                "{\"type\":\"outcome\",\"rid\":\"2\",\"unix\":995,\"route\":\"b\",\"namespace\":\"a\",\"merchant\":\"m\",\"event_id\":\"e\",\"outcome\":\"forwarded\",\"status\":200}\n",
                "{\"type\":\"outcome\",\"rid\":\"3\",\"unix\":995,\"route\":\"b\",\"namespace\":\"a\",\"merchant\":\"m\",\"event_id\":\"f\",\"outcome\":\"forwarded\",\"status\":200}\n",
            ),
        )
        .unwrap();
        let mut got = delivered_within(dir.path(), Duration::from_secs(100), 1000).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    Event::of("a".into(), "m".into(), "e".into()),
                    Duration::from_secs(95)
                ),
                (
                    Event::of("a".into(), "m".into(), "f".into()),
                    Duration::from_secs(95)
                ),
            ]
        );
    }

    #[tokio::test]
    async fn attempts_count_forwards_of_events_never_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&config(dir.path(), Fsync::Always), "gateway", retention()).unwrap();
        // e1: failed once, then cut short by a crash (no outcome).
        j.append(&received("1", "e1"), true).await.unwrap();
        j.append(&outcome("1", "e1", "upstream_error", 1001), true)
            .await
            .unwrap();
        j.append(&received("2", "e1"), true).await.unwrap();
        // e2: delivered: nothing to count.
        j.append(&received("3", "e2"), true).await.unwrap();
        j.append(&outcome("3", "e2", "forwarded", 1002), true)
            .await
            .unwrap();
        // e3: its one arrival says it was already the third attempt (the
        // earlier ones are in files rotated away).
        let mut third = received("4", "e3");
        if let Record::Received(r) = &mut third {
            r.attempt = 3;
        }
        j.append(&third, true).await.unwrap();
        let warm = warm_up(dir.path(), Duration::from_secs(100), 1010).unwrap();
        let mut got = warm.attempted.clone();
        got.sort();
        let counts: Vec<(&str, u32)> = got
            .iter()
            .map(|(e, n, _)| (e.event_id.as_str(), *n))
            .collect();
        assert_eq!(counts, vec![("e1", 2), ("e3", 3)]);
        let unfinished: Vec<&str> = warm.unfinished.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(unfinished, vec!["e1", "e3"]);
    }

    /// A file pruned between the listing of the directory and its reading
    /// (a rotation of the running gateway while `journal list` or
    /// `/api/redeliver` reads) is passed by: the files after it are still
    /// read. Before, the whole read failed with `No such file`.
    #[test]
    fn a_file_deleted_while_the_journal_is_read_is_passed_by() {
        let dir = tempfile::tempdir().unwrap();
        let line = |r: &Record| format!("{}\n", serde_json::to_string(r).unwrap());
        let name = |n: u32| {
            dir.path()
                .join(format!("20260101T00000{n}Z-gateway-7-1.jsonl"))
        };
        for n in 1..=3 {
            std::fs::write(name(n), line(&received(&n.to_string(), "e"))).unwrap();
        }
        let mut rids = Vec::new();
        let skipped = read_dir(dir.path(), |r| {
            if let Record::Received(r) = r {
                if r.rid == "1" {
                    // Listed already; deleted before it is opened.
                    std::fs::remove_file(name(2)).unwrap();
                }
                rids.push(r.rid);
            }
        })
        .unwrap();
        assert_eq!(rids, ["1", "3"]);
        assert_eq!(skipped, 0);
    }

    #[tokio::test]
    async fn torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20260101T000000Z-gateway-1-1.jsonl"),
            b"{\"type\":\"outcome\",\"rid\":\"1\",\"unix\":1,\"route\":\"r\",\"event_id\":\"e\",\"outcome\":\"forwarded\",\"status\":200}\n{\"type\":\"rece",
        )
        .unwrap();
        let mut n = 0;
        let skipped = read_dir(dir.path(), |_| n += 1).unwrap();
        assert_eq!((n, skipped), (1, 1));
    }

    #[tokio::test]
    async fn an_arrival_body_is_encoded_into_its_line() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        for fsync in [Fsync::Always, Fsync::Interval] {
            let j = Journal::open(&config(dir.path(), fsync), "gateway", retention()).unwrap();
            let Record::Received(mut r) = received("1", "e1") else {
                unreachable!()
            };
            r.body = String::new();
            // Values that spell the key are escaped, so never taken for it.
            r.headers.push(("x-note".into(), "\"body\":\"\"".into()));
            r.order = Some("\"body\":\"\"".into());
            let body: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
            let mut line = ArrivalLine::of(&r);
            line.body = Body::Raw(&body);
            j.append_arrival(&line).await.unwrap();
            j.flush().await;
        }
        let mut got = Vec::new();
        read_dir(dir.path(), |rec| {
            if let Record::Received(r) = rec {
                got.push(r)
            }
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        let want = base64::engine::general_purpose::STANDARD
            .encode((0..=255u8).cycle().take(1001).collect::<Vec<u8>>());
        for r in got {
            assert_eq!(r.body, want);
            assert_eq!(r.order.as_deref(), Some("\"body\":\"\""));
            assert_eq!(r.headers.last().unwrap().1, "\"body\":\"\"");
        }
    }

    #[tokio::test]
    async fn queued_records_are_written_in_order_behind_direct_ones() {
        let dir = tempfile::tempdir().unwrap();
        let j =
            Journal::open(&config(dir.path(), Fsync::Interval), "gateway", retention()).unwrap();
        for i in 0..50 {
            let (rid, event) = (i.to_string(), format!("e{i}"));
            j.append(&received(&rid, &event), true).await.unwrap();
            j.append(&outcome(&rid, &event, "forwarded", 1000 + i), false)
                .await
                .unwrap();
        }
        j.flush().await;
        let mut rids = Vec::new();
        read_dir(dir.path(), |r| {
            rids.push(match r {
                Record::Received(r) => format!("r{}", r.rid),
                Record::Outcome(o) => format!("o{}", o.rid),
            })
        })
        .unwrap();
        assert_eq!(rids.len(), 100, "{rids:?}");
        for i in 0..50 {
            let (r, o) = (
                rids.iter().position(|x| *x == format!("r{i}")).unwrap(),
                rids.iter().position(|x| *x == format!("o{i}")).unwrap(),
            );
            assert!(r < o, "outcome {i} before its arrival: {rids:?}");
        }
    }

    fn arrival_writes(j: &Journal) -> usize {
        match &j.lanes[0].sink {
            Sink::Direct(b) => b.arrival_writes.load(Ordering::Relaxed),
            Sink::GroupCommit(_) => unreachable!(),
        }
    }

    /// Arrivals whose requests are ready at the same time on one worker
    /// thread go to the file in one `write`, each written before its
    /// append returns.
    #[tokio::test]
    async fn arrivals_ready_together_on_one_thread_share_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let j =
            Journal::open(&config(dir.path(), Fsync::Interval), "gateway", retention()).unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move {
                    j.append(&received(&i.to_string(), &format!("e{i}")), true)
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(arrival_writes(&j), 1);
        let mut rids = arrival_rids(dir.path());
        rids.sort_by_key(|r| r.parse::<u32>().unwrap());
        assert_eq!(rids, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        // One after the other: a write each.
        for i in 10..13 {
            j.append(&received(&i.to_string(), "e"), true)
                .await
                .unwrap();
        }
        assert_eq!(arrival_writes(&j), 4);
    }

    /// A gateway's workers each write a file of their own (two threads
    /// appending to one file contend in the kernel), and the files read
    /// back as one journal: every arrival with its outcome.
    #[test]
    fn each_worker_thread_writes_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open_lanes(
            &config(dir.path(), Fsync::Interval),
            "gateway",
            retention(),
            2,
        )
        .unwrap();
        assert_eq!(journal_files(dir.path()).len(), 2);
        let workers: Vec<_> = (0..2)
            .map(|lane| {
                let j = j.clone();
                std::thread::spawn(move || {
                    use_lane(lane);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for i in 0..5 {
                            let rid = format!("{lane}-{i}");
                            j.append(&received(&rid, &rid), true).await.unwrap();
                            j.append(&outcome(&rid, &rid, "forwarded", 1000), false)
                                .await
                                .unwrap();
                        }
                    });
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(j.flush());
        let files = journal_files(dir.path());
        assert_eq!(files.len(), 2);
        let mut lanes_seen = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            let rids: Vec<String> = text
                .lines()
                .map(|l| match serde_json::from_str::<Record>(l).unwrap() {
                    Record::Received(r) => r.rid,
                    Record::Outcome(o) => o.rid,
                })
                .collect();
            assert_eq!(rids.len(), 10, "{text}");
            let lane = rids[0].split('-').next().unwrap().to_owned();
            assert!(
                rids.iter().all(|r| r.starts_with(&format!("{lane}-"))),
                "{rids:?}"
            );
            lanes_seen.push(lane);
        }
        lanes_seen.sort();
        assert_eq!(lanes_seen, ["0", "1"]);
        let (all, _) = arrivals(dir.path()).unwrap();
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|a| a.outcome.is_some()));
    }

    /// The request whose arrival leads a batch ends before the batch's turn
    /// (its task dropped): the arrivals that joined it are written all the
    /// same, and their appends told so, never left waiting.
    #[tokio::test]
    async fn a_leader_dropped_before_its_turn_still_writes_the_arrivals_that_joined_it() {
        use std::future::Future as _;
        use std::task::{Context, Poll, Waker};
        let dir = tempfile::tempdir().unwrap();
        let j =
            Journal::open(&config(dir.path(), Fsync::Interval), "gateway", retention()).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let (first, second) = (received("1", "e1"), received("2", "e2"));
        let mut lead = Box::pin(j.append(&first, true));
        assert!(lead.as_mut().poll(&mut cx).is_pending());
        let mut follow = Box::pin(j.append(&second, true));
        assert!(follow.as_mut().poll(&mut cx).is_pending());
        assert!(arrival_rids(dir.path()).is_empty());
        drop(lead);
        assert!(matches!(follow.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(arrival_rids(dir.path()), ["1", "2"]);
        assert_eq!(arrival_writes(&j), 1);
    }

    /// Files of the names a new journal would take (before its names were
    /// chosen after every name in the directory) are there: a process of
    /// the same pid (a container's pid 1 restarted) that opened one within
    /// the same second and was killed mid-line, or a symlink planted in the
    /// directory. A journal only writes to files it created: its first
    /// record neither joins the torn line nor goes through the link.
    #[tokio::test]
    async fn a_journal_writes_only_to_files_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let now = chrono::Utc::now();
        // Every second the test could open its file in: a bounded range,
        // wide enough for a slow machine.
        for s in 0..30 {
            let stamp = (now + chrono::Duration::seconds(s)).format("%Y%m%dT%H%M%SZ");
            let name = |seq: u32| file_name(&stamp.to_string(), "gateway", std::process::id(), seq);
            std::fs::write(dir.path().join(name(1)), br#"{"type":"received","rid":"to"#).unwrap();
            std::os::unix::fs::symlink(outside.path(), dir.path().join(name(2))).unwrap();
        }
        let mut c = config(dir.path(), Fsync::Interval);
        c.max_files = 1000;
        let j = Journal::open(&c, "gateway", retention()).unwrap();
        j.append(&received("1", "e1"), true).await.unwrap();
        j.flush().await;
        let mut rids = Vec::new();
        let skipped = read_dir(dir.path(), |r| {
            if let Record::Received(r) = r {
                rids.push(r.rid)
            }
        })
        .unwrap();
        assert_eq!(rids, ["1"]);
        assert_eq!(skipped, 30, "the torn lines are skipped, and only they");
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"");
    }

    /// File names sort by the wall clock at their opening: a clock stepped
    /// back between two rotations puts the newer file first, so an
    /// outcome can be read before its arrival. It still ends that arrival:
    /// not listed `unfinished`, and the event counted delivered (which
    /// keeps `journal redeliver` from sending it again).
    #[test]
    fn an_outcome_read_before_its_arrival_still_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let line = |r: &Record| format!("{}\n", serde_json::to_string(r).unwrap());
        std::fs::write(
            dir.path().join("20260101T000000Z-gateway-7-2.jsonl"),
            line(&outcome("1", "e1", "forwarded", 1001)),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20260101T000005Z-gateway-7-1.jsonl"),
            line(&received("1", "e1")),
        )
        .unwrap();
        let (list, redeliveries) = arrivals(dir.path()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(outcome_label(&list[0]), "forwarded");
        assert!(delivered_events(&list, &redeliveries).contains(&list[0].received.event()));
        let warm = warm_up(dir.path(), Duration::from_secs(3600), 1002).unwrap();
        assert_eq!(warm.unfinished, []);
        assert_eq!(warm.delivered.len(), 1);
        assert_eq!(warm.recent.len(), 1, "the console's deliveries");
    }

    /// With `listen.workers` above one, each worker writes a file of its
    /// own, so arrivals interleave in time across files. `journal list`
    /// and `redeliver` still go oldest first: by time, and within one
    /// second in file, then line, order.
    #[test]
    fn arrivals_from_files_written_side_by_side_are_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let at = |rid: &str, unix: i64| {
            let Record::Received(mut r) = received(rid, rid) else {
                unreachable!()
            };
            r.unix = unix;
            format!("{}\n", serde_json::to_string(&Record::Received(r)).unwrap())
        };
        let file = |pid: u32, lines: &[String]| {
            std::fs::write(
                dir.path()
                    .join(file_name("20260101T000000Z", "gateway", pid, 1)),
                lines.concat(),
            )
            .unwrap()
        };
        file(7, &[at("a1", 100), at("a2", 300), at("a3", 500)]);
        file(8, &[at("b1", 200), at("b2", 400), at("b3", 500)]);
        let (list, _) = arrivals(dir.path()).unwrap();
        let rids: Vec<&str> = list.iter().map(|a| a.received.rid.as_str()).collect();
        assert_eq!(rids, ["a1", "b1", "a2", "b2", "a3", "b3"]);
    }

    /// A record the journal thread could not write is kept and written
    /// once it can, and so is one queued while it fails: an outcome lost
    /// there would leave a delivery the shop took looking unfinished.
    #[tokio::test]
    async fn queued_records_that_cannot_be_written_are_kept_until_they_can() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        let mut c = config(&jdir, Fsync::Interval);
        // Every write opens a new file: a missing directory fails it.
        c.max_file_bytes = 1;
        c.max_files = 1000;
        let j = Journal::open(&c, "gateway", retention()).unwrap();
        j.append(&received("1", "e1"), true).await.unwrap();
        std::fs::remove_dir_all(&jdir).unwrap();
        j.append(&outcome("1", "e1", "forwarded", 1001), false)
            .await
            .unwrap();
        j.flush().await; // the journal thread tried, and failed
        j.append(&outcome("2", "e2", "forwarded", 1002), false)
            .await
            .unwrap();
        std::fs::create_dir_all(&jdir).unwrap();
        j.flush().await; // the kept records are written now
        j.append(&outcome("3", "e3", "forwarded", 1003), false)
            .await
            .unwrap();
        j.flush().await;
        let mut rids = Vec::new();
        read_dir(&jdir, |r| {
            if let Record::Outcome(o) = r {
                rids.push(o.rid)
            }
        })
        .unwrap();
        assert_eq!(rids, ["1", "2", "3"]);
    }

    /// While writes fail, what is kept for the retry is bounded: once it
    /// holds [`MAX_QUEUED`] bytes, appends are refused with the write's
    /// error rather than waiting for a disk that may not come back.
    #[tokio::test]
    async fn records_kept_while_writes_fail_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        let mut c = config(&jdir, Fsync::Interval);
        c.max_file_bytes = 1;
        let j = Journal::open(&c, "gateway", retention()).unwrap();
        std::fs::remove_dir_all(&jdir).unwrap();
        j.append(&outcome("0", "e0", "forwarded", 1000), false)
            .await
            .unwrap();
        j.flush().await; // the journal thread tried, and failed
        let mut accepted = 0usize;
        let refused = loop {
            match j
                .append(&outcome("1", "e1", "forwarded", 1001), false)
                .await
            {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted <= MAX_QUEUED, "never refused");
        };
        assert!(matches!(refused, JournalError::Io { .. }), "{refused:?}");
        assert!(accepted > 1000, "refused too early: {accepted}");
    }

    /// Arrivals are written outside the writer's lock: lines from threads
    /// appending at once, across rotations, each land whole and once.
    #[test]
    fn concurrent_arrivals_land_whole_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Fsync::Interval);
        c.max_file_bytes = 4096;
        c.max_files = 10_000;
        let j = Journal::open(&c, "gateway", retention()).unwrap();
        let (threads, each) = (4, 300);
        std::thread::scope(|s| {
            for t in 0..threads {
                let j = j.clone();
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for i in 0..each {
                        let rid = format!("{t}-{i}");
                        rt.block_on(j.append(&received(&rid, &rid), true)).unwrap();
                    }
                });
            }
        });
        let mut rids = Vec::new();
        let skipped = read_dir(dir.path(), |r| {
            if let Record::Received(r) = r {
                rids.push(r.rid)
            }
        })
        .unwrap();
        assert_eq!(skipped, 0, "a line was cut or interleaved");
        let distinct: std::collections::HashSet<_> = rids.iter().collect();
        assert_eq!(rids.len(), threads * each);
        assert_eq!(distinct.len(), threads * each);
        assert!(journal_files(dir.path()).len() > 10, "no rotation");
    }

    /// A writer that rotates ten times or more within one second (small
    /// `max_file_bytes`, a burst) names its files in the order it opened
    /// them: before, the counter was not padded and `-10` sorted before
    /// `-9`, so readers read the newer file first and pruning deleted it
    /// before the older one.
    #[tokio::test]
    async fn files_opened_within_one_second_sort_in_the_order_they_were_opened() {
        let stamp = "20260101T000000Z";
        let names: Vec<String> = (1..=12)
            .map(|n| file_name(stamp, "gateway", 7, n))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        // And as written: each record in a file of its own, read in order.
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Fsync::Never);
        c.max_file_bytes = 1;
        c.max_files = 100;
        let j = Journal::open(&c, "gateway", retention()).unwrap();
        let written: Vec<String> = (1..=12).map(|n| n.to_string()).collect();
        for rid in &written {
            j.append(&received(rid, "e"), true).await.unwrap();
        }
        let read = arrival_rids(dir.path());
        assert_eq!(read, written);
    }

    /// The wall clock stepped back (an NTP step, a VM restored from a
    /// snapshot) below the time files in the directory were named with.
    /// A new file is still named after every file there: read last, and
    /// pruned last. Before, it was named with the earlier time, sorted
    /// first, and the next rotation's pruning deleted it — the newest
    /// deliveries, forgotten at the next start, instead of the oldest.
    #[tokio::test]
    async fn a_clock_stepped_back_still_names_new_files_after_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let line = |r: &Record| format!("{}\n", serde_json::to_string(r).unwrap());
        // Opened an hour "later", before the clock stepped back.
        let ahead = chrono::Utc::now() + chrono::Duration::hours(1);
        for (s, rid) in [(0, "f1"), (1, "f2")] {
            let stamp = (ahead + chrono::Duration::seconds(s)).format(STAMP);
            let path = dir
                .path()
                .join(file_name(&stamp.to_string(), "gateway", 1, 1));
            std::fs::write(path, line(&received(rid, "e"))).unwrap();
        }
        let mut c = config(dir.path(), Fsync::Never);
        c.max_files = 2;
        // Two starts, one record each: each opens a file and prunes.
        for rid in ["1", "2"] {
            let j = Journal::open(&c, "gateway", retention()).unwrap();
            j.append(&received(rid, "e"), true).await.unwrap();
            j.flush().await;
        }
        let read = arrival_rids(dir.path());
        assert_eq!(read, ["1", "2"], "the two newest files are kept, in order");
    }

    /// A file named in the last second four digits of a year hold (a
    /// stray copy, a clock once set that far) cannot be followed: new files
    /// are named by the clock, and still sort after the files before them.
    /// Before, they were named one second later, in the year `+10000`,
    /// which sorts before every name: read first, and pruned first (the
    /// newest deliveries deleted while older files stayed).
    #[tokio::test]
    async fn a_file_named_in_the_year_9999_does_not_put_new_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let line = |r: &Record| format!("{}\n", serde_json::to_string(r).unwrap());
        let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).format(STAMP);
        for (stamp, rid) in [
            (hour_ago.to_string(), "old"),
            ("99991231T235959Z".to_owned(), "stray"),
        ] {
            let path = dir.path().join(file_name(&stamp, "gateway", 1, 1));
            std::fs::write(path, line(&received(rid, "e"))).unwrap();
        }
        let c = config(dir.path(), Fsync::Never);
        for rid in ["1", "2"] {
            let j = Journal::open(&c, "gateway", retention()).unwrap();
            j.append(&received(rid, "e"), true).await.unwrap();
            j.flush().await;
        }
        let read = arrival_rids(dir.path());
        assert_eq!(read, ["old", "1", "2", "stray"]);
    }

    /// A damaged `.pruned-within-ttl` or journal line holding a time as
    /// far back as an `i64` goes is read as long past, and a mark that is
    /// a link (not one this journal wrote: it renames a file over it) is
    /// passed by. Before, `now - t` overflowed: a panic at start (debug
    /// builds), or in release a wrapped time warned as "forgotten" and a
    /// record taken as within `replay.ttl`; and the mark was read through
    /// the link, to its end whatever its size.
    #[test]
    fn damaged_times_in_the_mark_and_the_journal_are_read_as_long_past() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::clock::unix_now();
        std::fs::write(dir.path().join(PRUNED_MARK), format!("{}\n", i64::MIN)).unwrap();
        let mut text = String::new();
        for (rid, event, unix) in [("r1", "e1", i64::MIN), ("r2", "e2", now)] {
            text += &serde_json::to_string(&outcome(rid, event, "forwarded", unix)).unwrap();
            text.push('\n');
        }
        std::fs::write(
            dir.path()
                .join(file_name("20260101T000000Z", "gateway", 1, 1)),
            text,
        )
        .unwrap();
        let warm = warm_up(dir.path(), Duration::from_secs(3600), now).unwrap();
        assert_eq!(warm.forgotten_through, None);
        let delivered: Vec<_> = warm.delivered.iter().map(|(e, _)| &e.event_id).collect();
        assert_eq!(delivered, ["e2"]);
        // A link to a time within ttl: not ours, passed by.
        std::fs::remove_file(dir.path().join(PRUNED_MARK)).unwrap();
        let elsewhere = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(elsewhere.path(), format!("{now}\n")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(PRUNED_MARK)).unwrap();
        let warm = warm_up(dir.path(), Duration::from_secs(3600), now).unwrap();
        assert_eq!(warm.forgotten_through, None);
    }

    /// With Redis and no admin API, `callgate journal redeliver` runs on
    /// its own and writes to the gateway's journal directory: each run
    /// opens a file and prunes. The running gateway's current file is
    /// never deleted under it (nor the reverse): before, once enough runs
    /// had opened files (a script redelivering event by event), one pruned
    /// it, and every record the gateway wrote afterwards went to a file no
    /// longer in the directory, lost for the next start, `journal list`
    /// and `redeliver`.
    #[tokio::test]
    async fn pruning_never_deletes_a_file_another_writer_has_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Fsync::Never);
        c.max_files = 2;
        let gateway = Journal::open(&c, "gateway", retention()).unwrap();
        gateway.append(&received("g1", "e"), true).await.unwrap();
        for rid in ["r1", "r2", "r3"] {
            let redeliver = Journal::open(&c, "redeliver", retention()).unwrap();
            redeliver.append(&received(rid, "e"), true).await.unwrap();
            redeliver.flush().await;
        }
        gateway.append(&received("g2", "e"), true).await.unwrap();
        gateway.flush().await;
        let read = arrival_rids(dir.path());
        assert!(
            read.starts_with(&["g1".to_owned(), "g2".to_owned()]),
            "{read:?}"
        );
        // The files no writer holds are pruned as before.
        assert_eq!(read[2..], ["r2", "r3"]);
    }

    #[tokio::test]
    async fn rotation_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Fsync::Never);
        c.max_file_bytes = 300;
        c.max_files = 3;
        let j = Journal::open(&c, "gateway", retention()).unwrap();
        for i in 0..60 {
            j.append(&received(&i.to_string(), "e"), true)
                .await
                .unwrap();
        }
        let files = journal_files(dir.path());
        assert!(files.len() <= 3, "{files:?}");
        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(total <= 3 * (300 + 400), "{total}");
    }

    /// What `tracing` logged on this thread while installed.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(move || logs.clone())
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        /// The lines at WARN and above that mention `what`.
        fn warnings(&self, what: &str) -> Vec<serde_json::Value> {
            String::from_utf8_lossy(&lock(&self.0))
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["level"] != "INFO" && v.to_string().contains(what))
                .collect()
        }
    }

    const TWO_DAYS: Duration = Duration::from_secs(48 * 3600);

    /// Heavy traffic on a small journal: files still younger than
    /// `replay.ttl` are deleted to keep `max_files`. With the memory store
    /// the next start no longer knows the deliveries they held, and a
    /// platform's retry of one is forwarded again: each deletion says so
    /// (what it costs with this store, and the fix), is counted, and is
    /// marked for the next start's warm-up. Before, they went silently.
    #[tokio::test]
    async fn pruning_a_file_younger_than_replay_ttl_warns_counts_and_marks_it() {
        for store_remembers in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config(dir.path(), Fsync::Never);
            // Every line after the first opens a new file.
            c.max_file_bytes = 1;
            c.max_files = 2;
            let counter = prometheus::IntCounter::new("t", "t").unwrap();
            let logs = Logs::default();
            let _logging = logs.install();
            let retention = two_days(store_remembers, &counter);
            let j = Journal::open(&c, "gateway", retention).unwrap();
            for i in 0..4 {
                let (rid, event) = (i.to_string(), format!("e{i}"));
                j.append(&received(&rid, &event), true).await.unwrap();
            }
            j.flush().await;
            // Four files were opened, two kept: two young ones deleted.
            assert_eq!(journal_files(dir.path()).len(), 2);
            let warned = logs.warnings("younger than replay.ttl was deleted");
            assert_eq!(warned.len(), 2, "{warned:#?}");
            let store = if store_remembers { "redis" } else { "memory" };
            for w in &warned {
                assert_eq!(w["level"], "WARN", "{w}");
                assert_eq!(w["store"], store, "{w}");
                assert_eq!(w["ttl"], "48h", "{w}");
                assert!(w["newest_record_age"].is_string(), "{w}");
                assert!(w["file"].as_str().unwrap().ends_with(".jsonl"), "{w}");
                let message = w["message"].as_str().unwrap();
                assert!(message.contains("raise journal.max_files"), "{w}");
                let cost = if store_remembers {
                    "the Redis replay store still knows its deliveries"
                } else {
                    "a platform's retry of one of them is forwarded again"
                };
                assert!(message.contains(cost), "{w}");
            }
            assert_eq!(counter.get(), 2);
            // The next start knows, for as long as what went is within ttl.
            let now = crate::clock::unix_now();
            let warm = warm_up(dir.path(), TWO_DAYS, now).unwrap();
            let through = warm.forgotten_through.expect("marked");
            assert!((now - 60..=now).contains(&through), "{through} {now}");
            let later = now + 48 * 3600 + 60;
            assert_eq!(
                warm_up(dir.path(), TWO_DAYS, later)
                    .unwrap()
                    .forgotten_through,
                None
            );
        }
    }

    /// Starts within `replay.ttl` (frequent deploys, a crash loop) each
    /// open a file that holds little: beyond `max_files`, files younger
    /// than `replay.ttl` are kept while the journal is within its byte
    /// bound (`max_files × max_file_bytes`), so the deliveries they hold
    /// are still warmed at the next start. Before, `max_files` starts
    /// deleted them, and a platform's retry of one was forwarded again.
    #[tokio::test]
    async fn starts_within_replay_ttl_keep_files_the_byte_bound_has_room_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), Fsync::Never);
        c.max_files = 2;
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let logs = Logs::default();
        let _logging = logs.install();
        let now = crate::clock::unix_now();
        for n in 0..5 {
            let retention = two_days(false, &counter);
            let j = Journal::open(&c, "gateway", retention).unwrap();
            let (rid, event) = (n.to_string(), format!("e{n}"));
            j.append(&received(&rid, &event), true).await.unwrap();
            j.append(&outcome(&rid, &event, "forwarded", now), true)
                .await
                .unwrap();
            j.flush().await;
        }
        assert_eq!(journal_files(dir.path()).len(), 5);
        let warm = warm_up(dir.path(), TWO_DAYS, now).unwrap();
        assert_eq!(warm.delivered.len(), 5, "every delivery is remembered");
        assert_eq!(warm.forgotten_through, None);
        assert_eq!(logs.warnings("journal").len(), 0);
        assert_eq!(counter.get(), 0);
    }

    /// Young files kept beyond `max_files` are bounded in number too: a
    /// crash loop cannot fill the directory with files. Beyond
    /// [`MAX_FILES_WITHIN_TTL`] the oldest go, each said as for the byte
    /// bound.
    #[tokio::test]
    async fn young_files_kept_beyond_max_files_are_bounded_in_number() {
        let dir = tempfile::tempdir().unwrap();
        let line = format!("{}\n", serde_json::to_string(&received("1", "e")).unwrap());
        let planted = MAX_FILES_WITHIN_TTL + 50;
        for n in 0..planted {
            let n = u32::try_from(n).unwrap();
            let path = dir
                .path()
                .join(file_name("20000101T000000Z", "gateway", 1, n));
            std::fs::write(path, &line).unwrap();
        }
        let mut c = config(dir.path(), Fsync::Never);
        c.max_files = 2;
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let retention = two_days(false, &counter);
        let _j = Journal::open(&c, "gateway", retention).unwrap();
        let files = journal_files(dir.path());
        assert_eq!(files.len(), MAX_FILES_WITHIN_TTL);
        assert_eq!(counter.get(), 51);
        // The oldest went.
        let first = file_name("20000101T000000Z", "gateway", 1, 51);
        assert!(files[0].ends_with(first), "{:?}", files[0]);
    }

    /// Files whose newest record is older than `replay.ttl` hold nothing
    /// the warm-up would read: deleting them is the journal working as
    /// sized, and says nothing.
    #[tokio::test]
    async fn pruning_files_older_than_replay_ttl_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let line = format!(
            "{}\n",
            serde_json::to_string(&outcome("1", "e1", "forwarded", 1001)).unwrap()
        );
        // Written three days ago, as far as the file system knows.
        let then = std::time::SystemTime::now() - Duration::from_secs(72 * 3600);
        for n in 1..=3 {
            let path = dir
                .path()
                .join(format!("20000101T00000{n}Z-gateway-1-1.jsonl"));
            std::fs::write(&path, &line).unwrap();
            let file = File::options().write(true).open(&path).unwrap();
            file.set_modified(then).unwrap();
        }
        let mut c = config(dir.path(), Fsync::Never);
        c.max_files = 2;
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let logs = Logs::default();
        let _logging = logs.install();
        let retention = two_days(false, &counter);
        let j = Journal::open(&c, "gateway", retention).unwrap();
        j.append(&received("2", "e2"), true).await.unwrap();
        j.flush().await;
        // Its own file and the newest old one are kept.
        assert_eq!(journal_files(dir.path()).len(), 2);
        assert_eq!(logs.warnings("journal").len(), 0);
        assert_eq!(counter.get(), 0);
        assert!(!dir.path().join(PRUNED_MARK).exists());
        let warm = warm_up(dir.path(), TWO_DAYS, crate::clock::unix_now()).unwrap();
        assert_eq!(warm.forgotten_through, None);
    }

    #[test]
    fn since() {
        assert_eq!(
            parse_since("2026-11-22T02:00:00Z", 0).unwrap(),
            1_795_312_800
        );
        assert_eq!(parse_since("1h", 10_000).unwrap(), 6_400);
        assert!(parse_since("yesterday", 0).is_err());
    }
}
