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

/// Starts the writer thread for `out` (stdout in `callgate run`).
pub fn batched<W: Write + Send + 'static>(out: W) -> io::Result<(BatchWriter, LogGuard)> {
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
        .spawn(move || write_batches(&writer, out))?;
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

/// The writer thread: waits for a first line, lets the batch gather,
/// writes it; after the guard is dropped, writes what is left and ends.
fn write_batches<W: Write>(shared: &Shared, mut out: W) {
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
        // Nowhere to report a failed log write but the log itself.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
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
        let (writer, guard) = batched(out.clone()).unwrap();
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

    #[test]
    fn a_line_logged_before_the_guard_drops_is_written() {
        let out = Shared::default();
        let (writer, guard) = batched(out.clone()).unwrap();
        (&writer).write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(*out.0.lock().unwrap(), b"last words\n");
    }
}
