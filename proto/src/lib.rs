//! The `heirloom.v1` gRPC contract: generated messages, clients and servers.
//!
//! Nothing here has behaviour; the coordinator, worker and CLI convert these types into
//! their own at their edges.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("heirloom.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/heirloom_descriptor.bin"));
}
