//! Tidy tests, in the spirit of rust-analyzer's: they read the coordinator's source and
//! fail, naming file and line, where it breaks an invariant of ARCHITECTURE.md.
//!
//! - Only `grpc/convert.rs` touches prost messages. The other files of `grpc/` name only
//!   their RPCs' `pb::*Request` / `pb::*Response` types and the generated `pb::*_server`
//!   modules (and import `heirloom_proto::v1 as pb` for that); no file outside `grpc/`
//!   names `pb::`, `heirloom_proto`, `prost` or `prost_types`.
//! - Only `db/` speaks SQL: no file outside it names `sqlx`.
//! - Every file of `db/` and `grpc/` opens with a `//!` header saying what it owns.
//! - `db/` never imports `auth` (who is calling is `domain::Caller`), and the library
//!   never names `anyhow` (only `main.rs` does; the library returns its own errors).
//! - Across the workspace: inside the worker only `train/` calls `tch` (`error.rs` only
//!   names its error type; that no other crate links libtorch, and that the worker links
//!   no store or database, is `testing/tests/libtorch.rs`); nothing is ever unpickled;
//!   lineage rows are never updated or deleted.
//!
//! Comment lines are skipped, so headers may name what they forbid. Each exception is in
//! [`ALLOWED`] with its reason; an exception that no longer matches any line fails too,
//! so the list only shrinks.

use std::path::{Path, PathBuf};

/// A line of `file` (relative to `src/`) containing `text` may break the rules above.
struct Allowed {
    file: &'static str,
    text: &'static str,
    reason: &'static str,
}

const ALLOWED: &[Allowed] = &[
    Allowed {
        file: "grpc/mod.rs",
        text: "pb::FILE_DESCRIPTOR_SET",
        reason: "reflection serves the encoded descriptor set: bytes, not a message",
    },
    Allowed {
        file: "grpc/workers.rs",
        text: "Result<pb::Assignment, Status>",
        reason: "StreamAssignments returns `stream Assignment`, with no response wrapper, so \
                 its stream type names the message (built by convert::assignment_to_proto)",
    },
    Allowed {
        file: "auth.rs",
        text: "<prost_types::FileDescriptorSet as prost::Message>::decode(",
        reason: "a unit test reads the descriptor set to check every method has a role entry",
    },
    Allowed {
        file: "auth.rs",
        text: "heirloom_proto::v1::FILE_DESCRIPTOR_SET",
        reason: "the same unit test",
    },
    Allowed {
        file: "error.rs",
        text: "sqlx::",
        reason: "the error enums wrap database and migration errors (SQLSTATE codes are read \
                 in db/mod.rs)",
    },
    Allowed {
        file: "notifier.rs",
        text: "sqlx::",
        reason: "LISTEN needs a connection of its own outside the pool (PgListener)",
    },
];

/// A rule broken on one line.
struct Violation {
    file: String,
    line: usize,
    text: String,
    rule: String,
}

#[test]
fn only_convert_touches_prost_and_only_db_speaks_sql() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut convert_seen = false;
    for path in rust_files(&src) {
        let file = relative(&src, &path);
        let source = std::fs::read_to_string(&path).unwrap();
        convert_seen |= file == "grpc/convert.rs" && source.contains("pb::");
        for (index, line) in source.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for rule in broken_rules(&file, line) {
                violations.push(Violation {
                    file: file.clone(),
                    line: index + 1,
                    text: line.trim().to_string(),
                    rule,
                });
            }
        }
    }
    assert!(
        convert_seen,
        "read no grpc/convert.rs naming pb:: under {}",
        src.display()
    );

    let mut used = vec![false; ALLOWED.len()];
    let mut report = Vec::new();
    for violation in &violations {
        let allowed = ALLOWED
            .iter()
            .position(|a| a.file == violation.file && violation.text.contains(a.text));
        match allowed {
            Some(i) => used[i] = true,
            None => report.push(format!(
                "coordinator/src/{}:{}: {}\n    {}",
                violation.file, violation.line, violation.rule, violation.text
            )),
        }
    }
    for (allowed, used) in ALLOWED.iter().zip(used) {
        if !used {
            report.push(format!(
                "coordinator/src/{}: the exception for `{}` ({}) matches nothing any more: \
                 remove it from ALLOWED in tests/tidy.rs",
                allowed.file, allowed.text, allowed.reason
            ));
        }
    }
    assert!(report.is_empty(), "\n{}\n", report.join("\n"));
}

#[test]
fn every_db_and_grpc_file_has_a_module_header() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut missing = Vec::new();
    for directory in ["db", "grpc"] {
        for path in rust_files(&src.join(directory)) {
            let source = std::fs::read_to_string(&path).unwrap();
            let first = source.lines().find(|line| !line.trim().is_empty());
            if !first.is_some_and(|line| line.starts_with("//!")) {
                missing.push(format!(
                    "coordinator/src/{}:1: no `//!` header saying what the module owns and \
                     what it never touches",
                    relative(&src, &path)
                ));
            }
        }
    }
    assert!(missing.is_empty(), "\n{}\n", missing.join("\n"));
}

/// The rules `line` of `file` breaks.
fn broken_rules(file: &str, line: &str) -> Vec<String> {
    let mut broken = Vec::new();
    let in_grpc = file.starts_with("grpc/");
    let convert = file == "grpc/convert.rs";
    if !convert {
        for name in paths_after(line, "pb::") {
            if !in_grpc {
                broken.push(format!("names pb::{name} outside grpc/"));
            } else if !is_service_signature(&name) {
                broken.push(format!(
                    "names pb::{name}: a service names only its *Request/*Response types and \
                     *_server modules; build or read that message in grpc/convert.rs"
                ));
            }
        }
        let proto_import = in_grpc && line.trim() == "use heirloom_proto::v1 as pb;";
        if !proto_import && !paths_after(line, "heirloom_proto").is_empty() {
            broken.push("names heirloom_proto outside grpc/convert.rs".into());
        }
        for prost in ["prost::", "prost_types::"] {
            if !paths_after(line, prost).is_empty() {
                broken.push(format!("names {prost} outside grpc/convert.rs"));
            }
        }
    }
    if !file.starts_with("db/") && !paths_after(line, "sqlx").is_empty() {
        broken.push("names sqlx outside db/: only db/ speaks SQL".into());
    }
    broken
}

/// `pb::` types a service file may name: its requests, its responses, and the generated
/// server modules its `impl` and `add_service` lines go through.
fn is_service_signature(name: &str) -> bool {
    name.ends_with("Request") || name.ends_with("Response") || name.ends_with("_server")
}

/// For each place `prefix` starts a path in `line` (not inside another name, nor after
/// `::`, so `tonic_health::pb::` is not ours), the identifier that follows it.
fn paths_after(line: &str, prefix: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (at, _) in line.match_indices(prefix) {
        let before = line[..at].chars().next_back();
        if before.is_some_and(|c| is_name(c) || c == ':') {
            continue;
        }
        let rest = &line[at + prefix.len()..];
        if !prefix.ends_with("::") && rest.starts_with(is_name) {
            continue; // a longer name, such as `sqlx_core`
        }
        found.push(rest.chars().take_while(|&c| is_name(c)).collect());
    }
    found
}

/// Every `.rs` file under `directory`, in a stable order.
fn rust_files(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|err| panic!("{}: {err}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `path` relative to `src`, with `/` between its parts.
fn relative(src: &Path, path: &Path) -> String {
    let parts: Vec<String> = path
        .strip_prefix(src)
        .unwrap()
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

#[test]
fn the_rules_catch_what_they_should_and_nothing_else() {
    let check = |file: &str, line: &str, expected: usize| {
        let broken = broken_rules(file, line);
        assert_eq!(broken.len(), expected, "{file}: {line}: {broken:?}");
    };
    check("grpc/convert.rs", "pb::Model { id }", 0);
    check(
        "grpc/models.rs",
        "request: Request<pb::GetModelRequest>,",
        0,
    );
    check(
        "grpc/models.rs",
        "Ok(Response::new(pb::GetModelResponse {",
        0,
    );
    check(
        "grpc/models.rs",
        "impl pb::model_service_server::ModelService for X {",
        0,
    );
    check("grpc/models.rs", "use heirloom_proto::v1 as pb;", 0);
    check("grpc/models.rs", "Some(pb::PathStep { model })", 1);
    check(
        "grpc/workers.rs",
        "pb::complete_job_request::Result::Error(e) => {}",
        1,
    );
    check("grpc/mod.rs", "tonic_health::pb::FILE_DESCRIPTOR_SET", 0);
    check("grpc/jobs.rs", "use prost::Message;", 1);
    check("dispatch.rs", "let a: pb::Assignment = todo!();", 1);
    check("dispatch.rs", "use heirloom_proto::v1 as pb;", 1);
    check(
        "grpc/artifacts.rs",
        "let tx: sqlx::Transaction<'_, Postgres>;",
        1,
    );
    check("db/jobs.rs", "use sqlx::types::Json;", 0);
    check("notifier.rs", "use sqlx_core::Thing;", 0);
    check("planning.rs", "let prost_like = sqlx_free;", 0);
}

/// The workspace's root, above this crate.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Lines of the `.rs` files under `directory` (relative to the workspace) containing any
/// of `needles`, comment lines skipped, as `path:line: text`.
fn lines_containing(directory: &str, needles: &[&str], skip: &dyn Fn(&str) -> bool) -> Vec<String> {
    let root = workspace();
    let mut found = Vec::new();
    for path in rust_files(&root.join(directory)) {
        let file = relative(&root, &path);
        if skip(&file) {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (index, line) in source.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if needles.iter().any(|needle| line.contains(needle)) {
                found.push(format!("{file}:{}: {}", index + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn db_never_imports_auth_and_the_library_never_names_anyhow() {
    let mut found = lines_containing("coordinator/src/db", &["crate::auth"], &|_| false);
    found.extend(lines_containing("coordinator/src", &["anyhow"], &|file| {
        file == "coordinator/src/main.rs"
    }));
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn the_worker_calls_libtorch_only_from_train() {
    let outside_train =
        lines_containing("worker/src", &["tch::", "use tch", "torch_sys"], &|file| {
            file.starts_with("worker/src/train/")
        });
    let calls: Vec<&String> = outside_train
        .iter()
        .filter(|line| {
            // `error.rs` names libtorch's error type to wrap it; `watch::` is tokio's.
            let wraps_error =
                line.starts_with("worker/src/error.rs:") && line.contains("tch::TchError");
            let is_tch = line.split("tch::").count() > line.split("watch::").count();
            !wraps_error && (is_tch || line.contains("use tch") || line.contains("torch_sys"))
        })
        .collect();
    assert!(
        calls.is_empty(),
        "libtorch called outside worker/src/train/: {calls:#?}"
    );
}

#[test]
fn nothing_is_ever_unpickled() {
    // `CModule::load_on_device` (TorchScript) is the one loader of libtorch's archives, on
    // programs a user imported: SECURITY.md says what it trusts. Weights and datasets are
    // safetensors only.
    let loaders = [
        "torch.load(",
        "pickle",
        "Tensor::load",
        "VarStore::load",
        "load_multi",
        "read_npy",
        "read_npz",
    ];
    let mut found = Vec::new();
    for directory in [
        "coordinator/src",
        "worker/src",
        "cli/src",
        "client/src",
        "core/src",
        "proto/src",
    ] {
        found.extend(lines_containing(directory, &loaders, &|_| false));
    }
    for directory in ["clients/python", "scripts"] {
        for entry in std::fs::read_dir(workspace().join(directory)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "py") {
                let source = std::fs::read_to_string(&path).unwrap();
                for (index, line) in source.lines().enumerate() {
                    if loaders.iter().any(|loader| line.contains(loader)) {
                        found.push(format!("{}:{}: {}", path.display(), index + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn lineage_rows_are_never_updated_or_deleted() {
    let statements = [
        "UPDATE models",
        "DELETE FROM models",
        "UPDATE model_parents",
        "DELETE FROM model_parents",
        "UPDATE model_tensors",
        "DELETE FROM model_tensors",
        "UPDATE model_datasets",
        "DELETE FROM model_datasets",
    ];
    let mut found = lines_containing("coordinator/src", &statements, &|_| false);
    for entry in std::fs::read_dir(workspace().join("migrations")).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        for (index, line) in source.lines().enumerate() {
            if statements.iter().any(|statement| line.contains(statement)) {
                found.push(format!("{}:{}: {}", path.display(), index + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "lineage is append-only:\n{}\n",
        found.join("\n")
    );
}

/// The coordinator's top-level module a file belongs to (`db/jobs.rs` → `db`); `None`
/// for the crate root and the binary.
fn top_module(file: &str) -> Option<String> {
    let first = file.split('/').next()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(module, "lib" | "main")).then(|| module.to_string())
}

#[test]
fn the_coordinator_s_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for path in rust_files(&src) {
        let file = relative(&src, &path);
        let Some(from) = top_module(&file) else {
            continue;
        };
        let source: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let targets = edges.entry(from.clone()).or_default();
        for name in paths_after(&source, "crate::") {
            targets.insert(name);
        }
        // `use crate::{a, b::c}`, over as many lines as it takes: the first name of
        // each member (root items are filtered out below with every non-module).
        for (at, _) in source.match_indices("crate::{") {
            let mut depth = 0;
            let mut member = String::new();
            for c in source[at + "crate::".len()..].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 1 && (c == ',' || c == '{') || depth == 0 {
                    let module = member.trim().split("::").next().unwrap_or_default();
                    if !module.is_empty() {
                        targets.insert(module.to_string());
                    }
                    member.clear();
                } else if depth == 1 {
                    member.push(c);
                }
                if depth == 0 {
                    break;
                }
            }
        }
        targets.remove(&from);
    }
    let modules: std::collections::BTreeSet<String> = edges.keys().cloned().collect();
    for targets in edges.values_mut() {
        targets.retain(|target| modules.contains(target));
    }
    assert!(
        edges
            .get("planning")
            .is_some_and(|targets| targets.contains("db")),
        "the import graph was not read: {edges:?}"
    );
    // A cycle is a module that reaches itself.
    let mut cycles = Vec::new();
    for start in &modules {
        let mut path = vec![start.clone()];
        if let Some(cycle) = reaches(&edges, start, &mut path) {
            cycles.push(cycle.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}\n", cycles.join("\n"));
}

/// Walks from the last module of `path`; the path back to its first, if there is one.
fn reaches(
    edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let last = path.last().unwrap().clone();
    for next in edges.get(&last).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(cycle) = reaches(edges, start, path) {
                return Some(cycle);
            }
            path.pop();
        }
    }
    None
}
