//! The `heirloom.v1` gRPC contract: generated messages, clients and servers, and the
//! conversions between the contract's shared messages and the core types
//! (`convert.rs`: architectures, hyperparameters, tensor statuses and adjustments), so
//! that coordinator, worker and CLI read them the same way. Nothing else: how to connect
//! lives in `heirloom-client`.

mod convert;

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("heirloom.v1");
    include!(concat!(env!("OUT_DIR"), "/heirloom.v1.serde.rs"));

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/heirloom_descriptor.bin"));
}
