//! Models of freelane-load: packed load words, guards and picks under concurrent routers.
#![cfg(freelane_loom)]

use std::sync::Arc; // LoadBoard::acquire takes `self: &Arc<Self>` (std Arc; see the crate docs).

use freelane_load::{GpuId, LoadBoard, Policy};
use freelane_sync::atomic::{AtomicBool, Ordering};
use freelane_sync::thread;
use loom_tests::{run_model, run_model_outcomes};

/// Two routers acquire (directly and through `pick_and_acquire`) and release concurrently: while
/// a guard is live its GPU's counters include it, and once both are joined every counter is back
/// to zero with the allocations counted exactly.
#[test]
fn acquire_release_from_two_threads_balances_to_zero() {
    run_model("load::acquire_release_balance", || {
        let board = Arc::new(LoadBoard::new(2));
        let b1 = Arc::clone(&board);
        let t = thread::spawn(move || {
            let g = b1.acquire(GpuId(0), 3);
            assert!(b1.in_flight(GpuId(0)) >= 1);
            assert!(b1.cost(GpuId(0)) >= 3);
            drop(g);
        });
        let g = board
            .pick_and_acquire(Policy::LeastLoaded, 5, |_| true)
            .expect("both gpus are eligible");
        assert!(board.in_flight(g.gpu()) >= 1);
        assert!(board.cost(g.gpu()) >= 5);
        drop(g);
        t.join().unwrap();
        for gpu in [GpuId(0), GpuId(1)] {
            assert_eq!(board.in_flight(gpu), 0);
            assert_eq!(board.cost(gpu), 0);
        }
        let allocs: u64 = (0..2)
            .map(|g| board.stats(GpuId(g)).unwrap().allocations)
            .sum();
        assert_eq!(allocs, 2);
        let releases: u64 = (0..2)
            .map(|g| board.stats(GpuId(g)).unwrap().releases)
            .sum();
        assert_eq!(releases, 2);
    });
}

/// Two routers (`PowerOfTwoChoices` and `LeastLoaded`) reserve at selection time on a board
/// whose GPU 1 is ineligible: in every interleaving each pick lands on an eligible GPU and the
/// balance returns to zero. (That they split is checked by the next model.)
#[test]
fn concurrent_pick_and_acquire_only_lands_on_eligible_gpus() {
    run_model("load::pick_eligible", || {
        let board = Arc::new(LoadBoard::new(3));
        let b1 = Arc::clone(&board);
        let t = thread::spawn(move || {
            let g = b1
                .pick_and_acquire(Policy::PowerOfTwoChoices, 1, |g| g != GpuId(1))
                .unwrap();
            assert_ne!(g.gpu(), GpuId(1));
            g.gpu()
        });
        let g = board
            .pick_and_acquire(Policy::LeastLoaded, 1, |g| g != GpuId(1))
            .unwrap();
        assert_ne!(g.gpu(), GpuId(1));
        let other = t.join().unwrap();
        // The other guard was dropped before join; ours is still live.
        assert_eq!(board.in_flight(g.gpu()), 1);
        assert!(other == GpuId(0) || other == GpuId(2));
        drop(g);
        assert!((0..3).all(|i| board.load(GpuId(i)) == 0));
    });
}

/// Two `LeastLoaded` routers on a board whose GPU 1 is ineligible: when the second router picks
/// after the first one's reservation is visible (it saw the first router's Release flag, set
/// after its acquire), it picks the other eligible GPU. Both orders are reached. (The previous
/// model never checked this; a least-loaded pick that ignored the loads passed every load model.)
#[test]
fn least_loaded_routers_split_once_a_reservation_is_visible() {
    run_model_outcomes("load::least_loaded_split", &["after", "raced"], || {
        let board = Arc::new(LoadBoard::new(3));
        let acquired = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let first = {
            let (board, acquired, done) =
                (Arc::clone(&board), Arc::clone(&acquired), Arc::clone(&done));
            thread::spawn(move || {
                let g = board
                    .pick_and_acquire(Policy::LeastLoaded, 1, |g| g != GpuId(1))
                    .unwrap();
                // Release: the reservation above happens-before a pick that sees this flag.
                acquired.store(true, Ordering::Release);
                // Hold the reservation until the other router has picked.
                // Acquire: pairs with the Release store below (only ends the wait).
                while !done.load(Ordering::Acquire) {
                    thread::yield_now();
                }
                g.gpu()
            })
        };
        // Acquire: pairs with the Release store above.
        let after = acquired.load(Ordering::Acquire);
        let g = board
            .pick_and_acquire(Policy::LeastLoaded, 1, |g| g != GpuId(1))
            .unwrap();
        // Release: see the wait above.
        done.store(true, Ordering::Release);
        let other = first.join().unwrap();
        assert_ne!(g.gpu(), GpuId(1));
        assert_ne!(other, GpuId(1));
        if after {
            assert_ne!(
                g.gpu(),
                other,
                "picked the GPU the other router had reserved"
            );
        }
        drop(g);
        assert!((0..3).all(|i| board.load(GpuId(i)) == 0));
        if after {
            "after"
        } else {
            "raced"
        }
    });
}

/// Eligibility flips concurrently (as health does): a pick only returns a GPU for which the
/// predicate said `true` in that call, and a GPU made ineligible before the pick started (here:
/// before the spawn) is never returned.
#[test]
fn pick_never_returns_an_ineligible_gpu_while_eligibility_changes() {
    run_model("load::pick_with_flipping_eligibility", || {
        let board = Arc::new(LoadBoard::new(2));
        let usable = Arc::new([AtomicBool::new(true), AtomicBool::new(false)]);
        let u1 = Arc::clone(&usable);
        let flipper = thread::spawn(move || {
            // Relaxed: the flags carry no data; the model checks what picks can observe.
            u1[1].store(true, Ordering::Relaxed);
            // Relaxed: as above.
            u1[0].store(false, Ordering::Relaxed);
        });
        for policy in [Policy::RoundRobin, Policy::LeastLoaded] {
            let said_yes = std::cell::Cell::new([false; 2]);
            let picked = board.pick(policy, |g| {
                // Relaxed: see above.
                let ok = usable[g.index()].load(Ordering::Relaxed);
                if ok {
                    let mut s = said_yes.get();
                    s[g.index()] = true;
                    said_yes.set(s);
                }
                ok
            });
            if let Some(g) = picked {
                assert!(
                    said_yes.get()[g.index()],
                    "{policy}: picked {g} without eligibility"
                );
            }
        }
        flipper.join().unwrap();
        // After the join gpu0 is ineligible for sure.
        for policy in [
            Policy::RoundRobin,
            Policy::LeastLoaded,
            Policy::PowerOfTwoChoices,
        ] {
            // Relaxed: the join ordered the flipper's stores before these loads.
            let p = board.pick(policy, |g| usable[g.index()].load(Ordering::Relaxed));
            assert_eq!(p, Some(GpuId(1)));
        }
    });
}

/// Two routers race for the last units of load on a GPU near its limit (a held guard leaves
/// room for exactly one of them: 65537 units, where one router wants 65537 (cost 65536, always
/// the compare-and-swap, through `try_acquire`) and the other 1 (cost 0, a `fetch_add` far
/// below the limits, through `pick_and_acquire`), and both together need 65538) while a third
/// thread watches the counters: exactly one is admitted, the other gets `Overflow`, and
/// everything returns to zero. Near a limit both take the compare-and-swap, so the watcher
/// never sees the word below the held guard nor above the loads actually admitted (a refused
/// `fetch_add` would show as one more request; a carry out of a field as a value outside both
/// bounds). Both routers win in some interleaving.
#[test]
fn racing_acquires_for_the_last_unit_admit_exactly_one() {
    use freelane_load::{LoadError, MAX_COST, MAX_LOAD};
    const BIG: u64 = 1 << 16; // the smallest cost acquired with a compare-and-swap
    run_model_outcomes("load::limit_race", &["first", "second"], || {
        let board = Arc::new(LoadBoard::new(1));
        // Score after: MAX_LOAD - (BIG + 1), room for BIG's request (BIG + 1) or cost 0's (1).
        let held = board.acquire(GpuId(0), MAX_COST - BIG - 1);
        assert_eq!(board.load(GpuId(0)), MAX_LOAD - BIG - 1);
        let racers: Vec<_> = (0..2)
            .map(|i| {
                let b = Arc::clone(&board);
                thread::spawn(move || {
                    if i == 0 {
                        match b.try_acquire(GpuId(0), BIG) {
                            Ok(g) => Some(g),
                            Err(LoadError::Overflow { .. }) => None,
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    } else {
                        // `None` on overflow (its GPU is the only one).
                        b.pick_and_acquire(Policy::LeastLoaded, 0, |_| true)
                    }
                })
            })
            .collect();
        let watcher = {
            let b = Arc::clone(&board);
            thread::spawn(move || {
                let (load, in_flight) = (b.load(GpuId(0)), b.in_flight(GpuId(0)));
                assert!(
                    (MAX_LOAD - BIG - 1..=MAX_LOAD).contains(&load),
                    "load {load} outside [held, MAX_LOAD] while a guard is held"
                );
                assert!((1..=2).contains(&in_flight), "in flight {in_flight}");
            })
        };
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        watcher.join().unwrap();
        let admitted = results.iter().filter(|r| r.is_some()).count();
        assert_eq!(admitted, 1, "exactly one router fits");
        let expected = if results[0].is_some() {
            MAX_LOAD
        } else {
            MAX_LOAD - BIG
        };
        assert_eq!(board.load(GpuId(0)), expected);
        let outcome = if results[0].is_some() {
            "first"
        } else {
            "second"
        };
        drop(results);
        drop(held);
        assert_eq!((board.in_flight(GpuId(0)), board.load(GpuId(0))), (0, 0));
        outcome
    });
}

/// The refused-`fetch_add` path: one router picks the only GPU while it is idle (far below the
/// limits, so its acquire takes the `fetch_add`), another fills it at once (a cost of
/// `MAX_COST`, always the compare-and-swap). When the fill lands between the first router's
/// reading and its `fetch_add`, that add is refused, taken back, and the compare-and-swap second
/// look refuses too. In every interleaving exactly one router is admitted, a watcher sees at most
/// one refused add's excess (one request, one unit of load) and never more allocations than
/// admitted acquires (a refused one is not counted), and everything returns to zero; the
/// interleaving where the watcher catches the refused add is reached.
#[test]
fn a_fetch_add_from_a_stale_reading_is_refused_and_taken_back() {
    use freelane_load::{LoadError, MAX_COST, MAX_LOAD};
    let outcomes = &["small", "big", "big, refused add seen"];
    run_model_outcomes("load::stale_fetch_add", outcomes, || {
        let board = Arc::new(LoadBoard::new(1));
        let small = {
            let b = Arc::clone(&board);
            thread::spawn(move || b.pick_and_acquire(Policy::LeastLoaded, 0, |_| true))
        };
        let big = {
            let b = Arc::clone(&board);
            thread::spawn(move || match b.try_acquire(GpuId(0), MAX_COST) {
                Ok(g) => Some(g),
                Err(LoadError::Overflow { .. }) => None,
                Err(e) => panic!("unexpected error {e}"),
            })
        };
        let watcher = {
            let b = Arc::clone(&board);
            thread::spawn(move || {
                let (in_flight, load) = (b.in_flight(GpuId(0)), b.load(GpuId(0)));
                assert!(in_flight <= 2, "in flight {in_flight}");
                assert!(load <= MAX_LOAD + 1, "load {load}");
                // Allocations are counted only once admitted: never the refused one.
                let allocations = b.stats(GpuId(0)).unwrap().allocations;
                assert!(allocations <= 1, "allocations {allocations}");
                // Two in flight with one admitted at most: a refused add not yet taken back.
                in_flight == 2
            })
        };
        let (small, big) = (small.join().unwrap(), big.join().unwrap());
        let refused_add_seen = watcher.join().unwrap();
        assert_eq!(
            usize::from(small.is_some()) + usize::from(big.is_some()),
            1,
            "exactly one router fits"
        );
        let outcome = match (&big, refused_add_seen) {
            (None, false) => "small",
            (None, true) => panic!("a refused add seen although the small router was admitted"),
            (Some(_), false) => "big",
            (Some(_), true) => "big, refused add seen",
        };
        assert_eq!(
            board.load(GpuId(0)),
            if big.is_some() { MAX_LOAD } else { 1 }
        );
        drop((small, big));
        assert_eq!((board.in_flight(GpuId(0)), board.load(GpuId(0))), (0, 0));
        assert_eq!(board.stats(GpuId(0)).unwrap().allocations, 1);
        outcome
    });
}
