//! The client side that Heirloom's binaries share, around the `heirloom.v1` contract:
//! how the worker and the CLI connect (`connection.rs`: TLS, token), local certificates
//! (`certificates.rs`), layered settings for every binary (`settings.rs`), blob uploads
//! (`transfer.rs`) and figures for people (`display.rs`).

pub mod certificates;
pub mod connection;
pub mod display;
pub mod settings;
pub mod transfer;
