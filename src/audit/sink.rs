//! Off the request path: requests hand events to a bounded queue and one thread writes them,
//! as kube-apiserver's batch backend does. A full queue drops the event and counts it; a write
//! that fails (a full disk) is logged and counted; neither ever holds up a request.
use super::event::Event;
use super::record::Record;
use super::rotate::{Limits, RotatingFile};
use crate::metrics::global;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Events waiting for the writer; kube-apiserver's default batch buffer.
pub const QUEUE_CAPACITY: usize = 10_000;
/// How long the writer lets events gather after the first of a batch. Waking it and writing
/// once per event cost a quarter of the server's CPU per create at ~8k creates/s; once per
/// window, a request only queues (the sender wakes nobody while the writer sleeps).
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

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

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().lock().write_all(line),
            Output::File(f) => f.write_line(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().lock().flush(),
            Output::File(f) => f.flush(),
        }
    }
}

/// What is queued: a request as captured (made an [`Event`] by the writer), or an event the
/// server made by itself.
/// Boxed: the queue's slots are allocated up front, and a captured request is ~650 bytes.
pub enum Entry {
    Request(Box<Record>),
    Event(Box<Event>),
}

impl From<Record> for Entry {
    fn from(r: Record) -> Entry {
        Entry::Request(Box::new(r))
    }
}

impl From<Event> for Entry {
    fn from(e: Event) -> Entry {
        Entry::Event(Box::new(e))
    }
}

impl Entry {
    fn into_event(self) -> Event {
        match self {
            Entry::Request(r) => r.into_event(),
            Entry::Event(e) => *e,
        }
    }
}

/// The sending side, held by every request; cheap to clone.
#[derive(Clone)]
pub struct Sender(SyncSender<Entry>);

impl Sender {
    /// Queue `entry` without waiting; when the queue is full it is dropped and counted.
    pub fn send(&self, entry: Entry) {
        match self.0.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let m = &global().audit_events_dropped;
                // Once, then every 10,000th: a sustained overload should not also flood the log.
                if m.inc() % 10_000 == 0 {
                    tracing::warn!(
                        "audit events dropped: the writer is behind (queue of {QUEUE_CAPACITY} full); see ipam_audit_events_dropped_total"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                global().audit_events_dropped.inc();
            }
        }
    }
}

/// The writer thread; [`Writer::finish`] waits for it to write what is queued.
pub struct Writer {
    thread: JoinHandle<()>,
    done: Receiver<()>,
}

/// Start the writer thread on `output`.
pub fn start(output: Output, capacity: usize) -> io::Result<(Sender, Writer)> {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let (done_tx, done) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            write_until_closed(rx, output);
            let _ = done_tx.send(());
        })?;
    Ok((Sender(tx), Writer { thread, done }))
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

fn write_until_closed(rx: Receiver<Entry>, mut output: Output) {
    let mut failing = false;
    let mut line = Vec::with_capacity(4096);
    // Write what gathered in one window, then flush once: one write(2) per batch.
    while let Ok(first) = rx.recv() {
        std::thread::sleep(BATCH_WINDOW);
        let mut next = Some(first);
        while let Some(entry) = next {
            line.clear();
            let written = serde_json::to_writer(&mut line, &entry.into_event())
                .map_err(io::Error::from)
                .and_then(|()| {
                    line.push(b'\n');
                    output.write_line(&line)
                });
            report(written, &mut failing);
            next = rx.try_recv().ok();
        }
        if let Err(e) = output.flush() {
            // The lines are still buffered; counted once for the flush that lost them.
            report(Err(e), &mut failing);
        }
    }
    let _ = output.flush();
}

/// Count the outcome; log when writes start failing and when they work again.
fn report(result: io::Result<()>, failing: &mut bool) {
    let m = global();
    match result {
        Ok(()) => {
            m.audit_events.inc();
            if *failing {
                *failing = false;
                tracing::info!("audit log: writing again");
            }
        }
        Err(e) => {
            m.audit_write_failures.inc();
            if !*failing {
                *failing = true;
                tracing::error!(error = %e, "audit log: write failed; events are lost until it works again (see ipam_audit_write_failures_total)");
            }
        }
    }
}
