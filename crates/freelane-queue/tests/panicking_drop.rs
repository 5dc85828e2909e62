//! A value whose `Drop` panics while a container is dropped: the other values are still dropped
//! exactly once (as with std's collections).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use freelane_queue::{BoundedQueue, Queue, RequestTable};

/// Counts its drops; the armed one panics (unless already unwinding).
struct Bomb(bool, Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        // Relaxed: read after the drop returns, on this thread.
        self.1.fetch_add(1, Ordering::Relaxed);
        if self.0 && !std::thread::panicking() {
            panic!("boom");
        }
    }
}

/// Pushes `n` bombs through `push`, the `armed`-th one armed, drops the container (which must
/// panic once), and returns how many bombs were dropped.
fn drops_after_panicking_drop<C>(
    n: usize,
    armed: usize,
    make: impl Fn() -> C,
    push: fn(&C, Bomb),
) -> usize {
    let drops = Arc::new(AtomicUsize::new(0));
    let c = make();
    for i in 0..n {
        push(&c, Bomb(i == armed, Arc::clone(&drops)));
    }
    assert!(
        catch_unwind(AssertUnwindSafe(|| drop(c))).is_err(),
        "the armed drop panics"
    );
    // Relaxed: this thread did all the drops.
    drops.load(Ordering::Relaxed)
}

#[test]
fn queue_drops_the_rest() {
    // 2001 values span two segments; the armed one is in each position class. Under miri (a
    // few milliseconds per push with tree borrows) one value just past the first segment's
    // boundary, and two positions: inside the first segment and first in the second.
    let (n, armed_at): (usize, &[usize]) = if cfg!(miri) {
        (1100, &[5, 1024])
    } else {
        (2001, &[0, 5, 1023, 1024, 2000])
    };
    for &armed in armed_at {
        let dropped = drops_after_panicking_drop(n, armed, Queue::new, |q, b| q.push(b));
        assert_eq!(dropped, n, "armed at {armed}");
    }
}

#[test]
fn queue_with_some_values_popped_drops_the_rest() {
    let drops = Arc::new(AtomicUsize::new(0));
    let q = Queue::new();
    // The pops move the head into the second segment; the armed value is after it.
    let (n, popped, armed) = if cfg!(miri) {
        (1100, 1030, 1060)
    } else {
        (1500, 1100, 1200)
    };
    for i in 0..n {
        q.push(Bomb(i == armed, Arc::clone(&drops)));
    }
    for _ in 0..popped {
        drop(q.pop().unwrap());
    }
    assert!(catch_unwind(AssertUnwindSafe(|| drop(q))).is_err());
    // Relaxed: this thread did all the drops.
    assert_eq!(drops.load(Ordering::Relaxed), n);
}

#[test]
fn bounded_queue_drops_the_rest() {
    for armed in [0, 2, 3] {
        let dropped = drops_after_panicking_drop(
            4,
            armed,
            || BoundedQueue::with_capacity(4),
            |q, b| assert!(q.try_push(b).is_ok()),
        );
        assert_eq!(dropped, 4, "armed at {armed}");
    }
    // Wrapped around: head is not at index 0.
    let drops = Arc::new(AtomicUsize::new(0));
    let q = BoundedQueue::with_capacity(3);
    for i in 0..5 {
        assert!(q.try_push(Bomb(i == 3, Arc::clone(&drops))).is_ok());
        if i < 2 {
            drop(q.pop().unwrap());
        }
    }
    assert!(catch_unwind(AssertUnwindSafe(|| drop(q))).is_err());
    // Relaxed: this thread did all the drops.
    assert_eq!(drops.load(Ordering::Relaxed), 5);
}

#[test]
fn request_table_drops_the_rest() {
    for armed in [0, 2, 3] {
        let dropped = drops_after_panicking_drop(
            4,
            armed,
            || RequestTable::with_capacity(4),
            |t, b| assert!(t.insert(b).is_ok()),
        );
        assert_eq!(dropped, 4, "armed at {armed}");
    }
}
