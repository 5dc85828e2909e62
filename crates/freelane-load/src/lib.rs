//! Atomic per-GPU load counters (`LoadBoard`, `GpuId`, `Policy`, `LoadGuard`) and selection policies.
//!
//! **Skeleton:** nothing is implemented yet; the API is specified in DESIGN.md and built under issue 4.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
