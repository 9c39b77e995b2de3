//! `bst-sweep slurm` against a real Slurm: a tiny sweep (two runs and the layer-speed study)
//! submitted as a job array, stopped by `scancel` midway (as a preemption would), collected while
//! unfinished, submitted again (the new array holds only what is unfinished; the runs resume from
//! their checkpoints), collected; its runs.csv equals a local launch of the same runs in every
//! column but the timings.
//!
//! Needs a Slurm whose client tools answer here and whose nodes share this filesystem, e.g. the
//! single-node one of `eval "$(scripts/slurm_local.sh start)"` (root, Debian). Without one the test
//! says it was skipped and passes; `BST_REQUIRE_SLURM=1` makes that a failure (for CI).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::rows;

/// BST and SLIDE, one seed, long enough (in steps, not seconds) to be stopped midway.
fn tiny_sweep(steps: usize) -> String {
    format!(
        r#"
[sweep]
name = "tiny"
{}model.ssm_layers = [0]
[[variant]]
name = "BST"
model.arch = "BST:SH:S4D"
[[variant]]
name = "SLIDE"
model.arch = "SLIDE"
model.ssm_layers = []
[speed]
archs = ["SLIDE", "BST:SH:S4D"]
lengths = [32, 64]
directions = ["forward"]
batch = 1
warmup = 1
repeats = 2
cap_s = 5.0
[slurm]
cpus_per_task = 1
time = "00:15:00"
stop_before_limit_s = 60
"#,
        common::tiny_base(steps)
    )
}

/// Why no Slurm can take jobs here, if none can.
fn slurm_unavailable() -> Option<String> {
    let out = match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
        Err(e) => return Some(format!("sinfo: {e}")),
        Ok(out) => out,
    };
    let states = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Some(format!("sinfo {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")));
    }
    // exact states: `idle*` (not responding) or `idle~` (powered off) runs nothing
    if !states.lines().any(|s| s == "idle" || s == "mixed") {
        return Some(format!("no idle node (sinfo: {})", states.trim()));
    }
    None
}

fn bst_sweep(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_bst-sweep")).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "bst-sweep {args:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// Cancels the submitted jobs if the test ends early.
struct Jobs(Vec<String>);

impl Drop for Jobs {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("scancel").args(&self.0).status();
        }
    }
}

/// Submits the next array (`bst-sweep slurm --submit`) and returns its job id and run ids.
fn submit(dir: &Path, results: &Path, jobs: &mut Jobs) -> (String, Vec<String>) {
    let out = bst_sweep(dir, &["slurm", "tiny.toml", "--results", results.to_str().unwrap(), "--device", "cpu", "--submit"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text.lines().find_map(|l| l.strip_prefix("Submitted job array ")).and_then(|l| l.split_whitespace().next()).unwrap_or_else(|| panic!("no job id in:\n{text}")).to_string();
    jobs.0.push(id.clone());
    let slurm_dir = results.join("tiny/slurm");
    let mut lists: Vec<PathBuf> = std::fs::read_dir(&slurm_dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "runs")).collect();
    lists.sort();
    let runs = std::fs::read_to_string(lists.last().unwrap()).unwrap().lines().map(|l| l.split('\t').next().unwrap().to_string()).collect();
    (id, runs)
}

/// Whether any task of the job is still queued or running (squeue forgets ended jobs).
fn queued(id: &str) -> bool {
    let out = Command::new("squeue").args(["-h", "-j", id]).output().unwrap();
    out.status.success() && !out.stdout.iter().all(u8::is_ascii_whitespace)
}

/// Waits until the job has left the queue.
fn wait(id: &str, timeout: Duration) {
    let start = Instant::now();
    while queued(id) {
        assert!(start.elapsed() < timeout, "job {id} still queued after {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every task log of the results folder, one after another.
fn logs(results: &Path) -> String {
    let dir = results.join("tiny/slurm/logs");
    let texts: Vec<String> = std::fs::read_dir(&dir).map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect()).unwrap_or_default();
    format!("{} (logs in {}):\n{}", texts.len(), dir.display(), texts.join("\n----\n"))
}

/// The step of a run's checkpoint, or what it has instead.
fn checkpoint_step(run_dir: &Path) -> String {
    if run_dir.join("result.json").exists() {
        return "finished".into();
    }
    let Ok(text) = std::fs::read_to_string(run_dir.join("checkpoint/state.json")) else { return "none".into() };
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    format!("step {}", state["progress"]["step"])
}

#[test]
fn a_job_array_on_slurm_equals_a_local_launch() {
    if let Some(why) = slurm_unavailable() {
        let msg = format!("SKIPPED a_job_array_on_slurm_equals_a_local_launch: no Slurm takes jobs here ({why}); start one with `eval \"$(scripts/slurm_local.sh start)\"`");
        assert!(std::env::var_os("BST_REQUIRE_SLURM").is_none(), "{msg} (BST_REQUIRE_SLURM is set)");
        // past the test harness's capture: a skip is never silent
        let _ = writeln!(std::io::stderr(), "{msg}");
        return;
    }
    // under target/: shared with the nodes wherever the checkout is
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tiny.toml"), tiny_sweep(300)).unwrap();
    let local_start = Instant::now();
    bst_sweep(dir, &["tiny.toml", "--results", "local", "--device", "cpu", "--threads", "1", "--quiet", "--only", "BST,SLIDE"]);
    eprintln!("the local launch of both runs took {:.1?}", local_start.elapsed());
    let local = rows(&dir.join("local/tiny/runs.csv"));
    assert_eq!(local.len(), 2);

    let results = dir.join("cluster");
    let runs_dir = results.join("tiny/runs");
    let mut jobs = Jobs(Vec::new());
    let (first, runs) = submit(dir, &results, &mut jobs);
    assert_eq!(runs.len(), 3, "one task per run, and the speed study: {runs:?}");
    assert_eq!(runs[2], "speed");
    let ended = |r: &str| if r == "speed" { results.join("tiny/speed.csv").exists() } else { runs_dir.join(r).join("result.json").exists() };
    // stop the whole array as soon as a run has a checkpoint (SIGTERM, as a preemption does)
    let start = Instant::now();
    for poll in 1.. {
        if runs.iter().any(|r| runs_dir.join(r).join("checkpoint/state.json").exists()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s; {}", logs(&results));
        assert!(poll % 50 != 0 || queued(&first), "job {first} ended before any checkpoint; {}", logs(&results)); // a task that cannot start
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_checkpoint = start.elapsed();
    assert!(Command::new("scancel").arg(&first).status().unwrap().success());
    wait(&first, Duration::from_secs(120));
    let unfinished: Vec<&String> = runs.iter().filter(|r| !ended(r)).collect();
    let steps: Vec<String> = runs.iter().map(|r| format!("{r}: {}", checkpoint_step(&runs_dir.join(r)))).collect();
    eprintln!("scancel {first} {first_checkpoint:.1?} after submitting; checkpoints at: {}; unfinished: {unfinished:?}", steps.join(", "));
    assert!(unfinished.iter().any(|r| *r != "speed"), "both runs ended before scancel: raise the steps");

    // collect while runs are unfinished: says which are missing
    let out = bst_sweep(dir, &["collect", results.join("tiny").to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    let missing_runs = unfinished.iter().filter(|r| **r != "speed").count();
    assert!(said.contains(&format!("{missing_runs} missing")), "{said}");

    // the same command again: an array of the unfinished runs only, which resume
    let (second, again) = submit(dir, &results, &mut jobs);
    assert_eq!(again.iter().collect::<Vec<_>>(), unfinished, "the second array holds exactly the unfinished runs");
    bst_sweep(dir, &["collect", results.join("tiny").to_str().unwrap()]); // while it runs
    wait(&second, Duration::from_secs(600));
    let log_text = logs(&results);
    assert!(log_text.contains("[bst-sweep] array task 0 of job"), "{log_text}");
    for r in &runs {
        assert!(ended(r), "{r} did not finish:\n{log_text}");
    }
    let resumed = unfinished.iter().filter(|r| **r != "speed").filter(|r| {
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs_dir.join(r).join("result.json")).unwrap()).unwrap();
        record["resumed_from_step"].as_u64().is_some_and(|s| s > 0)
    });
    assert!(resumed.count() >= 1, "no unfinished run resumed from its checkpoint:\n{log_text}");
    let out = bst_sweep(dir, &["slurm", "tiny.toml", "--results", results.to_str().unwrap(), "--device", "cpu"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Nothing to submit"));

    bst_sweep(dir, &["collect", results.join("tiny").to_str().unwrap()]);
    assert!(std::fs::read_to_string(results.join("tiny/report.md")).unwrap().contains("## Layer speed"));
    let cluster = rows(&results.join("tiny/runs.csv"));
    assert_eq!(cluster.len(), local.len());
    for (c, l) in cluster.iter().zip(&local) {
        assert_eq!(c.keys().collect::<Vec<_>>(), l.keys().collect::<Vec<_>>());
        for (col, value) in l.iter().filter(|(col, _)| !["wall_s", "tokens_per_s", "date"].contains(&col.as_str())) {
            assert_eq!(&c[col], value, "{col} of {} (Slurm against local)", l["run_id"]);
        }
    }
    jobs.0.clear();
}
