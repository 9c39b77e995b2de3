//! runs.csv: one row per run that ended (finished, failed or diverged), every study key as a
//! column (the run's resolved value), then the measurements and their provenance.

use std::path::Path;

use crate::error::{write_atomically, SweepError};
use crate::grid::config_value;
use crate::report::cell;
use crate::run::{Outcome, RunRecord};

const LEAD: [&str; 3] = ["run_id", "studies", "variant"];

const METRICS: [&str; 22] = [
    "seed", "status", "arch", "placement", "sampling", "params", "steps", "tokens_seen", "wall_s", "tokens_per_s", "final_train_loss",
    "valid_loss", "valid_ppl", "valid_bpb", "test_loss", "test_ppl", "test_bpb", "eval_tokens", "unigram_test_bpb", "git_commit", "device", "date",
];

/// Columns of a synthetic long-range task's answer scores (present when any run has them).
const ANSWER_METRICS: [&str; 3] = ["test_answer_acc", "test_answer_bits", "test_answers"];

/// Longer evaluation lengths (multiples of the training length) present in any record.
pub fn longer_factors<'a>(records: impl Iterator<Item = &'a RunRecord>) -> Vec<usize> {
    let mut f: Vec<usize> = records.flat_map(|r| r.longer.iter().map(|l| l.factor)).collect();
    f.sort_unstable();
    f.dedup();
    f
}

/// Factors of the same-target length evaluation present in any record.
fn length_factors<'a>(records: impl Iterator<Item = &'a RunRecord>) -> Vec<f64> {
    let mut f: Vec<f64> = records.flat_map(|r| r.length_eval.iter().map(|l| l.factor)).collect();
    f.sort_by(f64::total_cmp);
    f.dedup();
    f
}

/// The header of runs.csv for these keys, longer evaluation lengths (`test_bpb_x<factor>`) and
/// same-target length evaluations (`length_bpb_x<factor>`).
pub fn header(keys: &[String], factors: &[usize], length: &[f64], answers: bool) -> Vec<String> {
    let longer = factors.iter().map(|f| format!("test_bpb_x{f}")).chain(length.iter().map(|f| format!("length_bpb_x{f}")));
    let answer_cols = ANSWER_METRICS.iter().filter(|_| answers).map(|s| s.to_string());
    LEAD.iter().map(|s| s.to_string()).chain(keys.iter().cloned()).chain(METRICS.iter().map(|s| s.to_string())).chain(longer).chain(answer_cols).chain(["error".to_string()]).collect()
}

fn finished_row(r: &RunRecord, keys: &[String], factors: &[usize], length: &[f64], answers: bool) -> Vec<String> {
    let mut cells = vec![r.run_id.clone(), r.studies.join(" "), r.variant.clone()];
    cells.extend(keys.iter().map(|k| config_value(&r.config, k)));
    cells.extend([
        r.seed.to_string(),
        "ok".into(),
        r.arch.clone(),
        r.placement.clone(),
        r.sampling.clone(),
        r.params.to_string(),
        r.steps.to_string(),
        r.tokens_seen.to_string(),
        format!("{:.1}", r.wall_s),
        format!("{:.0}", r.tokens_per_s),
        format!("{:.4}", r.final_train_loss),
        cell(r.valid.loss, 4),
        cell(r.valid.ppl, 4),
        cell(r.valid.bits_per_byte, 4),
        cell(r.test.loss, 4),
        cell(r.test.ppl, 4),
        cell(r.test.bits_per_byte, 4),
        r.test.tokens.to_string(),
        cell(r.unigram_test_bpb, 4),
        r.provenance.git_commit.clone(),
        r.provenance.device.clone(),
        r.provenance.date.clone(),
    ]);
    cells.extend(factors.iter().map(|f| r.longer.iter().find(|l| l.factor == *f).map(|l| format!("{:.4}", l.test.bits_per_byte)).unwrap_or_default()));
    cells.extend(length.iter().map(|f| r.length_eval.iter().find(|l| l.factor == *f).map(|l| format!("{:.4}", l.bits_per_byte)).unwrap_or_default()));
    if answers {
        let a = r.test.answers.as_ref();
        cells.extend([a.map(|a| format!("{:.4}", a.accuracy)), a.map(|a| format!("{:.4}", a.bits)), a.map(|a| a.count.to_string())].map(Option::unwrap_or_default));
    }
    cells.push(String::new());
    cells
}

fn row(o: &Outcome, studies: &str, keys: &[String], factors: &[usize], length: &[f64], answers: bool) -> Vec<String> {
    match o {
        Outcome::Finished(r) => finished_row(r, keys, factors, length, answers),
        Outcome::Failed(f) => {
            let mut cells = vec![f.run_id.clone(), studies.to_owned(), f.variant.clone()];
            cells.extend(keys.iter().map(|k| config_value(&f.config, k)));
            let mut metrics = vec![String::new(); METRICS.len()];
            metrics[0] = f.seed.to_string();
            metrics[1] = f.status.clone();
            metrics[2] = f.arch.clone();
            metrics[METRICS.len() - 3] = f.provenance.git_commit.clone();
            metrics[METRICS.len() - 2] = f.provenance.device.clone();
            metrics[METRICS.len() - 1] = f.provenance.date.clone();
            cells.extend(metrics);
            cells.extend(std::iter::repeat_n(String::new(), factors.len() + length.len() + if answers { ANSWER_METRICS.len() } else { 0 }));
            cells.push(f.error.clone());
            cells
        }
    }
}

/// Writes runs.csv atomically from the runs that ended, in sweep order; `studies` gives each
/// run's study names (a failed run's record does not hold them).
pub fn write_csv(path: &Path, keys: &[String], outcomes: &[(&Outcome, String)]) -> Result<(), SweepError> {
    let factors = longer_factors(outcomes.iter().filter_map(|(o, _)| o.record()));
    let length = length_factors(outcomes.iter().filter_map(|(o, _)| o.record()));
    let answers = outcomes.iter().filter_map(|(o, _)| o.record()).any(|r| r.test.answers.is_some());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header(keys, &factors, &length, answers)).map_err(SweepError::file(path))?;
    for (o, studies) in outcomes {
        w.write_record(row(o, studies, keys, &factors, &length, answers)).map_err(SweepError::file(path))?;
    }
    write_atomically(path, &w.into_inner().map_err(SweepError::file(path))?)
}
