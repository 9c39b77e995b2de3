//! The runner end to end with the real binary on the books corpus (fetched by scripts/setup.sh):
//! studies sharing runs, a diverging run recorded while the sweep goes on, `--only`, `report`, the
//! results-folder lock, progress lines in a log, `kill -9` at random moments, and `--jobs`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bst_sweep::lock::ResultsLock;
use bst_sweep::{run_sweep, SweepError, SweepOptions};
use common::rows;

/// Two studies over a tiny model: `depth` (a BST layer at index 0 or 1, against SLIDE) and `lr`
/// (SLIDE at two learning rates, one of them diverging); SLIDE at the base learning rate is in
/// both, so it is trained once.
fn studies(steps: usize) -> String {
    format!(
        r#"
[sweep]
name = "tiny"
seeds = [0, 1]
{}
[[study]]
name = "depth"
plot_x = "model.ssm_layers"
baselines = ["SLIDE"]
[study.grid]
model.ssm_layers = [[0], [1]]
[[study.variant]]
name = "BST"
model.arch = "BST:SH:S4D"
[[study.variant]]
name = "SLIDE"
model.arch = "SLIDE"
not_crossed_with = ["model.ssm_layers"]
[[study]]
name = "lr"
baselines = ["SLIDE"]
[[study.variant]]
name = "SLIDE"
model.arch = "SLIDE"
[[study.variant]]
name = "SLIDE lr 1e6"
model.arch = "SLIDE"
train.lr = 1e6
train.grad_clip = 0.0
"#,
        common::tiny_base(steps)
    )
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("tiny.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn options(dir: &Path, text: &str) -> SweepOptions {
    let mut opts = SweepOptions::new(write(dir, text));
    opts.results_root = dir.join("results");
    opts.device = "cpu".parse().unwrap();
    opts.progress = false;
    opts.log_every = Duration::ZERO;
    opts
}

#[test]
fn a_diverging_run_is_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), &studies(4));
    let outcome = run_sweep(&opts).unwrap();
    // depth: 2 BST points + SLIDE; lr: SLIDE (shared) + the diverging one; times 2 seeds
    assert_eq!(outcome.sweep.runs.len(), 4 * 2);
    assert_eq!((outcome.trained, outcome.failed, outcome.reused), (6, 2, 0));
    let dir = tmp.path().join("results/tiny");
    let rows = rows(&dir.join("runs.csv"));
    assert_eq!(rows.len(), 8, "every run once, failed ones included");
    let diverged: Vec<&BTreeMap<String, String>> = rows.iter().filter(|r| r["status"] == "diverged").collect();
    assert_eq!(diverged.len(), 2, "{rows:?}");
    assert!(diverged.iter().all(|r| r["variant"] == "SLIDE lr 1e6" && r["error"].contains("diverged at step") && r["test_bpb"].is_empty()));
    assert!(rows.iter().filter(|r| r["status"] == "ok").all(|r| r["test_bpb"].parse::<f64>().unwrap() > 0.0));
    let shared: Vec<&BTreeMap<String, String>> = rows.iter().filter(|r| r["studies"] == "depth lr").collect();
    assert_eq!(shared.len(), 2, "SLIDE at the base settings belongs to both studies, once per seed");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for text in ["## Study `depth`", "## Study `lr`", "## Failed runs", "Welch", "mean ± sd", "study_depth_bpb.png"] {
        assert!(report.contains(text), "report.md lacks `{text}`");
    }
    assert!(dir.join("study_depth_bpb.png").exists() && dir.join("study_depth_bpb.svg").exists() && dir.join("loss_depth.png").exists());

    // a rerun trains nothing (the failures stay recorded); --retry-failed tries them again
    let again = run_sweep(&opts).unwrap();
    assert_eq!((again.trained, again.failed, again.reused), (0, 0, 8));
    let mut retry = options(tmp.path(), &studies(4));
    (retry.retry_failed, retry.only) = (true, vec!["lr".into()]);
    let retried = run_sweep(&retry).unwrap();
    assert_eq!((retried.trained, retried.failed, retried.reused), (0, 2, 2), "only the lr study's runs, the failures retried");

    // report rebuilds the same runs.csv without training
    let before = std::fs::read(dir.join("runs.csv")).unwrap();
    std::fs::remove_file(dir.join("runs.csv")).unwrap();
    let (_, published) = bst_sweep::report(&dir).unwrap();
    assert_eq!(std::fs::read(dir.join("runs.csv")).unwrap(), before);
    assert!(published.missing.is_empty() && published.failed.len() == 2);

    // --fail-fast stops at the first failure
    let fast_dir = tmp.path().join("fast");
    std::fs::create_dir_all(&fast_dir).unwrap();
    let mut fast = options(&fast_dir, &studies(4));
    (fast.fail_fast, fast.only) = (true, vec!["SLIDE lr 1e6".into()]);
    let err = run_sweep(&fast).unwrap_err();
    assert!(matches!(err, SweepError::RunFailed { .. }), "{err}");
    let mut unknown = options(tmp.path(), &studies(4));
    unknown.only = vec!["nothing".into()];
    assert!(run_sweep(&unknown).unwrap_err().to_string().contains("depth, lr"));
}

#[test]
fn a_second_launch_on_the_same_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), &studies(2));
    let _held = ResultsLock::acquire(&tmp.path().join("results/tiny"), "the first launch").unwrap();
    let err = run_sweep(&opts).unwrap_err().to_string();
    assert!(err.contains("in use by process") && err.contains("the first launch"), "{err}");
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bst-sweep"))
}

/// Under a log (stderr not a terminal) a run prints plain progress lines with ETAs.
#[test]
fn progress_lines_when_stderr_is_a_log() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), &studies(6));
    let out = binary().arg(&file).args(["--results"]).arg(tmp.path().join("results")).args(["--device", "cpu", "--log-every", "1", "--only", "depth"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("[tiny] run ")).collect();
    assert!(lines.iter().any(|l| l.contains("step 6/6") && l.contains("tok/s") && l.contains("run ETA") && l.contains("sweep ETA")), "{err}");

    // a rerun counts the runs that ended before first: the one run left to train is the last
    // (its sweep ETA is its own), wherever it stands in the sweep
    let results = tmp.path().join("results/tiny");
    let first = rows(&results.join("runs.csv"))[0]["run_id"].clone();
    std::fs::remove_dir_all(results.join("runs").join(first)).unwrap();
    let out = binary().arg(&file).args(["--results"]).arg(tmp.path().join("results")).args(["--device", "cpu", "--log-every", "1", "--only", "depth"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l.starts_with("[tiny] run 6/6 ") && l.contains("step 6/6")), "{err}");
}

/// `kill -9` at random moments (training, checkpointing, evaluating, writing results): the
/// results folder is readable after every kill, and a final rerun completes with every run once
/// and the same results as a sweep that was never killed (runs resume exactly).
#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), &studies(12).replace("seeds = [0, 1]", "seeds = [0]"));
    let launch = |root: &Path| {
        let mut cmd = binary();
        cmd.arg(&file).arg("--results").arg(root).args(["--device", "cpu", "--only", "depth", "--threads", "1"]).stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    let reference = tmp.path().join("reference");
    assert!(launch(&reference).status().unwrap().success());
    let killed = tmp.path().join("killed");
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..6 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = launch(&killed).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300 + rng % 2500));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if let Ok(text) = std::fs::read_to_string(killed.join("tiny/runs.csv")) {
            assert!(csv::Reader::from_reader(text.as_bytes()).records().all(|r| r.is_ok()), "runs.csv unreadable after a kill");
        }
    }
    assert!(launch(&killed).status().unwrap().success(), "the rerun completes");
    let (a, b) = (rows(&reference.join("tiny/runs.csv")), rows(&killed.join("tiny/runs.csv")));
    let listing = || {
        let runs = std::fs::read_dir(killed.join("tiny/runs")).map(|d| d.filter_map(|e| e.ok()).map(|e| format!("{:?}: {:?}", e.file_name(), std::fs::read_dir(e.path()).map(|f| f.filter_map(|x| x.ok()).map(|x| x.file_name()).collect::<Vec<_>>()))).collect::<Vec<_>>());
        format!("{runs:?}\n{}", std::fs::read_to_string(killed.join("tiny/runs.csv")).unwrap_or_default())
    };
    assert_eq!(b.len(), 3, "every run exactly once: {}", listing());
    for (x, y) in a.iter().zip(&b) {
        for col in ["run_id", "test_bpb", "valid_bpb", "final_train_loss", "tokens_seen"] {
            assert_eq!(x[col], y[col], "{col} of {} after kills", x["run_id"]);
        }
    }
}

/// `--jobs 2` (two child processes, one thread each) gives the same numbers as the same runs one
/// after another with one thread.
#[test]
fn jobs_in_parallel_equal_one_after_another() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), &studies(4).replace("seeds = [0, 1]", "seeds = [0]"));
    let run = |root: &str, jobs: &str| {
        let out = binary().arg(&file).arg("--results").arg(tmp.path().join(root)).args(["--device", "cpu", "--only", "depth", "--threads", "1", "--jobs", jobs]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (rows(&tmp.path().join(root).join("tiny/runs.csv")), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ((parallel, log), (serial, _)) = (run("parallel", "2"), run("serial", "1"));
    // the parent tallies the sweep as children end; a child's lines are of its run alone
    assert!(log.lines().any(|l| l.contains("done") && l.contains("3/3 runs ended, sweep ETA 0s")), "{log}");
    assert!(!log.contains("run 1/1"), "{log}");
    assert_eq!(parallel.len(), 3);
    for (p, s) in parallel.iter().zip(&serial) {
        for col in ["run_id", "test_bpb", "valid_bpb", "final_train_loss"] {
            assert_eq!(p[col], s[col], "{col} of {}", p["run_id"]);
        }
    }
}

/// A finished run scored again (its result.json removed, as after a fix to evaluation) trains
/// nothing, scores the same, and its record keeps the launch that trained it apart from the one
/// that evaluated it; the report says so.
#[test]
fn a_run_evaluated_again_keeps_its_training_provenance() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(tmp.path(), &studies(3).replace("seeds = [0, 1]", "seeds = [0]"));
    opts.only = vec!["depth".into()];
    run_sweep(&opts).unwrap();
    let dir = tmp.path().join("results/tiny");
    let result = |id: &str| dir.join("runs").join(id).join("result.json");
    let read = |id: &str| -> bst_sweep::run::RunRecord { serde_json::from_str(&std::fs::read_to_string(result(id)).unwrap()).unwrap() };
    let id = rows(&dir.join("runs.csv"))[0]["run_id"].clone();
    let first = read(&id);
    assert_eq!(first.launches.iter().map(|l| l.from_step).collect::<Vec<_>>(), [0]);
    assert!(!first.evaluated_again() && first.resumed_from_step.is_none());

    std::fs::remove_file(result(&id)).unwrap();
    assert_eq!(run_sweep(&opts).unwrap().trained, 1);
    let second = read(&id);
    assert_eq!((second.test.bits_per_byte, second.final_train_loss, second.steps), (first.test.bits_per_byte, first.final_train_loss, 3));
    assert_eq!(second.launches.iter().map(|l| l.from_step).collect::<Vec<_>>(), [0, 3]);
    assert!(second.evaluated_again() && second.resumed_from_step == Some(3));
    assert_eq!(second.training_provenance(), vec![&first.launches[0].provenance]);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("1 of these runs were evaluated again from their final checkpoints"), "{report}");
}
