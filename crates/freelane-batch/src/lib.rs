//! Dynamic batcher: per-GPU lanes, max batch size, token budget, max wait and iteration-level batching.
//!
//! **Skeleton:** nothing is implemented yet; built under issue 6.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
