//! Lock-free logging behind `tracing`: bounded ring, background JSON writer, flush guard and drop-in `MakeWriter`.
//!
//! **Skeleton:** nothing is implemented yet; built under issue 5.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
