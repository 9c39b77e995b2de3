//! Every experiment file loads: all its runs of all its profiles deserialise and validate (the
//! sweep loader checks every profile, not only the selected one), so no file can rot unnoticed.

use std::path::Path;

use std::time::Duration;

use bst::sweep::{run_sweep, Sweep, SweepOptions};

#[test]
fn every_experiment_file_and_profile_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let sweep = Sweep::load(&file, None, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!sweep.runs.is_empty(), "{}: no runs", file.display());
    }
}

/// Every experiment file has a `smoke` profile, and it trains, evaluates and publishes end to end
/// (a few steps of tiny models): a file whose runs no longer train fails here, not in a user's
/// hour-long sweep.
#[test]
fn every_experiment_file_runs_end_to_end_under_its_smoke_profile() {
    tch::set_num_threads(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    let out = tempfile::tempdir().unwrap();
    for file in files {
        let mut opts = SweepOptions::new(&file);
        opts.profile = Some("smoke".into());
        opts.results_root = out.path().to_path_buf();
        opts.device = "cpu".parse().unwrap();
        opts.progress = false;
        opts.log_every = Duration::ZERO;
        opts.fail_fast = true;
        let outcome = run_sweep(&opts).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        assert_eq!(outcome.failed, 0, "{}", file.display());
        assert_eq!(outcome.trained, outcome.sweep.runs.len(), "{}: every run trained", file.display());
        let csv = std::fs::read_to_string(outcome.results_dir.join("runs.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + outcome.sweep.runs.len(), "{}: one row per run", file.display());
        let report = std::fs::read_to_string(outcome.results_dir.join("report.md")).unwrap();
        // a paper table is laid out beside ours; answers are broken down by distance
        let sections = [(outcome.sweep.studies.iter().any(|s| s.paper_table.is_some()), "**The paper's table beside ours.**"), (file.ends_with("longrange.toml"), "**Accuracy by distance**")];
        for (expected, section) in sections {
            assert_eq!(report.contains(section), expected, "{}: {section}", file.display());
        }
        if let Some(msrnn) = &outcome.sweep.msrnn {
            // every TRANSFORMER run: the full cache + each policy x budget; every other run: one row
            let transformers = outcome.sweep.runs.iter().filter(|r| r.config.model.arch.to_string() == "TRANSFORMER").count();
            let expected = transformers * (1 + msrnn.policies.len() * msrnn.budgets.len()) + (outcome.sweep.runs.len() - transformers);
            let rows = std::fs::read_to_string(outcome.results_dir.join("msrnn.csv")).unwrap();
            assert_eq!(rows.lines().count(), 1 + expected, "{}: msrnn.csv", file.display());
            assert!(report.contains("## Multi-state RNNs") && outcome.results_dir.join("msrnn_state.png").exists(), "{}", file.display());
        }
    }
}
