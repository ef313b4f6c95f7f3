//! Only the worker links libtorch (ARCHITECTURE.md's first invariant): the coordinator
//! and the CLI build without it, with their tests and benches, and so does this harness,
//! so `cargo test -p heirloom-coordinator` never builds libtorch.

use std::process::Command;

/// The packages in `package`'s dependency tree (tests and benches included) that link
/// libtorch.
fn libtorch_in(package: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--package", package])
        .args(["--edges", "normal,build,dev", "--prefix", "none"])
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
        .filter(|line| {
            let name = line.split(' ').next().unwrap_or_default();
            ["tch", "torch-sys", "heirloom-worker"].contains(&name)
        })
        .map(str::to_string)
        .collect()
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
