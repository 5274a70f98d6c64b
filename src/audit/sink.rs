//! Off the request path: a request appends its event's line to a bounded queue of bytes and
//! one thread writes what gathered, as kube-apiserver's batch backend does. A full queue drops
//! the event and counts it; a write that fails (a full disk) is logged and counted; neither
//! ever holds up a request.
use super::event::Event;
use super::rotate::{Limits, RotatingFile};
use crate::metrics::global;
use std::cell::RefCell;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Events waiting for the writer; kube-apiserver's default batch buffer.
pub const QUEUE_CAPACITY: usize = 10_000;
/// How long the writer lets events gather after the first of a batch. Waking it and writing
/// once per event cost a quarter of the server's CPU per create at ~8k creates/s; once per
/// window, a request only appends (only the first of a batch wakes the writer).
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// A thread's line buffer is given back past this (one line with a large request object).
const SCRATCH_KEPT: usize = 64 * 1024;

/// Where lines go.
pub enum Output {
    Stdout,
    File(RotatingFile),
}

impl Output {
    /// `-` is standard output, as for kube-apiserver; anything else a rotated file.
    pub fn open(path: &Path, limits: Limits) -> io::Result<Output> {
        if path == Path::new("-") {
            return Ok(Output::Stdout);
        }
        RotatingFile::open(path, limits).map(Output::File)
    }

    /// Whole lines (see [`RotatingFile::write_lines`]); on an error, how many were written.
    fn write_lines(&mut self, text: &[u8], ends: &[usize]) -> Result<(), (usize, io::Error)> {
        match self {
            Output::Stdout => io::stdout().lock().write_all(text).map_err(|e| (0, e)),
            Output::File(f) => f.write_lines(text, ends),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().lock().flush(),
            Output::File(f) => f.flush(),
        }
    }
}

/// The lines waiting for the writer, one after another; `ends` marks where each ends.
#[derive(Default)]
struct Lines {
    text: Vec<u8>,
    ends: Vec<usize>,
    /// Every [`Sender`] is gone: write what is left and stop.
    closed: bool,
}

struct Queue {
    lines: Mutex<Lines>,
    /// Signalled when the first line of a batch arrives, and when the senders are gone.
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    /// The lock only guards appends and swaps, which cannot leave `Lines` half done.
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// Where a line is made before it is queued, so the queue's lock is held for a copy only.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The sending side, held by every request; cheap to clone.
#[derive(Clone)]
pub struct Sender(Arc<Closer>);

/// Closes the queue when the last [`Sender`] goes.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

impl Sender {
    /// Queue the line `write` makes (one JSON value, no newline) without waiting; when the
    /// queue is full it is dropped and counted.
    pub fn send(&self, write: impl FnOnce(&mut Vec<u8>)) {
        SCRATCH.with(|scratch| {
            let mut line = scratch.borrow_mut();
            line.clear();
            write(&mut line);
            line.push(b'\n');
            self.push(&line);
            if line.capacity() > SCRATCH_KEPT {
                *line = Vec::new();
            }
        });
    }

    /// Queue an event the server made by itself.
    pub fn send_event(&self, event: &Event) {
        self.send(|out| super::json::value(out, event));
    }

    fn push(&self, line: &[u8]) {
        let queue = &self.0 .0;
        let mut lines = queue.lock();
        if lines.ends.len() >= queue.capacity {
            drop(lines);
            let m = &global().audit_events_dropped;
            // Once, then every 10,000th: a sustained overload should not also flood the log.
            if m.inc() % 10_000 == 0 {
                tracing::warn!(
                    "audit events dropped: the writer is behind (queue of {} full); see ipam_audit_events_dropped_total",
                    queue.capacity
                );
            }
            return;
        }
        let first = lines.ends.is_empty();
        lines.text.extend_from_slice(line);
        let end = lines.text.len();
        lines.ends.push(end);
        drop(lines);
        if first {
            queue.ready.notify_one();
        }
    }
}

/// The writer thread; [`Writer::finish`] waits for it to write what is queued.
pub struct Writer {
    thread: JoinHandle<()>,
    done: Receiver<()>,
}

/// Start the writer thread on `output`, with room for `capacity` events.
pub fn start(output: Output, capacity: usize) -> io::Result<(Sender, Writer)> {
    let queue = Arc::new(Queue {
        lines: Mutex::new(Lines::default()),
        ready: Condvar::new(),
        capacity,
    });
    let (done_tx, done) = mpsc::channel();
    let writer_queue = queue.clone();
    let thread = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            write_until_closed(&writer_queue, output);
            let _ = done_tx.send(());
        })?;
    Ok((Sender(Arc::new(Closer(queue))), Writer { thread, done }))
}

impl Writer {
    /// Once every [`Sender`] is gone: wait at most `timeout` for the queue to be written.
    pub fn finish(self, timeout: Duration) {
        match self.done.recv_timeout(timeout) {
            Ok(()) => {
                let _ = self.thread.join();
            }
            Err(_) => {
                tracing::warn!("audit log: events still queued after {timeout:?}; not waiting")
            }
        }
    }
}

fn write_until_closed(queue: &Queue, mut output: Output) {
    let mut failing = false;
    let mut batch = Lines::default();
    loop {
        let mut lines = queue.lock();
        while lines.ends.is_empty() && !lines.closed {
            lines = queue
                .ready
                .wait(lines)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if lines.ends.is_empty() {
            break;
        }
        if !lines.closed {
            // Let the batch gather: the requests meanwhile only append.
            drop(lines);
            std::thread::sleep(BATCH_WINDOW);
            lines = queue.lock();
        }
        std::mem::swap(&mut lines.text, &mut batch.text);
        std::mem::swap(&mut lines.ends, &mut batch.ends);
        drop(lines);

        // In as few writes as rotation allows (a line is never split across files), then one
        // flush.
        let written = output.write_lines(&batch.text, &batch.ends);
        report(written, batch.ends.len(), &mut failing);
        if let Err(e) = output.flush() {
            // The lines are still buffered; counted once for the flush that lost them.
            report(Err((0, e)), 1, &mut failing);
        }
        batch.text.clear();
        batch.ends.clear();
    }
    let _ = output.flush();
}

/// Count the outcome of writing `lines` lines; log when writes start failing and when they
/// work again.
fn report(result: Result<(), (usize, io::Error)>, lines: usize, failing: &mut bool) {
    let m = global();
    match result {
        Ok(()) => {
            m.audit_events.inc_by(lines as u64);
            if *failing {
                *failing = false;
                tracing::info!("audit log: writing again");
            }
        }
        Err((written, e)) => {
            m.audit_events.inc_by(written as u64);
            m.audit_write_failures.inc_by((lines - written) as u64);
            if !*failing {
                *failing = true;
                tracing::error!(error = %e, "audit log: write failed; events are lost until it works again (see ipam_audit_write_failures_total)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue with no writer running yet, as a burst finds it when the writer is behind.
    fn queue(capacity: usize) -> (Sender, Arc<Queue>) {
        let queue = Arc::new(Queue {
            lines: Mutex::new(Lines::default()),
            ready: Condvar::new(),
            capacity,
        });
        (Sender(Arc::new(Closer(queue.clone()))), queue)
    }

    #[test]
    fn past_its_bound_the_queue_drops_and_counts_and_the_rest_is_written_whole() {
        let (sender, queue) = queue(2);
        let dropped = global().audit_events_dropped.get();
        for line in ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"] {
            sender.send(|out| out.extend_from_slice(line.as_bytes()));
        }
        assert!(global().audit_events_dropped.get() > dropped);
        drop(sender);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let limits = Limits {
            max_size: 10,
            max_backups: 0,
            max_age: None,
        };
        let output = Output::open(&path, limits).unwrap();
        // The senders are gone: the writer writes what is queued and returns.
        write_until_closed(&queue, output);
        let file = RotatingFile::open(&path, limits).unwrap();
        let backups = file.backups().unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&backups[0].1).unwrap(),
            "{\"n\":1}\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
    }
}
