//! proptest: the health table's state machine against a plain model written from the rules in
//! the crate docs, and the seqlock against a plain value.

use std::time::{Duration, Instant};

use freelane_health::{GpuId, GpuState, HealthConfig, HealthTable, SeqLock};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Ev {
    Success(u32),
    Failure,
    Heartbeat(u32),
    /// A heartbeat stamped this many ms before the current time (delivered late).
    LateHeartbeat(u32),
    Check(u32),
    Mark,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0..1000u32).prop_map(Ev::Success),
        4 => Just(Ev::Failure),
        3 => (0..400u32).prop_map(Ev::Heartbeat),
        1 => (0..400u32).prop_map(Ev::LateHeartbeat),
        2 => (0..400u32).prop_map(Ev::Check),
        1 => Just(Ev::Mark),
    ]
}

/// The plain model: the transition table of the crate docs, one step per event.
#[derive(Debug, Clone)]
struct Plain {
    state: GpuState,
    failures: u64,
    successes: u64,
    consecutive_failures: u32,
    consecutive_successes: u32,
    error_rate: f64,
    latency_ewma_ns: f64,
    heartbeats: u32,
    last_heartbeat_ms: u64,
    failovers: u64,
    recoveries: u64,
    changes: u64,
}

struct Cfg {
    degrade: u32,
    unhealthy: u32,
    d_rate: f64,
    u_rate: f64,
    alpha: f64,
    recover_successes: u32,
    recover_heartbeats: u32,
    timeout_ms: u64,
}

impl Plain {
    fn new() -> Self {
        Plain {
            state: GpuState::Healthy,
            failures: 0,
            successes: 0,
            consecutive_failures: 0,
            consecutive_successes: 0,
            error_rate: 0.0,
            latency_ewma_ns: 0.0,
            heartbeats: 0,
            last_heartbeat_ms: 0,
            failovers: 0,
            recoveries: 0,
            changes: 0,
        }
    }

    fn go(&mut self, to: GpuState) -> Option<(GpuState, GpuState)> {
        let from = self.state;
        self.state = to;
        self.changes += 1;
        if to == GpuState::Unhealthy {
            self.failovers += 1;
            self.heartbeats = 0;
        }
        if to == GpuState::Recovering {
            self.consecutive_failures = 0;
            self.consecutive_successes = 0;
            self.error_rate = 0.0;
        }
        if from == GpuState::Recovering && to == GpuState::Healthy {
            self.recoveries += 1;
        }
        Some((from, to))
    }

    fn apply(&mut self, c: &Cfg, ev: &Ev, now_ms: u64) -> Option<(GpuState, GpuState)> {
        use GpuState::*;
        match *ev {
            Ev::Success(us) => {
                self.successes += 1;
                // The first success sets the average, later ones move it by alpha.
                let l = f64::from(us) * 1000.0;
                self.latency_ewma_ns = if self.successes == 1 {
                    l
                } else {
                    self.latency_ewma_ns + c.alpha * (l - self.latency_ewma_ns)
                };
                self.consecutive_successes += 1;
                self.consecutive_failures = 0;
                self.error_rate *= 1.0 - c.alpha;
                let enough = self.consecutive_successes >= c.recover_successes;
                if self.state == Degraded && enough && self.error_rate < c.d_rate {
                    return self.go(Healthy);
                }
                if self.state == Recovering && enough {
                    return self.go(Healthy);
                }
                None
            }
            Ev::Failure => {
                self.failures += 1;
                self.consecutive_failures += 1;
                self.consecutive_successes = 0;
                self.error_rate += c.alpha * (1.0 - self.error_rate);
                if 1.0 - self.error_rate <= f64::EPSILON / c.alpha {
                    self.error_rate = 1.0; // the documented snap (see `unhealthy_error_rate`)
                }
                let cf = self.consecutive_failures;
                match self.state {
                    Healthy if cf >= c.degrade || self.error_rate >= c.d_rate => self.go(Degraded),
                    Degraded if cf >= c.unhealthy || self.error_rate >= c.u_rate => {
                        self.go(Unhealthy)
                    }
                    Recovering => self.go(Unhealthy),
                    _ => None,
                }
            }
            Ev::Heartbeat(_) | Ev::LateHeartbeat(_) => {
                let previous = self.last_heartbeat_ms;
                self.last_heartbeat_ms = previous.max(now_ms);
                // Only a newer heartbeat counts; a gap of the timeout restarts the count.
                if self.state == Unhealthy && now_ms > previous {
                    if now_ms - previous >= c.timeout_ms {
                        self.heartbeats = 0;
                    }
                    self.heartbeats += 1;
                    if self.heartbeats >= c.recover_heartbeats {
                        return self.go(Recovering);
                    }
                }
                None
            }
            Ev::Check(_) => {
                if now_ms.saturating_sub(self.last_heartbeat_ms) < c.timeout_ms {
                    None
                } else if self.state == Unhealthy {
                    self.heartbeats = 0;
                    None
                } else {
                    self.go(Unhealthy)
                }
            }
            Ev::Mark => {
                self.failures += 1;
                self.consecutive_successes = 0;
                if self.state == Unhealthy {
                    self.heartbeats = 0;
                    None
                } else {
                    self.go(Unhealthy)
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    /// After every event the table's state, returned transition, record counters and
    /// transition counts equal the plain model's.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn state_machine_matches_plain_model(
        degrade in 1u32..4,
        extra in 1u32..4,
        d_rate in 0.1f64..0.6,
        gap in 0.05f64..0.4,
        alpha in 0.05f64..1.0,
        recover_successes in 1u32..5,
        recover_heartbeats in 1u32..4,
        timeout_ms in 1u64..300,
        events in prop::collection::vec(ev(), 0..200),
    ) {
        let c = Cfg {
            degrade,
            unhealthy: degrade + extra,
            d_rate,
            u_rate: (d_rate + gap).min(1.0),
            alpha,
            recover_successes,
            recover_heartbeats,
            timeout_ms,
        };
        let config = HealthConfig::builder()
            .degrade_after_failures(c.degrade)
            .unhealthy_after_failures(c.unhealthy)
            .degraded_error_rate(c.d_rate)
            .unhealthy_error_rate(c.u_rate)
            .ewma_alpha(c.alpha)
            .recover_after_successes(c.recover_successes)
            .recover_after_heartbeats(c.recover_heartbeats)
            .heartbeat_timeout(Duration::from_millis(c.timeout_ms))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let table = HealthTable::with_epoch(1, config, t0);
        let g = GpuId(0);
        let mut plain = Plain::new();
        let mut now_ms = 0u64;
        for e in &events {
            let got = match *e {
                Ev::Success(us) => table.report_success(g, Duration::from_micros(u64::from(us))).unwrap(),
                Ev::Failure => table.report_failure(g).unwrap(),
                Ev::Heartbeat(dt) => {
                    now_ms += u64::from(dt);
                    table.heartbeat(g, t0 + Duration::from_millis(now_ms)).unwrap()
                }
                Ev::LateHeartbeat(back) => {
                    let stamp = now_ms.saturating_sub(u64::from(back));
                    table.heartbeat(g, t0 + Duration::from_millis(stamp)).unwrap()
                }
                Ev::Check(dt) => {
                    now_ms += u64::from(dt);
                    let v = table.check_heartbeats(t0 + Duration::from_millis(now_ms));
                    prop_assert!(v.len() <= 1);
                    v.into_iter().next()
                }
                Ev::Mark => table.mark_unhealthy(g).unwrap(),
            };
            let stamp = match *e {
                Ev::LateHeartbeat(back) => now_ms.saturating_sub(u64::from(back)),
                _ => now_ms,
            };
            let want = plain.apply(&c, e, stamp);
            prop_assert_eq!(got.map(|t| (t.from, t.to)), want, "event {:?}", e);
            prop_assert_eq!(table.state(g), plain.state);
            prop_assert_eq!(table.is_usable(g), plain.state != GpuState::Unhealthy);
            let rec = table.record(g).unwrap();
            prop_assert_eq!(rec.state(), plain.state);
            prop_assert_eq!((rec.failures, rec.successes), (plain.failures, plain.successes));
            prop_assert_eq!(
                (rec.consecutive_failures, rec.consecutive_successes, rec.heartbeats_since_unhealthy),
                (plain.consecutive_failures, plain.consecutive_successes, plain.heartbeats)
            );
            prop_assert!((rec.error_rate - plain.error_rate).abs() < 1e-9);
            prop_assert!(
                (rec.latency_ewma_ns - plain.latency_ewma_ns).abs()
                    <= 1e-9 * plain.latency_ewma_ns.abs().max(1.0),
                "latency ewma {} vs model {}",
                rec.latency_ewma_ns,
                plain.latency_ewma_ns
            );
            prop_assert!((0.0..=1.0).contains(&rec.error_rate));
            prop_assert_eq!(rec.last_heartbeat_ns, plain.last_heartbeat_ms * 1_000_000);
            let counts = table.transitions(g).unwrap();
            prop_assert_eq!(
                (counts.failovers(), counts.recoveries(), counts.total()),
                (plain.failovers, plain.recoveries, plain.changes)
            );
        }
    }

    /// A seqlock behaves like a plain cell under any sequence of writes, updates and reads.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn seqlock_matches_a_plain_value(ops in prop::collection::vec((any::<bool>(), any::<[u8; 13]>()), 0..100)) {
        let lock = SeqLock::new([0u8; 13]);
        let mut plain = [0u8; 13];
        let mut version = 0;
        for (is_update, bytes) in ops {
            if is_update {
                lock.update(|v| for (a, b) in v.iter_mut().zip(bytes) { *a ^= b; });
                for (a, b) in plain.iter_mut().zip(bytes) { *a ^= b; }
            } else {
                lock.write(bytes);
                plain = bytes;
            }
            version += 2;
            prop_assert_eq!(lock.read_versioned(), (plain, version));
        }
    }
}
