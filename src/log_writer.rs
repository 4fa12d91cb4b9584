//! Where log lines go: stdout, written in batches by one thread, so that a
//! request's log line (one per notification, written by `pipeline::finish`
//! on the worker thread that served it) costs a copy into a shared buffer
//! and almost never a wake-up of another thread.
//!
//! tracing's formatter renders each line into its own reused per-thread
//! buffer and hands it to [`BatchWriter`] in one `write`. The line is
//! appended to the pending batch; only the line that finds the batch empty
//! wakes the writer thread. The writer waits [`BATCH_DELAY`] so that the
//! lines of the next moments join the batch, then writes it with one
//! `write` to stdout. So a line reaches stdout at most about `BATCH_DELAY`
//! after it was logged, and under load one wake-up and one system call
//! carry many lines (the per-line hand-off to a logging thread it replaces
//! cost two context switches per request).
//!
//! A consumer that stops reading stdout (a full pipe) does not make lines
//! disappear: once [`MAX_PENDING`] bytes wait, logging threads wait for
//! the writer, as with any blocking log. [`LogGuard`] writes what is
//! pending when dropped (at exit).
//!
//! A write that fails (stdout redirected to a file on a full disk, past a
//! file-size limit, `/dev/full`) drops that batch and never reaches a
//! request: the writer says so once on its report stream (stderr), counts
//! the lines it dropped, and says how many when writes work again. A batch
//! cut short mid-line is ended with a newline before the next one, so the
//! next line starts a line of its own instead of being glued to a torn one
//! (one JSON object per line stays true of every whole line).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer lets a batch gather after its first line.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);

/// Bytes pending at most before logging threads wait for the writer.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

struct Shared {
    pending: Mutex<Pending>,
    /// The batch went from empty to not empty, or the guard was dropped.
    ready: Condvar,
    /// The writer took a batch: room for more.
    room: Condvar,
}

struct Pending {
    bytes: Vec<u8>,
    stopped: bool,
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    match m.lock() {
        Ok(g) => g,
        // A thread that panicked while appending left whole lines or a
        // torn one; the log goes on.
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The `MakeWriter` handed to `tracing_subscriber`: each line it writes
/// joins the pending batch.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Ends the writer thread when dropped, after writing every pending line.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `out` (stdout in `callgate run`); failed
/// writes are reported on `report` (stderr).
pub fn batched<W: Write + Send + 'static, R: Write + Send + 'static>(
    out: W,
    report: R,
) -> io::Result<(BatchWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            bytes: Vec::with_capacity(64 * 1024),
            stopped: false,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
    });
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("callgate-log".to_owned())
        .spawn(move || write_batches(&writer, Output::new(out, report)))?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// Where batches go, and what the writer knows of it after a failure.
struct Output<W, R> {
    out: W,
    report: R,
    /// The last write stopped inside a line.
    torn: bool,
    /// Lines dropped since writes started failing (0: they work).
    dropped: u64,
}

impl<W: Write, R: Write> Output<W, R> {
    fn new(out: W, report: R) -> Self {
        Output {
            out,
            report,
            torn: false,
            dropped: 0,
        }
    }

    /// Writes `batch` whole, or drops the lines it could not write and
    /// says so; never fails.
    fn write_batch(&mut self, batch: &[u8]) {
        let mut done = 0;
        let mut result = Ok(());
        if self.torn {
            result = write_all(&mut self.out, b"\n", &mut 0);
            if result.is_ok() {
                self.torn = false;
            }
        }
        if result.is_ok() {
            result = write_all(&mut self.out, batch, &mut done).and_then(|()| self.out.flush());
        }
        match result {
            Ok(()) if self.dropped > 0 => {
                let _ = writeln!(
                    self.report,
                    "callgate: log lines are written to stdout again; {} were dropped while it failed",
                    self.dropped
                );
                self.dropped = 0;
            }
            Ok(()) => {}
            Err(e) => {
                if done > 0 && batch[done - 1] != b'\n' {
                    self.torn = true;
                }
                let lost = batch[done..].iter().filter(|&&b| b == b'\n').count();
                if self.dropped == 0 {
                    let _ = writeln!(
                        self.report,
                        "callgate: cannot write log lines to stdout ({e}): they are dropped until it can (requests are served as before)"
                    );
                }
                self.dropped = self
                    .dropped
                    .saturating_add(u64::try_from(lost).unwrap_or(u64::MAX).max(1));
            }
        }
    }
}

/// `write_all` that counts in `done` what was written before a failure.
fn write_all<W: Write>(out: &mut W, bytes: &[u8], done: &mut usize) -> io::Result<()> {
    while *done < bytes.len() {
        match out.write(&bytes[*done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The writer thread: waits for a first line, lets the batch gather,
/// writes it; after the guard is dropped, writes what is left and ends.
fn write_batches<W: Write, R: Write>(shared: &Shared, mut out: Output<W, R>) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let mut pending = lock(&shared.pending);
        while pending.bytes.is_empty() && !pending.stopped {
            pending = match shared.ready.wait(pending) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        let stopped = pending.stopped;
        if !stopped {
            drop(pending);
            std::thread::sleep(BATCH_DELAY);
            pending = lock(&shared.pending);
        }
        std::mem::swap(&mut pending.bytes, &mut batch);
        drop(pending);
        shared.room.notify_all();
        out.write_batch(&batch);
        batch.clear();
        if stopped && lock(&shared.pending).bytes.is_empty() {
            return;
        }
    }
}

impl Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = lock(&self.shared.pending);
        if pending.stopped {
            drop(pending);
            // After the guard: nobody batches any more.
            return io::stdout().lock().write(line);
        }
        while pending.bytes.len() >= MAX_PENDING && !pending.stopped {
            pending = match self.shared.room.wait(pending) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if first {
            self.shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).stopped = true;
        self.shared.ready.notify_one();
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read after the writer is gone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_and_once() {
        let out = Shared::default();
        let (writer, guard) = batched(out.clone(), io::sink()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let line = format!("thread {t} line {i:04} {}\n", "x".repeat(i % 97));
                        (&writer).write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8000);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 8000, "a line was written twice");
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            for (i, l) in mine.iter().enumerate() {
                let want = format!("thread {t} line {i:04} {}", "x".repeat(i % 97));
                assert_eq!(*l, want, "each thread's lines whole and in order");
            }
        }
    }

    /// A disk of `room` bytes: a write takes what fits, then fails with
    /// ENOSPC, as a file on a full file system does.
    #[derive(Clone, Default)]
    struct Disk {
        written: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<usize>>,
    }

    impl Write for Disk {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = b.len().min(*room);
            *room -= n;
            self.written.lock().unwrap().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The disk fills mid-line, then has room again: before, the torn
    /// line and the next line were glued into one unparseable line, the
    /// dropped lines went unsaid, and nothing said when writes worked again.
    #[test]
    fn a_full_disk_drops_lines_says_so_and_never_glues_the_next_line_to_a_torn_one() {
        let disk = Disk::default();
        *disk.room.lock().unwrap() = 10;
        let report = Shared::default();
        let mut out = Output::new(disk.clone(), report.clone());
        out.write_batch(b"{\"a\":1}\n{\"b\":2}\n");
        out.write_batch(b"{\"c\":3}\n");
        *disk.room.lock().unwrap() = 1000;
        out.write_batch(b"{\"d\":4}\n");
        let written = String::from_utf8(disk.written.lock().unwrap().clone()).unwrap();
        assert_eq!(written, "{\"a\":1}\n{\"\n{\"d\":4}\n");
        let report = String::from_utf8(report.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines.len(), 2, "{report}");
        assert!(
            lines[0].starts_with("callgate: cannot write log lines to stdout (")
                && lines[0].contains("No space left on device"),
            "{report}"
        );
        assert_eq!(
            lines[1],
            "callgate: log lines are written to stdout again; 2 were dropped while it failed"
        );
    }

    #[test]
    fn a_line_logged_before_the_guard_drops_is_written() {
        let out = Shared::default();
        let (writer, guard) = batched(out.clone(), io::sink()).unwrap();
        (&writer).write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(*out.0.lock().unwrap(), b"last words\n");
    }
}
