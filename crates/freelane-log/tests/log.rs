//! Integration tests of freelane-log: conservation through shutdown, exact drop counting,
//! never-dropped levels, writer errors, the two front doors and the JSON shape.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freelane_log::{BuildError, Builder, Overflow};
use proptest::prelude::*;
use tracing::dispatcher::{self, Dispatch};
use tracing_subscriber::prelude::*;

/// A writer into shared memory, optionally slow (sleeps per write) to make the ring fill.
#[derive(Clone, Default)]
struct SharedBuf {
    data: Arc<Mutex<Vec<u8>>>,
    delay: Option<Duration>,
}

impl SharedBuf {
    fn slow(delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            ..Self::default()
        }
    }
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.data.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        self.data.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

const THREADS: u64 = 4;
const PER_THREAD: u64 = if cfg!(miri) { 20 } else { 20_000 };

#[test]
#[cfg_attr(miri, ignore)] // file I/O needs -Zmiri-disable-isolation; the other tests cover miri
fn four_threads_every_line_reaches_the_file_through_shutdown() {
    let dir = std::env::temp_dir().join(format!("freelane-log-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("four_threads.log");
    let file = io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (layer, guard) = Builder::new()
        .capacity(256)
        .overflow(Overflow::Block)
        .build_layer(file)
        .unwrap();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let dispatch = dispatch.clone();
            std::thread::spawn(move || {
                dispatcher::with_default(&dispatch, || {
                    let span = tracing::info_span!("worker", thread = t);
                    let _e = span.enter();
                    for i in 0..PER_THREAD {
                        tracing::info!(thread = t, i, ok = true, "event {i}");
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = guard.shutdown(Duration::from_secs(60)).unwrap();
    assert_eq!(stats.emitted, THREADS * PER_THREAD);
    assert_eq!(stats.written, THREADS * PER_THREAD);
    assert_eq!((stats.dropped, stats.failed, stats.depth), (0, 0, 0));

    let text = std::fs::read_to_string(&path).unwrap();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let v = json(line);
        assert_eq!(v["level"], "INFO");
        let t = v["fields"]["thread"].as_u64().unwrap();
        let i = v["fields"]["i"].as_u64().unwrap();
        assert_eq!(v["fields"]["message"], format!("event {i}"));
        assert_eq!(v["span"]["name"], "worker");
        assert_eq!(v["span"]["thread"].as_u64(), Some(t));
        assert!(seen.insert((t, i)), "duplicate line for ({t}, {i})");
    }
    assert_eq!(seen.len() as u64, THREADS * PER_THREAD, "lines missing");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A writer whose writes wait until the test opens its gate (so the ring fills
/// deterministically, with no timing assumption; miri's clock made a sleeping writer too fast).
#[derive(Clone, Default)]
struct GatedBuf {
    buf: SharedBuf,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl GatedBuf {
    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl Write for GatedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut open = self.gate.0.lock().unwrap();
        while !*open {
            open = self.gate.1.wait(open).unwrap();
        }
        drop(open);
        self.buf.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn drop_mode_counts_every_drop_exactly() {
    let gated = GatedBuf::default();
    let out = gated.buf.clone();
    let (logger, guard) = Builder::new()
        .capacity(8)
        .batch(2)
        .overflow(Overflow::Drop)
        .never_drop(None)
        .build(gated.clone())
        .unwrap();
    // While the writer is shut, at most capacity + batch = 10 events can be accepted.
    let n: u64 = if cfg!(miri) { 30 } else { 5_000 };
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let logger = logger.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    logger.write_raw(None, format!("{t} {i}\n").as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    gated.open();
    let stats = guard.shutdown(Duration::from_secs(60)).unwrap();
    assert_eq!(stats.emitted, 2 * n);
    assert!(
        stats.dropped >= 2 * n - 10,
        "the shut writer should have made the ring overflow: {stats:?}"
    );
    assert_eq!(stats.written + stats.dropped, 2 * n);
    let lines = out.lines();
    assert_eq!(lines.len() as u64, stats.written);
    assert_eq!(
        lines.iter().collect::<HashSet<_>>().len(),
        lines.len(),
        "duplicate lines"
    );
}

#[test]
fn never_dropped_levels_fall_back_to_a_synchronous_write() {
    let out = SharedBuf::slow(Duration::from_millis(1));
    let (layer, guard) = Builder::new()
        .capacity(2)
        .batch(1)
        .overflow(Overflow::Drop)
        .never_drop(Some(tracing::Level::ERROR))
        .build_layer(out.clone())
        .unwrap();
    let n = if cfg!(miri) { 10 } else { 200 };
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        for i in 0..n {
            tracing::info!(i, "info");
            tracing::error!(i, "error");
        }
    });
    let stats = guard.shutdown(Duration::from_secs(60)).unwrap();
    let errors: HashSet<u64> = out
        .lines()
        .iter()
        .map(|l| json(l))
        .filter(|v| v["level"] == "ERROR")
        .map(|v| v["fields"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        errors.len(),
        n as usize,
        "every ERROR event must be written"
    );
    assert!(stats.sync_writes > 0 && stats.dropped > 0);
    assert_eq!(stats.emitted, 2 * n);
    assert_eq!(stats.written + stats.dropped, stats.emitted);
}

/// A writer that fails every call, or panics.
struct Broken {
    panic: bool,
}

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        if self.panic {
            panic!("writer panicked on purpose");
        }
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_errors_are_counted_and_never_reach_the_caller() {
    for panic in [false, true] {
        let (logger, guard) = Builder::new()
            .overflow(Overflow::Block)
            .build(Broken { panic })
            .unwrap();
        let n = if cfg!(miri) { 10 } else { 100 };
        for i in 0..n {
            logger.write_raw(None, format!("{i}\n").as_bytes());
        }
        let stats = guard.shutdown(Duration::from_secs(60)).unwrap();
        assert_eq!(stats.emitted, n);
        assert_eq!(stats.failed, n);
        assert_eq!(stats.written, 0);
        assert!(stats.writer_errors >= 1);
        let msg = logger.last_writer_error().unwrap();
        assert!(
            msg.contains(if panic { "panicked" } else { "disk full" }),
            "{msg}"
        );
    }
}

#[test]
fn flush_returns_after_everything_before_it_is_written() {
    let out = SharedBuf::slow(Duration::from_micros(100));
    let (logger, guard) = Builder::new()
        .overflow(Overflow::Block)
        .build(out.clone())
        .unwrap();
    let n = if cfg!(miri) { 20 } else { 300 };
    for i in 0..n {
        logger.write_raw(None, format!("{i}\n").as_bytes());
    }
    assert!(logger.flush());
    assert_eq!(out.lines().len(), n);
    drop(guard);
    assert!(!logger.flush() || logger.stats().depth == 0);
}

/// Lossless callers that find the ring full sleep until the drainer frees slots; a shutdown
/// while some are asleep wakes them too: each event is then written (accepted before the close)
/// or counted as dropped (submitted after it), and no caller hangs.
#[test]
fn block_mode_callers_asleep_on_a_full_ring_finish_through_shutdown() {
    let out = SharedBuf::slow(Duration::from_millis(2));
    let (logger, guard) = Builder::new()
        .capacity(2)
        .batch(1)
        .overflow(Overflow::Block)
        .never_drop(None)
        .build(out.clone())
        .unwrap();
    let per_thread = if cfg!(miri) { 3 } else { 50 };
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let logger = logger.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    logger.write_raw(None, format!("{t}-{i}\n").as_bytes());
                }
            })
        })
        .collect();
    // Let the ring fill and the callers go to sleep, then close it under them.
    std::thread::sleep(Duration::from_millis(20));
    let stats = guard.shutdown(Duration::from_secs(60)).unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let after = logger.stats();
    assert_eq!(after.emitted, 4 * per_thread);
    assert_eq!(after.written + after.dropped, 4 * per_thread);
    assert_eq!(after.written, stats.written);
    let lines = out.lines();
    assert_eq!(lines.len() as u64, after.written);
    let unique: HashSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "a line was written twice");
}

#[test]
fn events_after_shutdown_are_counted_as_dropped() {
    let out = SharedBuf::default();
    let (logger, guard) = Builder::new().never_drop(None).build(out.clone()).unwrap();
    logger.write_raw(None, b"before\n");
    let stats = guard.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(stats.written, 1);
    logger.write_raw(None, b"after\n");
    let stats = logger.stats();
    assert_eq!((stats.emitted, stats.written, stats.dropped), (2, 1, 1));
    assert_eq!(out.lines(), vec!["before".to_string()]);
}

#[test]
fn non_blocking_is_a_drop_in_make_writer() {
    let out = SharedBuf::default();
    let (writer, guard) = freelane_log::non_blocking(out.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .without_time() // fmt's clock reads the wall clock, which miri's isolation lacks
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..10 {
            tracing::warn!(i, "through the fmt layer");
        }
    });
    let stats = guard.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(stats.written, 10);
    let lines = out.lines();
    assert_eq!(lines.len(), 10);
    assert!(
        lines[3].contains("WARN") && lines[3].contains("i=3"),
        "{}",
        lines[3]
    );
}

#[test]
fn json_lines_carry_timestamp_level_target_fields_and_spans() {
    let out = SharedBuf::default();
    let (layer, guard) = freelane_log::layer(out.clone());
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let outer = tracing::info_span!("request", id = 7u64, user = "ann");
        let _o = outer.enter();
        let inner = tracing::debug_span!("step", n = tracing::field::Empty);
        inner.record("n", 2);
        let _i = inner.enter();
        tracing::warn!(
            target: "app::gpu",
            gpu = 3,
            load = 0.5,
            neg = -4i64,
            name = "a \"quoted\"\nname",
            dbg = ?vec![1, 2],
            "hello {}",
            "world"
        );
    });
    drop(guard);
    let lines = out.lines();
    assert_eq!(lines.len(), 1);
    let v = json(&lines[0]);
    let ts = v["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
        "{ts}"
    );
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["target"], "app::gpu");
    assert_eq!(v["fields"]["message"], "hello world");
    assert_eq!(v["fields"]["gpu"], 3);
    assert_eq!(v["fields"]["load"], 0.5);
    assert_eq!(v["fields"]["neg"], -4);
    assert_eq!(v["fields"]["name"], "a \"quoted\"\nname");
    assert_eq!(v["fields"]["dbg"], "[1, 2]");
    assert_eq!(v["span"]["name"], "step");
    assert_eq!(v["span"]["n"], 2);
    assert_eq!(v["spans"][0]["name"], "request");
    assert_eq!(v["spans"][0]["id"], 7);
    assert_eq!(v["spans"][0]["user"], "ann");
    assert_eq!(v["spans"][1]["name"], "step");
}

#[test]
fn builder_rejects_bad_settings() {
    let e = Builder::new().capacity(0).build(io::sink()).unwrap_err();
    assert_eq!(e, BuildError::Capacity(0));
    assert_eq!(
        e.to_string(),
        "capacity must be between 2 and 16777216, got 0"
    );
    assert!(matches!(
        Builder::new().capacity(1 << 30).build(io::sink()),
        Err(BuildError::Capacity(_))
    ));
    assert_eq!(
        Builder::new().batch(0).build(io::sink()).unwrap_err(),
        BuildError::Batch(0)
    );
    // Capacity is rounded up to a power of two.
    let (logger, _g) = Builder::new().capacity(100).build(io::sink()).unwrap();
    assert_eq!(logger.stats().capacity, 128);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any message and string field survives the trip through capture, rendering and JSON.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn any_strings_render_to_json_that_parses_back(msg in any::<String>(), s in any::<String>(), n in any::<i64>()) {
        let out = SharedBuf::default();
        let (layer, guard) = freelane_log::layer(out.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!(s = s.as_str(), n, "{}", msg);
        });
        drop(guard);
        let lines = out.lines();
        prop_assert_eq!(lines.len(), 1);
        let v = json(&lines[0]);
        prop_assert_eq!(v["fields"]["message"].as_str().unwrap(), msg.as_str());
        prop_assert_eq!(v["fields"]["s"].as_str().unwrap(), s.as_str());
        prop_assert_eq!(v["fields"]["n"].as_i64().unwrap(), n);
    }
}

/// The exact bytes of rendered lines (all but the timestamp's value), for every value type,
/// escapes, non-ASCII text, extreme numbers and nested spans: the drainer's hand-written number,
/// string and timestamp writers must produce what the `fmt`-based rendering did.
#[test]
fn rendered_lines_are_byte_exact() {
    let out = SharedBuf::default();
    let (layer, guard) = freelane_log::layer(out.clone());
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::info!(
            target: "t",
            a = 0u64,
            b = 9u64,
            c = 10u64,
            d = 99u64,
            e = 100u64,
            f = 12_345_678_901u64,
            g = u64::MAX,
            h = 0i64,
            i = -1i64,
            j = i64::MIN,
            k = i64::MAX,
            "plain"
        );
        tracing::info!(
            target: "t",
            a = 12.5,
            b = 0.1,
            c = -0.0,
            d = 1e21,
            e = 1e-7,
            f = f64::NAN,
            g = f64::NEG_INFINITY,
            h = f64::MAX,
            i = 123_456.789,
            j = 5e-324,
            "floats"
        );
        tracing::info!(
            target: "t",
            s = "q\"b\\n\nr\rt\tc\u{1}\u{1f} é 日本 \u{7f}",
            e = "",
            yes = true,
            no = false,
            dbg = ?("x\ty", 3),
            "{}",
            "msg \"with\" quotes"
        );
        let outer = tracing::info_span!("outer", id = 7u64, user = "a\"n");
        let _o = outer.enter();
        let inner = tracing::info_span!("in\"ner", f = 2.5);
        let _i = inner.enter();
        tracing::error!(target: "app::x", n = -3i64, "in spans");
    });
    drop(guard);
    let lines: Vec<String> = out
        .lines()
        .into_iter()
        .map(|l| {
            let start = l.find("\"timestamp\":\"").expect("a timestamp") + 13;
            let ts = &l[start..start + 27];
            assert!(
                ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
                "{ts}"
            );
            format!("{}TS{}", &l[..start], &l[start + 27..])
        })
        .collect();
    let expected = [
        "{\"timestamp\":\"TS\",\"level\":\"INFO\",\"fields\":{\"message\":\"plain\",\"a\":0,\"b\":9,\"c\":10,\"d\":99,\"e\":100,\"f\":12345678901,\"g\":18446744073709551615,\"h\":0,\"i\":-1,\"j\":-9223372036854775808,\"k\":9223372036854775807},\"target\":\"t\"}",
        "{\"timestamp\":\"TS\",\"level\":\"INFO\",\"fields\":{\"message\":\"floats\",\"a\":12.5,\"b\":0.1,\"c\":-0,\"d\":1000000000000000000000,\"e\":0.0000001,\"f\":\"NaN\",\"g\":\"-inf\",\"h\":179769313486231570000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000,\"i\":123456.789,\"j\":0.000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000005},\"target\":\"t\"}",
        "{\"timestamp\":\"TS\",\"level\":\"INFO\",\"fields\":{\"message\":\"msg \\\"with\\\" quotes\",\"s\":\"q\\\"b\\\\n\\nr\\rt\\tc\\u0001\\u001f é 日本 \u{7f}\",\"e\":\"\",\"yes\":true,\"no\":false,\"dbg\":\"(\\\"x\\\\ty\\\", 3)\"},\"target\":\"t\"}",
        "{\"timestamp\":\"TS\",\"level\":\"ERROR\",\"fields\":{\"message\":\"in spans\",\"n\":-3},\"target\":\"app::x\",\"span\":{\"f\":2.5,\"name\":\"in\\\"ner\"},\"spans\":[{\"id\":7,\"user\":\"a\\\"n\",\"name\":\"outer\"},{\"f\":2.5,\"name\":\"in\\\"ner\"}]}",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (got, want) in lines.iter().zip(expected) {
        assert_eq!(got, want);
    }
}

/// A field whose `Debug` panics while the event is captured into a ring slot: the panic reaches
/// the caller, the event is counted as failed, and the logger keeps working (the slot it had
/// claimed is still published; it used to stay unpublished and stall the drainer for good).
#[test]
fn a_panicking_field_is_skipped_and_the_logger_keeps_working() {
    struct Boom;
    impl std::fmt::Debug for Boom {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("Debug of Boom panics")
        }
    }
    let n = if cfg!(miri) { 6 } else { 50 };
    for overflow in [Overflow::Drop, Overflow::Block] {
        let out = SharedBuf::default();
        let (layer, guard) = Builder::new()
            .capacity(4)
            .overflow(overflow)
            .build_layer(out.clone())
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let r = std::panic::catch_unwind(|| tracing::info!(x = ?Boom, "boom"));
            assert!(r.is_err(), "the field's panic must reach the caller");
            for i in 0..n {
                tracing::info!(i, "after");
            }
        });
        assert!(
            guard.logger().flush_timeout(Duration::from_secs(30)),
            "{overflow:?}: flush never completed after a panicking capture"
        );
        let stats = guard.shutdown(Duration::from_secs(60)).unwrap();
        assert_eq!(stats.failed, 1, "{overflow:?}: {stats:?}");
        assert_eq!(stats.emitted, n + 1, "{overflow:?}: {stats:?}");
        assert_eq!(
            stats.emitted,
            stats.written + stats.dropped + stats.failed,
            "{overflow:?}: {stats:?}"
        );
        let lines = out.lines();
        assert_eq!(lines.len() as u64, stats.written);
        assert!(lines
            .iter()
            .all(|l| json(l)["fields"]["message"] == "after"));
        if overflow == Overflow::Block {
            assert_eq!(stats.written, n);
        }
    }
}

/// A writer that itself logs through the same layer (on the logger's thread, while it holds the
/// writer): with the ring full, that event must not wait for room (it would wait for itself) or
/// take the writer lock for a synchronous write. It is dropped and counted; nothing hangs.
#[test]
fn a_writer_that_logs_does_not_deadlock_the_logger() {
    #[derive(Clone)]
    struct Chatty {
        inner: SharedBuf,
        dispatch: Arc<Mutex<Option<Dispatch>>>,
        left: Arc<Mutex<u32>>,
    }
    impl Write for Chatty {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let d = self.dispatch.lock().unwrap().clone();
            let mut left = self.left.lock().unwrap();
            if let (Some(d), true) = (d, *left > 0) {
                *left -= 1;
                drop(left);
                dispatcher::with_default(&d, || tracing::error!("from inside the writer"));
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    for overflow in [Overflow::Block, Overflow::Drop] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let writer = Chatty {
                inner: SharedBuf::slow(Duration::from_millis(1)),
                dispatch: Arc::default(),
                left: Arc::new(Mutex::new(40)),
            };
            let (layer, guard) = Builder::new()
                .capacity(2)
                .batch(1)
                .overflow(overflow)
                .never_drop(Some(tracing::Level::ERROR))
                .build_layer(writer.clone())
                .unwrap();
            let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
            *writer.dispatch.lock().unwrap() = Some(dispatch.clone());
            dispatcher::with_default(&dispatch, || {
                for i in 0..if cfg!(miri) { 10 } else { 100 } {
                    tracing::info!(i, "from the caller");
                }
            });
            *writer.dispatch.lock().unwrap() = None;
            drop(dispatch);
            tx.send(guard.shutdown(Duration::from_secs(60))).unwrap();
        });
        let stats = rx
            .recv_timeout(Duration::from_secs(if cfg!(miri) { 600 } else { 60 }))
            .unwrap_or_else(|_| panic!("{overflow:?}: the logger deadlocked on its own writer"))
            .unwrap();
        assert_eq!(
            stats.emitted,
            stats.written + stats.dropped + stats.failed,
            "{overflow:?}: {stats:?}"
        );
    }
}
