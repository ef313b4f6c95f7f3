//! The Heirloom worker: connects out to a coordinator, receives jobs on a stream, trains
//! them with libtorch and reports progress and results.
//!
//! `agent` holds the session and the leases, `client` the retried calls about one job,
//! `assignment` the conversion between assignments and results and the worker's files.
//! Only this crate links libtorch, and only `train/` touches `tch`.

pub mod agent;
mod assignment;
pub mod cache;
mod client;
pub mod config;
pub mod error;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
