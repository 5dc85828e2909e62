//! Race-free `SeqLock<T: Pod>` over atomic words and the per-GPU `HealthTable` with its failover/recovery state machine.
//!
//! **Skeleton:** nothing is implemented yet; the API is specified in DESIGN.md and built under issue 4.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
