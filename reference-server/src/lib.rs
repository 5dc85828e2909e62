//! `freelane-server`: the reference HTTP inference server.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod executor;
pub mod model;
