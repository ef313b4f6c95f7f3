//! The Heirloom worker: connects out to a coordinator, receives jobs on a stream, trains
//! them with libtorch and reports progress and results.
//!
//! Only this crate links libtorch, and only `train/` touches `tch`.

pub mod agent;
pub mod cache;
pub mod config;
pub mod error;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
