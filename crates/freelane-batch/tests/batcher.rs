//! Rules of batch formation: size, token budget, max wait, deadlines, cancellation, iteration-level
//! batching.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use freelane_batch::{
    Answer, Batch, BatchConfig, BatchConfigError, Batcher, Entry, ErrorKind, ExecError, Handle,
    Lane, Next, Observer, Outcome, OutcomeKind, Pushed, Request,
};

type E = Entry<u64, u64>;

fn entry(v: u64, tokens: u64) -> (E, Handle<u64>) {
    Entry::new(Request::new(v, tokens), ())
}

fn lane() -> Arc<Lane<E>> {
    Arc::new(Lane::new())
}

fn config(size: usize, tokens: u64, wait: Duration) -> BatchConfig {
    BatchConfig::builder()
        .max_batch_size(size)
        .max_batch_tokens(tokens)
        .max_wait(wait)
        .build()
        .unwrap()
}

fn push(l: &Lane<E>, v: u64, tokens: u64) -> Handle<u64> {
    let (e, h) = entry(v, tokens);
    assert_eq!(l.push(e), Pushed::Open);
    h
}

fn payloads(b: &Batch<u64, u64>) -> Vec<u64> {
    b.iter().map(|(_, e)| *e.payload().unwrap()).collect()
}

#[test]
fn next_batch_respects_max_size() {
    let l = lane();
    let handles: Vec<_> = (0..10).map(|i| push(&l, i, 1)).collect();
    let mut b = Batcher::new(
        0,
        Arc::clone(&l),
        config(4, u64::MAX, Duration::from_secs(10)),
    );
    let mut seen = Vec::new();
    for expect in [4, 4, 2] {
        let mut batch = b.try_next_batch().unwrap();
        assert_eq!(batch.active(), expect);
        assert!(batch.active() <= 4);
        seen.extend(payloads(&batch));
        batch.finish_all(|e| e.payload().unwrap() * 10);
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>(), "FIFO, each once");
    for (i, mut h) in handles.into_iter().enumerate() {
        assert!(matches!(h.try_outcome(), Some(Outcome::Completed(v)) if v == i as u64 * 10));
    }
}

#[test]
fn next_batch_blocking_returns_at_once_when_full() {
    let l = lane();
    let _h: Vec<_> = (0..8).map(|i| push(&l, i, 1)).collect();
    let mut b = Batcher::new(
        0,
        Arc::clone(&l),
        config(8, u64::MAX, Duration::from_secs(30)),
    );
    let t = Instant::now();
    let batch = b.next_batch_blocking().unwrap();
    assert_eq!(batch.active(), 8);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a full batch must not wait"
    );
}

#[test]
fn next_batch_respects_token_budget() {
    let l = lane();
    // costs 4, 4, 4, 1: budget 10 takes 4+4, then 4+1.
    let _h: Vec<_> = [4, 4, 4, 1]
        .iter()
        .enumerate()
        .map(|(i, &t)| push(&l, i as u64, t))
        .collect();
    let mut b = Batcher::new(0, Arc::clone(&l), config(32, 10, Duration::ZERO));
    let mut batch = b.try_next_batch().unwrap();
    assert_eq!(payloads(&batch), vec![0, 1]);
    assert!(batch.tokens() <= 10);
    batch.finish_all(|_| 0);
    let mut batch = b.try_next_batch().unwrap();
    assert_eq!(
        payloads(&batch),
        vec![2, 3],
        "the entry that did not fit is first in the next batch"
    );
    assert!(batch.tokens() <= 10);
    batch.finish_all(|_| 0);
    assert!(b.try_next_batch().is_none());
    assert_eq!(l.len(), 0);
}

#[test]
fn a_single_entry_always_fits_an_empty_batch() {
    let l = lane();
    let _h = push(&l, 1, 50);
    let mut b = Batcher::new(0, Arc::clone(&l), config(4, 10, Duration::ZERO));
    assert_eq!(b.try_next_batch().unwrap().active(), 1);
}

#[test]
#[cfg_attr(miri, ignore)] // timing
fn next_batch_waits_at_most_max_wait() {
    let l = lane();
    let wait = Duration::from_millis(50);
    let mut b = Batcher::new(0, Arc::clone(&l), config(32, u64::MAX, wait));
    let _h = push(&l, 1, 1);
    let t = Instant::now();
    let batch = b.next_batch_blocking().unwrap();
    let took = t.elapsed();
    assert_eq!(batch.active(), 1);
    assert!(took >= wait - Duration::from_millis(5), "waited {took:?}");
    assert!(took < wait + Duration::from_secs(2), "waited {took:?}");
}

#[test]
#[cfg_attr(miri, ignore)] // timing
fn max_wait_counts_from_the_first_arrival() {
    let l = lane();
    let wait = Duration::from_millis(200);
    let mut b = Batcher::new(0, Arc::clone(&l), config(32, u64::MAX, wait));
    let (e, _h) = Entry::<u64, u64>::new_at(Request::new(1, 1), (), Instant::now() - wait * 2);
    let _ = l.push(e);
    let t = Instant::now();
    let batch = b.next_batch_blocking().unwrap();
    assert_eq!(batch.active(), 1);
    assert!(
        t.elapsed() < wait,
        "a request that already waited max_wait runs at once"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
#[cfg_attr(miri, ignore)] // timing: miri's clock runs while the paused tokio clock does not
async fn async_next_batch_waits_at_most_max_wait() {
    let l = lane();
    let wait = Duration::from_millis(50);
    let mut b = Batcher::new(0, Arc::clone(&l), config(32, u64::MAX, wait));
    let _h = push(&l, 1, 1);
    let t = tokio::time::Instant::now();
    let batch = b.next_batch().await.unwrap();
    assert_eq!(batch.active(), 1);
    let took = t.elapsed();
    // Paused clock: the timer fires at arrival + max_wait (tokio's timer rounds up to 1 ms).
    assert!(took >= wait - Duration::from_millis(1), "waited {took:?}");
    assert!(took <= wait + Duration::from_millis(2), "waited {took:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn async_next_batch_respects_max_size_and_collects_late_arrivals() {
    let l = lane();
    let mut b = Batcher::new(
        0,
        Arc::clone(&l),
        config(3, u64::MAX, Duration::from_secs(30)),
    );
    let l2 = Arc::clone(&l);
    let producer = tokio::spawn(async move {
        let mut hs = Vec::new();
        for i in 0..3 {
            tokio::task::yield_now().await;
            hs.push(push(&l2, i, 1));
        }
        hs
    });
    let batch = b.next_batch().await.unwrap();
    assert_eq!(batch.active(), 3, "closes when full, long before max_wait");
    drop(batch);
    drop(producer.await.unwrap());
}

#[test]
fn idle_lane_sleeps_and_wakes_on_push() {
    let l = lane();
    let mut b = Batcher::new(0, Arc::clone(&l), config(1, u64::MAX, Duration::ZERO));
    let l2 = Arc::clone(&l);
    let consumer = thread::spawn(move || {
        let mut batch = b.next_batch_blocking().unwrap();
        let v = payloads(&batch);
        batch.finish_all(|_| 0);
        v
    });
    thread::sleep(Duration::from_millis(20));
    let _h = push(&l2, 42, 1);
    assert_eq!(consumer.join().unwrap(), vec![42]);
}

#[test]
fn closed_empty_lane_ends_next_batch() {
    let l = lane();
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let l2 = Arc::clone(&l);
    let consumer = thread::spawn(move || b.next_batch_blocking().is_none());
    thread::sleep(Duration::from_millis(10));
    l2.close();
    assert!(consumer.join().unwrap());
}

#[test]
fn push_after_close_is_reported_closed() {
    let l = lane();
    l.close();
    let (e, _h) = entry(1, 1);
    assert_eq!(l.push(e), Pushed::Closed);
    assert_eq!(l.drain().count(), 1);
}

#[test]
fn nudge_returns_control_to_the_waiter() {
    let l = lane();
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    l.nudge();
    assert!(matches!(b.next_batch_blocking_until(None), Next::Nudged));
    let deadline = Instant::now() + Duration::from_millis(5);
    assert!(matches!(
        b.next_batch_blocking_until(Some(deadline)),
        Next::Idle
    ));
}

#[test]
fn cancelled_request_is_not_executed() {
    let l = lane();
    let h1 = push(&l, 1, 1);
    let mut h2 = push(&l, 2, 1);
    drop(h1); // the caller went away
    let mut b = Batcher::new(0, Arc::clone(&l), config(8, u64::MAX, Duration::ZERO));
    let mut batch = b.try_next_batch().unwrap();
    assert_eq!(
        payloads(&batch),
        vec![2],
        "the cancelled request never reaches the executor"
    );
    assert_eq!(batch.answered(), 1);
    batch.finish_all(|_| 7);
    assert!(matches!(h2.try_outcome(), Some(Outcome::Completed(7))));
}

#[test]
fn explicitly_cancelled_handle_yields_cancelled() {
    let l = lane();
    let mut h = push(&l, 1, 1);
    h.cancel();
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let batch = b.try_next_batch().unwrap();
    assert!(batch.is_empty());
    assert!(matches!(h.try_outcome(), Some(Outcome::Cancelled)));
}

#[test]
fn expired_request_is_answered_timed_out_and_not_executed() {
    let l = lane();
    let (e, mut h) = Entry::<u64, u64>::new(
        Request::new(1, 1).with_deadline(Instant::now() - Duration::from_millis(1)),
        (),
    );
    let _ = l.push(e);
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let batch = b.try_next_batch().unwrap();
    assert!(batch.is_empty());
    assert!(matches!(h.try_outcome(), Some(Outcome::TimedOut)));
}

#[test]
fn prune_drops_entries_cancelled_or_expired_during_execution() {
    let l = lane();
    let h1 = push(&l, 1, 1);
    let (e, mut h2) = Entry::<u64, u64>::new(
        Request::new(2, 1).with_deadline(Instant::now() + Duration::from_secs(3600)),
        (),
    );
    let _ = l.push(e);
    let mut h3 = push(&l, 3, 1);
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let mut batch = b.try_next_batch().unwrap();
    assert_eq!(batch.active(), 3);
    drop(h1);
    let later = Instant::now() + Duration::from_secs(7200);
    assert_eq!(batch.prune(later), 2);
    assert_eq!(payloads(&batch), vec![3]);
    assert!(matches!(h2.try_outcome(), Some(Outcome::TimedOut)));
    batch.finish_all(|_| 3);
    assert!(matches!(h3.try_outcome(), Some(Outcome::Completed(3))));
}

#[test]
fn finished_entry_leaves_without_waiting_for_the_others() {
    let l = lane();
    let mut h0 = push(&l, 0, 1);
    let mut h1 = push(&l, 1, 1);
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let mut batch = b.try_next_batch().unwrap();
    batch.finish(0, 100).unwrap();
    assert!(matches!(h0.try_outcome(), Some(Outcome::Completed(100))));
    assert!(h1.try_outcome().is_none(), "still running");
    assert_eq!(
        batch.finish(0, 5),
        Err(5),
        "a finished slot gives the output back"
    );
    assert_eq!(batch.active(), 1);
    batch.finish(1, 101).unwrap();
    assert!(matches!(h1.try_outcome(), Some(Outcome::Completed(101))));
}

#[test]
fn refill_takes_new_requests_between_steps_up_to_the_limits() {
    let l = lane();
    let _a: Vec<_> = (0..2).map(|i| push(&l, i, 3)).collect();
    let mut b = Batcher::new(0, Arc::clone(&l), config(3, 9, Duration::ZERO));
    let mut batch = b.try_next_batch().unwrap();
    assert_eq!(batch.active(), 2);
    let _c: Vec<_> = (2..6).map(|i| push(&l, i, 3)).collect();
    // One step later: entry 0 finished, room for 2 by size, 2 by tokens (9 - 3 = 6).
    batch.finish(0, 0).unwrap();
    assert_eq!(batch.refill(), 2);
    assert_eq!(batch.active(), 3);
    assert!(batch.tokens() <= 9);
    let joined = batch.joined().to_vec();
    assert_eq!(joined.len(), 2);
    assert!(
        joined.iter().all(|&i| i < 3),
        "slots are reused, indices stay below max size"
    );
    let mut got: Vec<u64> = joined
        .iter()
        .map(|&i| *batch.get(i).unwrap().payload().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec![2, 3]);
    assert_eq!(batch.refill(), 0, "full");
    assert_eq!(l.len(), 2);
    batch.finish_all(|_| 0);
}

#[test]
fn refill_takes_nothing_from_a_paused_lane() {
    let l = lane();
    let _a = push(&l, 0, 1);
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let mut batch = b.try_next_batch().unwrap();
    let _c = push(&l, 1, 1);
    l.set_paused(true);
    assert_eq!(batch.refill(), 0);
    l.set_paused(false);
    assert_eq!(batch.refill(), 1);
    batch.finish_all(|_| 0);
}

#[test]
fn take_unfinished_hands_entries_back_unanswered() {
    let l = lane();
    let mut h = push(&l, 9, 1);
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default());
    let mut batch = b.try_next_batch().unwrap();
    let mut taken = batch.take_unfinished();
    assert_eq!(taken.len(), 1);
    assert!(batch.is_empty());
    assert!(h.try_outcome().is_none());
    let mut e = taken.pop().unwrap();
    e.add_attempt();
    assert_eq!(e.attempts(), 1);
    assert!(e.answer(Outcome::Failed(ExecError::new("boom"))));
    assert!(matches!(h.try_outcome(), Some(Outcome::Failed(err)) if err.message() == "boom"));
}

#[test]
fn entry_dropped_unanswered_answers_failed_dropped() {
    let before = freelane_batch::dropped_unanswered();
    let (e, mut h) = entry(1, 1);
    drop(e);
    assert!(freelane_batch::dropped_unanswered() > before);
    match h.try_outcome() {
        Some(Outcome::Failed(err)) => assert_eq!(err.kind(), ErrorKind::Dropped),
        other => panic!("expected Failed(Dropped), got {other:?}"),
    }
}

#[derive(Default)]
struct Count {
    answered: [AtomicUsize; 4],
    steps: AtomicUsize,
}

impl Observer for Count {
    fn answered(&self, a: &Answer) {
        let i = match a.kind {
            OutcomeKind::Completed => 0,
            OutcomeKind::TimedOut => 1,
            OutcomeKind::Cancelled => 2,
            OutcomeKind::Failed => 3,
        };
        assert!(a.answered >= a.enqueued);
        self.answered[i].fetch_add(1, Ordering::Relaxed);
    }
    fn step(&self, _lane: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn observer_sees_every_answer_and_every_step() {
    let l = lane();
    let obs = Arc::new(Count::default());
    let mut b = Batcher::new(0, Arc::clone(&l), BatchConfig::default())
        .with_observer(Arc::clone(&obs) as Arc<dyn Observer>);
    let h0 = push(&l, 0, 1);
    let _h1 = push(&l, 1, 1);
    let _h2 = push(&l, 2, 1);
    drop(h0);
    let mut batch = b.try_next_batch().unwrap();
    batch.refill();
    let first = batch.iter().next().unwrap().0;
    batch.fail(first, ExecError::new("x"));
    batch.finish_all(|_| 0);
    let a = &obs.answered;
    assert_eq!(
        [0, 1, 2, 3].map(|i| a[i].load(Ordering::Relaxed)),
        [1, 0, 1, 1]
    );
    assert_eq!(obs.steps.load(Ordering::Relaxed), 1);
}

#[test]
fn config_rejects_zero_and_contradictory_limits() {
    let b = BatchConfig::builder;
    assert_eq!(
        b().max_batch_size(0).build(),
        Err(BatchConfigError::ZeroBatchSize)
    );
    assert_eq!(
        b().max_batch_tokens(0).build(),
        Err(BatchConfigError::ZeroTokenBudget)
    );
    assert_eq!(
        b().max_batch_tokens(10).max_request_tokens(11).build(),
        Err(BatchConfigError::RequestLargerThanBatch {
            request: 11,
            batch: 10
        })
    );
    assert_eq!(
        b().max_request_tokens(0).build(),
        Err(BatchConfigError::ZeroRequestTokens)
    );
    assert!(matches!(
        b().max_batch_size(usize::MAX).build(),
        Err(BatchConfigError::BatchSizeTooLarge(_))
    ));
    assert!(matches!(
        b().max_wait(Duration::from_secs(3600)).build(),
        Err(BatchConfigError::WaitTooLong(_))
    ));
    let ok = b().max_batch_size(8).max_batch_tokens(100).build().unwrap();
    assert_eq!(ok.max_request_tokens(), 100, "defaults to the batch budget");
    for e in [
        BatchConfigError::ZeroBatchSize,
        BatchConfigError::ZeroTokenBudget,
        BatchConfigError::WaitTooLong(Duration::from_secs(61)),
    ] {
        let s = e.to_string();
        assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
    }
}

/// The lane's next entry does not fit the batch's token budget: the batch must be returned at
/// once (that entry stays first in line), not after max_wait, and above all not never: the
/// blocking batcher used to hand the entry back and take it again forever.
#[test]
fn over_budget_next_entry_ends_the_batch_at_once() {
    let l = lane();
    let _a = push(&l, 1, 60);
    let _b = push(&l, 2, 50);
    let mut b = Batcher::new(0, Arc::clone(&l), config(8, 100, Duration::from_secs(30)));
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut batch = b.next_batch_blocking().unwrap();
        tx.send(payloads(&batch)).unwrap();
        batch.finish_all(|_| 0);
    });
    let t0 = Instant::now();
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the blocking batcher hung on an over-budget entry");
    assert_eq!(first, vec![1]);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "waited for max_wait although nothing more could join"
    );
    assert_eq!(l.len(), 1, "the entry that did not fit is back in the lane");
    let mut b = Batcher::new(0, Arc::clone(&l), config(8, 100, Duration::ZERO));
    assert_eq!(payloads(&b.try_next_batch().unwrap()), vec![2]);
}

/// The async twin: it used to end only at max_wait, spinning on the runtime thread meanwhile.
#[tokio::test]
#[cfg_attr(miri, ignore)] // tokio's time driver
async fn async_over_budget_next_entry_ends_the_batch_at_once() {
    let l = lane();
    let _a = push(&l, 1, 60);
    let _b = push(&l, 2, 50);
    let mut b = Batcher::new(0, Arc::clone(&l), config(8, 100, Duration::from_secs(3)));
    let t0 = Instant::now();
    let batch = b.next_batch().await.unwrap();
    assert_eq!(payloads(&batch), vec![1]);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "waited {:?} (max_wait) although nothing more could join",
        t0.elapsed()
    );
}

/// A `Batcher` is `Send`: after moving to another thread, a push must wake that thread (it used
/// to keep a waker for the first thread that waited, so the move left it asleep).
#[test]
fn blocking_batcher_moved_to_another_thread_is_woken_by_a_push() {
    let l = lane();
    let mut b = Batcher::new(0, Arc::clone(&l), config(1, u64::MAX, Duration::ZERO));
    let _h = push(&l, 1, 1);
    b.next_batch_blocking().unwrap().finish_all(|_| 0);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut batch = b.next_batch_blocking().unwrap();
        tx.send(payloads(&batch)).unwrap();
        batch.finish_all(|_| 0);
    });
    thread::sleep(Duration::from_millis(50));
    let _h2 = push(&l, 2, 1);
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the moved batcher was not woken by the push");
    assert_eq!(got, vec![2]);
}

/// Dropping a `next_batch` future while its batch is forming (a timeout, a `select!` branch)
/// hands the taken entries back to the lane, in order and unanswered; before, the dropped batch
/// answered them `Failed(Dropped)`.
#[tokio::test(flavor = "current_thread")]
#[cfg_attr(miri, ignore)] // timing
async fn cancelled_next_batch_hands_its_entries_back() {
    let l = lane();
    let mut b = Batcher::new(
        0,
        Arc::clone(&l),
        config(8, u64::MAX, Duration::from_secs(10)),
    );
    let mut h1 = push(&l, 1, 1);
    let mut h2 = push(&l, 2, 1);
    let r = tokio::time::timeout(Duration::from_millis(30), b.next_batch()).await;
    assert!(r.is_err(), "the batch was still forming (max_wait 10 s)");
    assert_eq!(l.len(), 2, "both entries are back in the lane");
    assert!(h1.try_outcome().is_none() && h2.try_outcome().is_none());
    let mut batch = b.try_next_batch().expect("the entries are still there");
    assert_eq!(payloads(&batch), [1, 2]);
    batch.finish_all(|e| *e.payload().unwrap() * 10);
    assert_eq!(h1.await.completed(), Some(10));
    assert_eq!(h2.await.completed(), Some(20));
}

/// A nudge that arrives while items are queued is not consumed by the wait that reports the
/// items: a batch forming at that moment still closes on it (`set_paused` nudges), instead of
/// filling until `max_wait`.
#[test]
#[cfg_attr(miri, ignore)] // timing
fn nudge_with_items_queued_still_closes_the_forming_batch() {
    let l = lane();
    let mut b = Batcher::new(
        0,
        Arc::clone(&l),
        config(32, u64::MAX, Duration::from_secs(5)),
    );
    let _h1 = push(&l, 1, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let consumer = thread::spawn(move || {
        let mut batch = b.next_batch_blocking().unwrap();
        tx.send((Instant::now(), batch.active())).unwrap();
        batch.finish_all(|_| 0);
    });
    thread::sleep(Duration::from_millis(50)); // the consumer waits in phase 2
    let _h2 = push(&l, 2, 1);
    l.set_paused(true);
    let t0 = Instant::now();
    let (closed, n) = rx.recv().unwrap();
    consumer.join().unwrap();
    assert!(
        closed.saturating_duration_since(t0) < Duration::from_secs(2),
        "the batch of {n} closed {:?} after the pause (max_wait 5 s)",
        closed.saturating_duration_since(t0)
    );
}

/// `try_outcome` returns the one outcome once, then `None`; it never reports a second answer.
#[test]
fn try_outcome_returns_the_outcome_once() {
    let (mut e, mut h) = entry(1, 1);
    assert!(h.try_outcome().is_none());
    assert!(e.answer(Outcome::Completed(5)));
    assert_eq!(h.try_outcome().and_then(Outcome::completed), Some(5));
    assert!(h.try_outcome().is_none());
    assert!(h.try_outcome().is_none());
}

/// `finish_all` leaves no stale `joined` slots behind.
#[test]
fn finish_all_clears_joined() {
    let l = lane();
    let _h = push(&l, 1, 1);
    let mut b = Batcher::new(0, Arc::clone(&l), config(8, u64::MAX, Duration::ZERO));
    let mut batch = b.try_next_batch().unwrap();
    batch.refill();
    let _h2 = push(&l, 2, 1);
    assert_eq!(batch.refill(), 1);
    assert_eq!(batch.joined().len(), 1);
    batch.finish_all(|_| 0);
    assert!(batch.joined().is_empty());
    assert_eq!(batch.active(), 0);
}
