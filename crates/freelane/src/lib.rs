//! The freelane facade (re-exports of the lock-free crates) and the multi-GPU `Coordinator`.
//!
//! **Skeleton:** nothing is implemented yet; built under issue 6.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
