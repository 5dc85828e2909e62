//! Striped lock-free `Histogram`, `Counter`, `Gauge`, a `Registry` and Prometheus text exposition.
//!
//! **Skeleton:** nothing is implemented yet; the Histogram API is specified in DESIGN.md and built under issue 5.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
