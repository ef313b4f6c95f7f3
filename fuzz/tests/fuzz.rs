//! The short fuzz run CI does: every seed, every corpus input and every past finding
//! (`fuzz/regressions/`) through every target, then a few thousand mutations each. The
//! long run is `./scripts/fuzz.sh`.

use heirloom_fuzz::engine::{self, Budget};
use heirloom_fuzz::{TARGETS, fuzz_dir, targets};
use std::time::Duration;

#[test]
fn no_target_panics_or_stalls_on_its_corpus_or_on_mutations_of_it() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let mut inputs = targets::seeds(target.name);
        assert!(!inputs.is_empty(), "{} has seeds", target.name);
        inputs.extend(engine::load_dir(
            &fuzz_dir().join("corpus").join(target.name),
        ));
        inputs.extend(engine::load_dir(
            &fuzz_dir().join("regressions").join(target.name),
        ));
        let budget = Budget {
            executions: 4_000,
            duration: Duration::from_secs(4),
        };
        let report = engine::run(target, inputs, budget, 0x5eed);
        assert!(report.executions > 100, "{} ran", target.name);
        assert!(
            report.outcomes > 1,
            "{} reached more than one outcome",
            target.name
        );
        for finding in report.findings {
            failures.push(format!(
                "{}: {} on input {:?}",
                target.name,
                finding.what,
                String::from_utf8_lossy(&finding.input)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_engine_catches_panics_and_keeps_new_outcomes() {
    fn fragile(data: &[u8]) -> String {
        assert!(!data.starts_with(b"boom"), "boom");
        format!("len {}", data.len().min(3))
    }
    let target = heirloom_fuzz::Target {
        name: "fragile",
        run: fragile,
        dictionary: &["boom"],
    };
    let budget = Budget {
        executions: 20_000,
        duration: Duration::from_secs(10),
    };
    let report = engine::run(&target, vec![b"b".to_vec()], budget, 3);
    assert!(
        !report.findings.is_empty(),
        "the dictionary word leads to the panic"
    );
    assert!(report.findings[0].what.contains("boom"));
    assert!(report.outcomes >= 3, "lengths 0..3 are distinct outcomes");
}
