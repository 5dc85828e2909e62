//! Lock-free request queues for multi-GPU serving (work in progress, issue 3).
//!
//! Will hold `Queue<T>` (unbounded MPMC, segment-based, crossbeam-epoch reclamation),
//! `BoundedQueue<T>` (admission control) and `RequestTable<V>` (in-flight requests with
//! generation-checked tickets).
//!
//! **Placeholder:** until issue 3 lands, `Queue` and `BoundedQueue` are a `Mutex<VecDeque>` with
//! the final API, so that dependent crates can be written against the contract. They are correct
//! but not lock-free; nothing here is benchmarked or claimed fast.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

/// Unbounded MPMC FIFO queue (placeholder implementation, see the crate docs).
pub struct Queue<T> {
    inner: Mutex<VecDeque<T>>,
}

impl<T> Queue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(VecDeque::new()),
        }
    }

    /// Appends `value` at the tail.
    pub fn push(&self, value: T) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(value);
    }

    /// Removes the value at the head, or `None` when empty.
    pub fn pop(&self) -> Option<T> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Number of items (exact when no operation is in progress).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `true` when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// The value given back by [`BoundedQueue::try_push`] when the queue is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The value that could not be pushed.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("queue is full")
    }
}

impl<T> std::error::Error for Full<T> {}

/// Bounded MPMC FIFO queue for admission control (placeholder implementation).
pub struct BoundedQueue<T> {
    inner: Mutex<VecDeque<T>>,
    capacity: usize,
}

impl<T> BoundedQueue<T> {
    /// A queue that never holds more than `capacity` items.
    ///
    /// # Panics
    /// If `capacity` is 0.
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(capacity > 0, "BoundedQueue capacity must be at least 1");
        Self {
            inner: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Appends `value`, or gives it back in [`Full`] when the queue holds `capacity` items.
    pub fn try_push(&self, value: T) -> Result<(), Full<T>> {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.capacity {
            return Err(Full(value));
        }
        q.push_back(value);
        Ok(())
    }

    /// Removes the value at the head, or `None` when empty.
    pub fn pop(&self) -> Option<T> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity given at construction.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl<T> fmt::Debug for BoundedQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedQueue")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
