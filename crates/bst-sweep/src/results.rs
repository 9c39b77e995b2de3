//! runs.csv: one row per finished run, every grid key as a column, then the measurements and
//! their provenance.

use std::path::Path;

use crate::error::{write_atomically, SweepError};
use crate::run::RunRecord;

const METRICS: [&str; 21] = [
    "arch", "placement", "sampling", "params", "steps", "tokens_seen", "wall_s", "tokens_per_s", "final_train_loss",
    "valid_loss", "valid_ppl", "valid_bpb", "test_loss", "test_ppl", "test_bpb", "eval_tokens",
    "unigram_test_bpb", "git_commit", "device", "date", "run_id",
];

/// Columns of a synthetic long-range task's answer scores (present when any run has them).
const ANSWER_METRICS: [&str; 3] = ["test_answer_acc", "test_answer_bits", "test_answers"];

/// The header of runs.csv for these grid keys and longer evaluation lengths (`test_bpb_x<factor>`).
pub fn header(grid_keys: &[String], factors: &[usize], answers: bool) -> Vec<String> {
    let lead = ["variant".to_string()].into_iter().chain(grid_keys.iter().cloned()).chain(["seed".to_string()]);
    let longer = factors.iter().map(|f| format!("test_bpb_x{f}"));
    let answer_cols = ANSWER_METRICS.iter().filter(|_| answers).map(|s| s.to_string());
    lead.chain(METRICS.iter().map(|s| s.to_string())).chain(longer).chain(answer_cols).collect()
}

fn row(r: &RunRecord, grid_keys: &[String], factors: &[usize], answers: bool) -> Vec<String> {
    let mut cells = vec![r.variant.clone()];
    cells.extend(grid_keys.iter().map(|k| r.point.get(k).cloned().unwrap_or_default()));
    cells.push(r.seed.to_string());
    cells.extend([
        r.arch.clone(),
        r.placement.clone(),
        r.sampling.clone(),
        r.params.to_string(),
        r.steps.to_string(),
        r.tokens_seen.to_string(),
        format!("{:.1}", r.wall_s),
        format!("{:.0}", r.tokens_per_s),
        format!("{:.4}", r.final_train_loss),
        crate::report::cell(r.valid.loss, 4),
        crate::report::cell(r.valid.ppl, 4),
        crate::report::cell(r.valid.bits_per_byte, 4),
        crate::report::cell(r.test.loss, 4),
        crate::report::cell(r.test.ppl, 4),
        crate::report::cell(r.test.bits_per_byte, 4),
        r.test.tokens.to_string(),
        crate::report::cell(r.unigram_test_bpb, 4),
        r.provenance.git_commit.clone(),
        r.provenance.device.clone(),
        r.provenance.date.clone(),
        r.run_id.clone(),
    ]);
    cells.extend(factors.iter().map(|f| r.longer.iter().find(|l| l.factor == *f).map(|l| format!("{:.4}", l.test.bits_per_byte)).unwrap_or_default()));
    if answers {
        let a = r.test.answers.as_ref();
        cells.extend([a.map(|a| format!("{:.4}", a.accuracy)), a.map(|a| format!("{:.4}", a.bits)), a.map(|a| a.count.to_string())].map(Option::unwrap_or_default));
    }
    cells
}

/// Writes runs.csv atomically from the finished runs, in grid order.
pub fn write_csv(path: &Path, grid_keys: &[String], records: &[RunRecord]) -> Result<(), SweepError> {
    let factors = crate::report::longer_factors(records);
    let answers = records.iter().any(|r| r.test.answers.is_some());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header(grid_keys, &factors, answers)).map_err(SweepError::file(path))?;
    for r in records {
        w.write_record(row(r, grid_keys, &factors, answers)).map_err(SweepError::file(path))?;
    }
    write_atomically(path, &w.into_inner().map_err(SweepError::file(path))?)
}
