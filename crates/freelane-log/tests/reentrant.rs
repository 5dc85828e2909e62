//! Shutdown flushing and events logged from inside the logger (a writer that logs during a
//! caller's synchronous write, a field whose `Debug` logs while its event is captured). Each
//! test failed (a missing flush, or a hang) before the fixes of 2026-12-03.
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use freelane_log::{Builder, Logger, Overflow};
use tracing::Level;

/// A writer that keeps written bytes in a pending buffer and only moves them to `visible` on
/// flush (like BufWriter / a socket with a flush); counts flush calls.
#[derive(Clone, Default)]
struct FlushOnly {
    pending: Arc<Mutex<Vec<u8>>>,
    visible: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<u32>>,
}
impl Write for FlushOnly {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.pending.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut p = self.pending.lock().unwrap();
        self.visible.lock().unwrap().extend_from_slice(&p);
        p.clear();
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}

/// Shutdown when the last batch is exactly `batch` events long: the drainer exits without
/// flushing the writer.
#[test]
#[cfg_attr(miri, ignore)] // timing (recv_timeout, idle polls)
fn shutdown_flushes_writer_when_last_batch_is_full() {
    let w = FlushOnly::default();
    let (logger, guard) = Builder::new()
        .capacity(1024)
        .batch(4)
        .idle_poll(Duration::from_secs(30)) // drainer stays parked until shutdown wakes it
        .build(w.clone())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let the drainer park
    for i in 0..4 {
        logger.write_raw(None, format!("line {i}\n").as_bytes());
    }
    let stats = guard.shutdown(Duration::from_secs(5)).unwrap();
    eprintln!("stats = {stats:?}");
    eprintln!("flush calls = {}", w.flushes.lock().unwrap());
    eprintln!("flush() after shutdown = {}", logger.flush());
    let visible = String::from_utf8(w.visible.lock().unwrap().clone()).unwrap();
    assert_eq!(stats.written, 4);
    assert_eq!(
        visible.lines().count(),
        4,
        "writer never flushed: visible = {visible:?}"
    );
}

/// A writer that itself logs an ERROR through the logger (e.g. it reports its own I/O trouble),
/// on a caller's synchronous write (the ring is closed): the nested event is dropped (counted)
/// instead of locking the writer again on the same thread.
struct LoggingWriter {
    me: Arc<OnceLock<Logger>>,
    out: Arc<Mutex<Vec<u8>>>,
}
impl Write for LoggingWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if b.starts_with(b"outer") {
            if let Some(l) = self.me.get() {
                l.write_raw(Some(Level::ERROR), b"writer says: slow disk\n");
            }
        }
        self.out.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
#[cfg_attr(miri, ignore)] // timing (recv_timeout, idle polls)
fn a_writer_that_logs_during_a_synchronous_write_does_not_deadlock() {
    let me = Arc::new(OnceLock::new());
    let out = Arc::new(Mutex::new(Vec::new()));
    let (logger, guard) = Builder::new()
        .build(LoggingWriter {
            me: me.clone(),
            out: out.clone(),
        })
        .unwrap();
    let _ = me.set(logger.clone());
    guard.shutdown(Duration::from_secs(5)).unwrap();
    // Ring closed: an ERROR is written synchronously by this caller, under the writer lock; the
    // writer logs an ERROR, which takes the synchronous path again and locks the writer again.
    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = logger.clone();
    std::thread::spawn(move || {
        l2.write_raw(Some(Level::ERROR), b"outer error\n");
        tx.send(()).unwrap();
    });
    let r = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        r.is_ok(),
        "caller thread hung (deadlock on the writer mutex)"
    );
    let st = logger.stats();
    assert_eq!((st.sync_writes, st.dropped), (1, 1), "{st:?}");
    assert!(String::from_utf8_lossy(&out.lock().unwrap()).contains("outer error"));
}

/// Overflow::Block plus a field whose Debug impl logs (re-entrant capture) on a full ring: the
/// nested event used to wait for the drainer, which waits for the outer slot being filled; it
/// is dropped now. (Needs a global default: scoped dispatchers block re-entrant events.)
#[test]
#[cfg_attr(miri, ignore)] // timing (recv_timeout, idle polls)
fn a_field_that_logs_on_a_full_blocking_ring_does_not_deadlock() {
    let (logger, guard) = Builder::new()
        .capacity(2)
        .overflow(Overflow::Block)
        .build(io::sink())
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = logger.clone();
    std::thread::spawn(move || {
        use tracing_subscriber::prelude::*;
        struct Noisy;
        impl std::fmt::Debug for Noisy {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                tracing::info!("nested 1");
                tracing::info!("nested 2");
                tracing::info!("nested 3");
                f.write_str("noisy")
            }
        }
        let layer = freelane_log::JsonLayer::new(l2);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .unwrap();
        tracing::info!(x = ?Noisy, "outer");
        tx.send(()).unwrap();
    });
    let r = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        r.is_ok(),
        "caller hung: nested event waits for room the drainer cannot free"
    );
    assert!(logger.stats().dropped >= 1, "{:?}", logger.stats());
    drop(guard);
}

/// `Logger::flush` from inside the writer (on the drainer thread) returns `false` at once
/// instead of waiting for the drainer, i.e. for itself.
#[test]
#[cfg_attr(miri, ignore)] // timing (recv_timeout)
fn flush_from_inside_the_writer_returns_instead_of_waiting_for_itself() {
    struct FlushingWriter {
        me: Arc<OnceLock<Logger>>,
        results: std::sync::mpsc::Sender<bool>,
    }
    impl Write for FlushingWriter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if let Some(l) = self.me.get() {
                let _ = self.results.send(l.flush());
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let me = Arc::new(OnceLock::new());
    let (tx, rx) = std::sync::mpsc::channel();
    let (logger, guard) = Builder::new()
        .build(FlushingWriter {
            me: me.clone(),
            results: tx,
        })
        .unwrap();
    let _ = me.set(logger.clone());
    logger.write_raw(None, b"line\n");
    let r = rx.recv_timeout(Duration::from_secs(5));
    assert_eq!(
        r,
        Ok(false),
        "flush from the writer hung or claimed success"
    );
    drop(guard);
}
