//! Only the worker links libtorch (ARCHITECTURE.md's first invariant): the coordinator
//! and the CLI build without it, with their tests and benches, and so does this harness,
//! so `cargo test -p heirloom-coordinator` never builds libtorch; and the worker links no
//! store or database, reaching them only through the coordinator.

use std::process::Command;

/// The packages in `package`'s dependency tree along `edges` whose names are in `names`.
fn packages_in(package: &str, edges: &str, names: &[&str]) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--package", package])
        .args(["--edges", edges, "--prefix", "none"])
        .args(["--format", "{p}"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .filter(|line| names.contains(&line.split(' ').next().unwrap_or_default()))
        .map(str::to_string)
        .collect()
}

/// The packages in `package`'s dependency tree (tests and benches included) that link
/// libtorch.
fn libtorch_in(package: &str) -> Vec<String> {
    packages_in(
        package,
        "normal,build,dev",
        &["tch", "torch-sys", "heirloom-worker"],
    )
}

#[test]
fn only_the_worker_links_libtorch() {
    assert!(
        !libtorch_in("heirloom-worker").is_empty(),
        "the worker's tree shows tch: the check sees what it looks for"
    );
    for package in ["heirloom-coordinator", "heirloom-cli", "heirloom-testing"] {
        let linked = libtorch_in(package);
        assert!(
            linked.is_empty(),
            "{package} depends on {linked:?}, which links libtorch"
        );
    }
}

/// A worker reaches the store only through `ArtifactService` (ARCHITECTURE.md): the worker
/// binary links no object store, no database driver and not the coordinator.
#[test]
fn the_worker_reaches_no_store_or_database() {
    let reached = packages_in(
        "heirloom-worker",
        "normal,build",
        &["object_store", "sqlx", "heirloom-coordinator"],
    );
    assert!(reached.is_empty(), "the worker links {reached:?}");
    assert!(
        !packages_in("heirloom-coordinator", "normal", &["object_store"]).is_empty(),
        "the coordinator's tree shows object_store: the check sees what it looks for"
    );
}
