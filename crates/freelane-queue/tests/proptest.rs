//! Sequential models: every structure against a plain std model under random operation sequences.
#![cfg(not(miri))]

use std::collections::{HashMap, VecDeque};

use freelane_queue::{BoundedQueue, Queue, RequestTable, Ticket};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum QOp {
    Push(u32),
    Pop,
    /// Push this many in a row (to cross segment boundaries quickly).
    PushMany(u16),
    PopMany(u16),
}

fn qop() -> impl Strategy<Value = QOp> {
    prop_oneof![
        4 => any::<u32>().prop_map(QOp::Push),
        4 => Just(QOp::Pop),
        1 => (0u16..3000).prop_map(QOp::PushMany),
        1 => (0u16..3000).prop_map(QOp::PopMany),
    ]
}

proptest! {
    #[test]
    fn queue_matches_vecdeque(ops in prop::collection::vec(qop(), 0..200)) {
        let q = Queue::new();
        let mut model = VecDeque::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                QOp::Push(v) => { q.push(v); model.push_back(v); }
                QOp::Pop => prop_assert_eq!(q.pop(), model.pop_front()),
                QOp::PushMany(n) => for _ in 0..n {
                    next = next.wrapping_add(1);
                    q.push(next);
                    model.push_back(next);
                },
                QOp::PopMany(n) => for _ in 0..n {
                    prop_assert_eq!(q.pop(), model.pop_front());
                },
            }
            prop_assert_eq!(q.len(), model.len());
            prop_assert_eq!(q.is_empty(), model.is_empty());
        }
    }

    #[test]
    fn bounded_queue_matches_capped_vecdeque(
        cap in 1usize..40,
        ops in prop::collection::vec(qop(), 0..300),
    ) {
        let q = BoundedQueue::with_capacity(cap);
        let mut model = VecDeque::new();
        let push = |q: &BoundedQueue<u32>, model: &mut VecDeque<u32>, v: u32| {
            let r = q.try_push(v);
            if model.len() < cap {
                model.push_back(v);
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err().into_inner(), v);
            }
        };
        for op in ops {
            match op {
                QOp::Push(v) => push(&q, &mut model, v),
                QOp::Pop => prop_assert_eq!(q.pop(), model.pop_front()),
                QOp::PushMany(n) => for i in 0..(n % 64) { push(&q, &mut model, u32::from(i)) },
                QOp::PopMany(n) => for _ in 0..(n % 64) {
                    prop_assert_eq!(q.pop(), model.pop_front());
                },
            }
            prop_assert_eq!(q.len(), model.len());
            prop_assert!(q.len() <= q.capacity());
        }
    }
}

#[derive(Debug, Clone)]
enum TOp {
    Insert(u32),
    /// Index into the list of every ticket ever issued (live or stale).
    Cancel(usize),
    Remove(usize),
    Get(usize),
}

fn top() -> impl Strategy<Value = TOp> {
    prop_oneof![
        3 => any::<u32>().prop_map(TOp::Insert),
        1 => any::<usize>().prop_map(TOp::Cancel),
        2 => any::<usize>().prop_map(TOp::Remove),
        2 => any::<usize>().prop_map(TOp::Get),
    ]
}

proptest! {
    #[test]
    fn request_table_matches_hashmap(
        cap in 1usize..8,
        ops in prop::collection::vec(top(), 0..200),
    ) {
        let table = RequestTable::with_capacity(cap);
        // Model: live tickets -> (value, cancelled).
        let mut model: HashMap<Ticket, (u32, bool)> = HashMap::new();
        let mut issued: Vec<Ticket> = Vec::new();
        for op in ops {
            match op {
                TOp::Insert(v) => match table.insert(v) {
                    Ok(t) => {
                        prop_assert!(model.len() < cap);
                        prop_assert!(!issued.contains(&t), "ticket reissued");
                        model.insert(t, (v, false));
                        issued.push(t);
                    }
                    Err(full) => {
                        prop_assert_eq!(model.len(), cap);
                        prop_assert_eq!(full.into_inner(), v);
                    }
                },
                TOp::Cancel(i) if !issued.is_empty() => {
                    let t = issued[i % issued.len()];
                    let live = model.get_mut(&t).map(|e| e.1 = true).is_some();
                    prop_assert_eq!(table.cancel(t), live);
                }
                TOp::Remove(i) if !issued.is_empty() => {
                    let t = issued[i % issued.len()];
                    prop_assert_eq!(table.remove(t), model.remove(&t).map(|e| e.0));
                }
                TOp::Get(i) if !issued.is_empty() => {
                    let t = issued[i % issued.len()];
                    prop_assert_eq!(table.get(t), model.get(&t).map(|e| e.0));
                    prop_assert_eq!(table.is_cancelled(t), model.get(&t).is_some_and(|e| e.1));
                    prop_assert_eq!(table.contains(t), model.contains_key(&t));
                }
                _ => {}
            }
            prop_assert_eq!(table.len(), model.len());
        }
    }
}
