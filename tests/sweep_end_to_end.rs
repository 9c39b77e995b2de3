//! End to end: a two-run micro grid on the real books corpus (fetched by scripts/setup.sh) to
//! runs.csv, plots and report; then resume, interruption, and a typo that fails before any run.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bst::sweep::{run_sweep, SweepOptions};

fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    assert!(dir.join("books/gutenberg_big.txt").exists(), "{} has no corpus: run scripts/setup.sh first", dir.display());
    dir
}

/// A micro grid: SLIDE vs BST:SH:S4D, one window, a tiny model trained for a few steps.
fn micro_grid(steps: usize, windows: &str) -> String {
    format!(
        r#"
[sweep]
name = "micro"
seeds = [0]
[base]
model.n_layers = 2
model.d_model = 32
model.n_heads = 2
train.steps = {steps}
train.warmup_steps = 5
train.batch_size = 8
train.seq_len = 64
train.lr = 3e-3
train.eval_tokens = 4096
data.dir = "{}"
[grid]
attn.window = {windows}
[[variant]]
name = "BST:SH:S4D"
model.arch = "BST:SH:S4D"
model.ssm_layers = [1]
[[variant]]
name = "SLIDE"
model.arch = "SLIDE"
"#,
        data_dir().display()
    )
}

fn options(dir: &Path, grid: &str) -> SweepOptions {
    let file = dir.join("micro.toml");
    std::fs::write(&file, grid).unwrap();
    let mut opts = SweepOptions::new(file);
    opts.results_root = dir.join("results");
    opts.device = "cpu".parse().unwrap();
    opts.progress = false;
    opts
}

fn csv_rows(path: &Path) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    (reader.headers().unwrap().clone(), reader.records().map(Result::unwrap).collect())
}

#[test]
fn micro_grid_to_csv_plots_and_report_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), &micro_grid(60, "[16]"));
    let first = run_sweep(&opts).unwrap();
    assert_eq!((first.trained, first.reused), (2, 0));
    let dir = tmp.path().join("results/micro");
    for f in ["runs.csv", "study_micro_bpb.png", "study_micro_bpb.svg", "loss_micro.png", "loss_micro.svg", "report.md", "sweep.toml", "launch.json"] {
        assert!(dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing or empty");
    }
    let (header, rows) = csv_rows(&dir.join("runs.csv"));
    for col in ["variant", "attn.window", "seed", "placement", "sampling", "params", "tokens_seen", "wall_s", "tokens_per_s", "valid_ppl", "valid_bpb", "test_ppl", "test_bpb", "git_commit", "device", "date"] {
        assert!(header.iter().any(|h| h == col), "runs.csv lacks column {col}: {header:?}");
    }
    assert_eq!(rows.len(), 2);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for row in &rows {
        let (bpb, unigram): (f64, f64) = (row[col("test_bpb")].parse().unwrap(), row[col("unigram_test_bpb")].parse().unwrap());
        // 60 steps of a tiny model already beat the context-free baseline on held-out text
        assert!(bpb < unigram, "{}: test bpb {bpb} not below the unigram {unigram}", &row[col("variant")]);
        // SLIDE's last block carries to the next window, so both train on consecutive windows of
        // whole documents: the last window of a document is padded, and padding is not counted
        assert_eq!(&row[col("sampling")], "sequential");
        let tokens: usize = row[col("tokens_seen")].parse().unwrap();
        assert!(tokens <= 60 * 8 * 64 && tokens > 60 * 8 * 64 * 9 / 10, "{tokens} predicted tokens of {}", 60 * 8 * 64);
    }
    let placements: Vec<&str> = rows.iter().map(|r| &r[col("placement")]).collect();
    assert_eq!(placements, ["2 BST:SH:S4D", "1-2 SLIDE"], "model.ssm_layers = [1] is the paper's layer 2");
    let config = std::fs::read_to_string(dir.join("runs").join(&rows[0][col("run_id")]).join("config.toml")).unwrap();
    assert!(config.contains("# layers, numbered from 1 as in the paper: 1 SLIDE | 2 BST:SH:S4D"), "{config}");
    assert_ne!(rows[0][col("params")], rows[1][col("params")], "BST adds the SSM and cross-attention parameters");

    let again = run_sweep(&opts).unwrap();
    assert_eq!((again.trained, again.reused), (0, 2), "a rerun skips finished runs");
    assert_eq!(csv_rows(&dir.join("runs.csv")).1, rows, "reused runs keep their measurements");
}

#[test]
fn interrupted_sweep_keeps_finished_runs_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(tmp.path(), &micro_grid(10, "[16]"));
    run_sweep(&opts).unwrap();
    // the grid grows by one window; the new runs are interrupted at their first step
    opts = options(tmp.path(), &micro_grid(10, "[16, 32]"));
    opts.stop.store(true, Ordering::SeqCst);
    let err = run_sweep(&opts).unwrap_err().to_string();
    assert!(err.contains("interrupted") && err.contains("rerun"), "{err}");
    let csv = tmp.path().join("results/micro/runs.csv");
    assert_eq!(csv_rows(&csv).1.len(), 2, "the finished runs are still in runs.csv");
    opts.stop.store(false, Ordering::SeqCst);
    let resumed = run_sweep(&opts).unwrap();
    assert_eq!((resumed.trained, resumed.reused), (2, 2));
    let outcomes = bst::sweep::publish::outcomes(&resumed.sweep, &resumed.results_dir);
    let continued: Vec<_> = outcomes.values().filter_map(|o| o.record()).filter_map(|r| r.resumed_from_step).collect();
    assert_eq!(continued, vec![1], "the interrupted run continues from its checkpoint after step 1");
    assert_eq!(csv_rows(&csv).1.len(), 4);
}

#[test]
fn a_typo_fails_before_any_run_naming_file_key_and_choices() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = micro_grid(10, "[16]").replace("model.arch = \"SLIDE\"", "model.arch = \"SLIDEE\"");
    let err = format!("{:#}", run_sweep(&options(tmp.path(), &grid)).unwrap_err());
    assert!(err.contains("micro.toml") && err.contains("model.arch") && err.contains("BST:SH:S4D, BST:MH:S4D") && err.contains("SLIDE"), "{err}");
    assert!(!tmp.path().join("results").exists(), "nothing may be written before validation passes");
}

/// A classification sweep: a generated LRA task (ListOps) through the same grid, CSV and report,
/// with accuracy columns and plot; a rerun reuses the finished runs (their result.json holds NaN
/// bits per byte as null, which must read back).
#[test]
fn lra_micro_grid_reports_accuracy_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = r#"
[sweep]
name = "lra-micro"
seeds = [0]
[base]
model.n_layers = 2
model.d_model = 32
model.n_heads = 2
attn.window = 64
train.steps = 3
train.warmup_steps = 1
train.batch_size = 8
train.seq_len = 256
train.eval_batch_size = 16
lra.task = "listops"
lra.seq_len = 256
lra.listops = { min_len = 100 }
lra.n_train = 32
lra.n_valid = 16
lra.n_test = 16
[[variant]]
name = "BST:SH:S4D"
model.arch = "BST:SH:S4D"
model.ssm_layers = [1]
[[variant]]
name = "SLIDE"
model.arch = "SLIDE"
"#;
    let opts = options(tmp.path(), grid);
    let first = run_sweep(&opts).unwrap();
    assert_eq!((first.trained, first.reused), (2, 0));
    let dir = tmp.path().join("results/lra-micro");
    for f in ["runs.csv", "study_lra-micro_accuracy.png", "report.md"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    assert!(!dir.join("study_lra-micro_bpb.png").exists(), "no bits-per-byte plot for a classification sweep");
    let (header, rows) = csv_rows(&dir.join("runs.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for row in &rows {
        let acc: f64 = row[col("test_answer_acc")].parse().unwrap();
        assert_eq!(&row[col("test_answers")], "16", "every test example is scored");
        let correct = acc * 16.0;
        assert!((correct - correct.round()).abs() < 1e-9, "{acc}: accuracy must count correct answers among the 16 test examples");
        assert!(report.contains(&format!("| {:.3} ± 0.000 (n=1) |", acc)), "the report shows the accuracy of runs.csv ({acc:.3}) over its one seed");
        assert_eq!(&row[col("test_bpb")], "", "bits per byte do not apply");
    }
    assert!(report.contains("test accuracy") && report.contains("majority-class accuracy"), "{report}");
    let again = run_sweep(&opts).unwrap();
    assert_eq!((again.trained, again.reused), (0, 2));
}
