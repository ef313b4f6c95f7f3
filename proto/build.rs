//! Compiles `heirloom/v1/*.proto` with protox (no system `protoc`) and keeps the encoded
//! descriptor set for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "heirloom/v1/common.proto",
        "heirloom/v1/models.proto",
        "heirloom/v1/datasets.proto",
        "heirloom/v1/jobs.proto",
        "heirloom/v1/workers.proto",
        "heirloom/v1/artifacts.proto",
        "heirloom/v1/tokens.proto",
        "heirloom/v1/recipes.proto",
    ];
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("heirloom_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Serde in the protobuf JSON mapping, for the CLI's `--output json`.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .build(&[".heirloom.v1"])?;
    tonic_prost_build::configure()
        // Bulk data as `Bytes`: chunks are slices of one buffer, not copies.
        .bytes(".heirloom.v1.DownloadBlobResponse.data")
        .bytes(".heirloom.v1.ExportModelResponse.data")
        .bytes(".heirloom.v1.UploadBlobsRequest.data")
        .bytes(".heirloom.v1.ImportModelRequest.weights")
        .bytes(".heirloom.v1.RegisterDatasetRequest.content")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=heirloom");
    Ok(())
}
