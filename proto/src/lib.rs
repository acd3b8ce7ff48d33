//! skiff's public gRPC API, generated from `proto/skiff/v1/*.proto`.
//!
//! This crate holds no hand-written logic: the controller, agent and CLI convert these types to
//! their own domain types at their edges.

pub mod v1 {
    tonic::include_proto!("skiff.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("skiff_descriptor");
}
