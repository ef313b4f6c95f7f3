//! The `heirloom.v1` gRPC contract: generated messages, clients and servers.
//!
//! Beyond the generated code, conversions to and from the shared spec types
//! (`convert.rs`; the coordinator, worker and CLI convert the rest at their edges) and
//! the client side of blob uploads that the worker and the CLI share (`transfer.rs`),
//! how they connect (`connection.rs`: TLS, token) and local certificates
//! (`certificates.rs`).

pub mod certificates;
pub mod connection;
mod convert;
pub mod display;
pub mod settings;
pub mod transfer;

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("heirloom.v1");
    include!(concat!(env!("OUT_DIR"), "/heirloom.v1.serde.rs"));

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/heirloom_descriptor.bin"));
}
