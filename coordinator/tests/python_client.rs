//! The Python client example (clients/python/example.py) against a real coordinator and
//! worker, with stubs generated from proto/ by grpcio-tools, as a user would; and
//! clients/python/describe.py listing the API by server reflection, as grpcurl would.

use heirloom_testing as support;

use std::path::Path;
use std::process::Command;
use support::Cluster;

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs `clients/python/{script}` with `token`; returns (exit code, stdout, stderr).
fn python_client(
    script: &str,
    cluster: &Cluster,
    stubs: &Path,
    token: &str,
) -> (Option<i32>, String, String) {
    let token_file = stubs.join("token");
    std::fs::write(&token_file, token).unwrap();
    let output = Command::new("python3")
        .arg(repository().join("clients/python").join(script))
        .args([
            "--coordinator",
            cluster.address.trim_start_matches("https://"),
        ])
        .arg("--ca-cert")
        .arg(support::certificates().join(heirloom_client::certificates::CA_CERT))
        .arg("--token-file")
        .arg(&token_file)
        .env("PYTHONPATH", stubs)
        .output()
        .expect("python3 runs (scripts/test.sh puts the virtualenv first on PATH)");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_submits_watches_and_reads_lineage() {
    let cluster = Cluster::start().await;
    let stubs = tempfile::tempdir().unwrap();
    let protos: Vec<_> = std::fs::read_dir(repository().join("proto/heirloom/v1"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let generated = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repository().join("proto"))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args(&protos)
        .output()
        .expect("grpcio-tools is installed (scripts/setup.sh)");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let (code, stdout, stderr) =
        python_client("example.py", &cluster, stubs.path(), &cluster.admin_token);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    for expected in [
        "submitted job ",
        "  JOB_STATE_SUCCEEDED",
        "depth 1: py-base-",
        "tensor fc.weight: TENSOR_STATUS_",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    // What the example printed is what the coordinator holds.
    let models = cluster
        .models()
        .list_models(heirloom_proto::v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let child = models
        .iter()
        .find(|model| model.name.starts_with("py-half-"))
        .expect("the example's model is there");
    assert_eq!(child.source, "direct");

    let (code, stdout, stderr) = python_client("example.py", &cluster, stubs.path(), "not-a-token");
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("refused: UNAUTHENTICATED"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_and_rpc_to_python() {
    let cluster = Cluster::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let admin = support::connect_as(&cluster.address, Some(&cluster.admin_token));
    let reader =
        support::create_token(&admin, "describe-reader", heirloom_proto::v1::Role::Reader).await;
    let (code, stdout, stderr) = python_client("describe.py", &cluster, scratch.path(), &reader);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    // Every RPC in the compiled descriptor set is listed, with its message types.
    let descriptors = <prost_types::FileDescriptorSet as prost::Message>::decode(
        heirloom_proto::v1::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let mut listed = 0;
    for file in &descriptors.file {
        for service in &file.service {
            let service_name = format!("{}.{}", file.package(), service.name());
            assert!(
                stdout.lines().any(|line| line == service_name),
                "{service_name} missing in:\n{stdout}"
            );
            for method in &service.method {
                let request = method.input_type().trim_start_matches('.');
                let line = format!("  rpc {}({}", method.name(), request);
                let streamed = format!("  rpc {}(stream {}", method.name(), request);
                assert!(
                    stdout.contains(&line) || stdout.contains(&streamed),
                    "{line} missing in:\n{stdout}"
                );
                listed += 1;
            }
        }
    }
    assert!(listed > 30, "only {listed} RPCs in the descriptor set");
    for other in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(stdout.contains(other), "{other} missing in:\n{stdout}");
    }

    let (code, stdout, stderr) =
        python_client("describe.py", &cluster, scratch.path(), "not-a-token");
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("refused: UNAUTHENTICATED"), "{stderr}");
}
