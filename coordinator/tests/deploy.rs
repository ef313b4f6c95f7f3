//! The deploy manifests, checked by real validators: `kubernetes-validate` (the
//! Kubernetes API's schemas, strict: unknown fields are errors) and `docker-compose
//! config` (the Compose schema). Each validator is first shown a broken file, so a
//! validator that passes everything fails this test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).to_path_buf()
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program} runs (scripts/setup.sh installs it): {err}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_kubernetes_manifests_pass_strict_schema_validation() {
    let broken = tempfile::tempdir().unwrap();
    let typo = broken.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n  \
         selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    \
         spec: {containers: [{name: c, image: i}]}\n",
    )
    .unwrap();
    let refused = run(
        "kubernetes-validate",
        &["--strict".as_ref(), typo.as_os_str()],
    );
    assert!(!refused.status.success(), "{}", text(&refused));

    let mut manifests: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 4, "{manifests:?}");
    let mut args: Vec<&std::ffi::OsStr> = vec!["--strict".as_ref()];
    args.extend(manifests.iter().map(|path| path.as_os_str()));
    let checked = run("kubernetes-validate", &args);
    let verdict = text(&checked);
    println!("{verdict}");
    assert!(checked.status.success(), "{verdict}");
    for resource in [
        "deployment/heirloom-coordinator",
        "service/heirloom-coordinator",
        "deployment/heirloom-gpu-worker",
        "secret/heirloom-tls",
        "secret/heirloom-worker-token",
    ] {
        assert!(
            verdict.contains(&format!("passed for resource {resource}")),
            "{resource} was not checked:\n{verdict}"
        );
    }
}

#[test]
fn the_compose_file_passes_docker_compose_config() {
    let broken = tempfile::tempdir().unwrap();
    let typo = broken.path().join("compose.yaml");
    std::fs::write(&typo, "services:\n  coordinator:\n    imagee: heirloom\n").unwrap();
    let refused = run(
        "docker-compose",
        &[
            "-f".as_ref(),
            typo.as_os_str(),
            "config".as_ref(),
            "-q".as_ref(),
        ],
    );
    assert!(!refused.status.success(), "{}", text(&refused));

    let compose = deploy().join("compose.yaml");
    let checked = run(
        "docker-compose",
        &["-f".as_ref(), compose.as_os_str(), "config".as_ref()],
    );
    let resolved = text(&checked);
    assert!(checked.status.success(), "{resolved}");
    for service in [
        "postgres:",
        "objects:",
        "coordinator:",
        "worker:",
        "gpu-worker:",
    ] {
        assert!(resolved.contains(service), "{service} missing:\n{resolved}");
    }
    assert!(
        resolved.contains("capabilities:") && resolved.contains("gpu"),
        "{resolved}"
    );
}
