//! report.md and the console summary of a sweep.

use std::fmt::Write as _;

use crate::grid::Sweep;
use crate::run::{LoadedData, RunRecord};

/// Longer evaluation lengths (multiples of the training length) present in any record.
pub fn longer_factors(records: &[RunRecord]) -> Vec<usize> {
    let mut f: Vec<usize> = records.iter().flat_map(|r| r.longer.iter().map(|l| l.factor)).collect();
    f.sort_unstable();
    f.dedup();
    f
}

/// A Markdown table of the finished runs, one row each, sorted as the grid.
pub fn table(sweep: &Sweep, records: &[RunRecord]) -> String {
    let factors = longer_factors(records);
    let mut head = vec!["variant".to_string()];
    head.extend(sweep.grid_keys.iter().cloned());
    head.extend(["seed", "params", "tokens", "tok/s", "wall (s)", "valid bpb", "test bpb", "test ppl"].map(String::from));
    head.extend(factors.iter().map(|f| format!("test bpb {f}x len")));
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in records {
        let mut cells = vec![r.variant.clone()];
        cells.extend(sweep.grid_keys.iter().map(|k| r.point.get(k).cloned().unwrap_or_default()));
        cells.extend([
            r.seed.to_string(),
            format!("{:.2}M", r.params as f64 / 1e6),
            format!("{:.2}M", r.tokens_seen as f64 / 1e6),
            format!("{:.0}", r.tokens_per_s),
            format!("{:.0}", r.wall_s),
            format!("{:.3}", r.valid.bits_per_byte),
            format!("{:.3}", r.test.bits_per_byte),
            format!("{:.2}", r.test.ppl),
        ]);
        cells.extend(factors.iter().map(|f| r.longer.iter().find(|l| l.factor == *f).map_or(String::new(), |l| format!("{:.3}", l.test.bits_per_byte))));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// Unigram baselines of the data, the bar every model must clear.
pub fn data_summary(data: &LoadedData) -> String {
    format!(
        "Unigram entropy of the training bytes: {:.3} bits/byte. A unigram model fitted on train scores {:.3} bits/byte on test \
         (train {:.2}M tokens, valid {:.2}M, test {:.2}M).",
        data.unigram_entropy_bpb,
        data.unigram_test_bpb,
        data.train.len() as f64 / 1e6,
        data.valid.len() as f64 / 1e6,
        data.test.len() as f64 / 1e6,
    )
}

/// The whole report.md.
pub fn markdown(sweep: &Sweep, records: &[RunRecord], data: &LoadedData, plots: &[String], command: &str) -> String {
    let mut out = format!("# {}\n\n", sweep.meta.name);
    if !sweep.meta.description.is_empty() {
        let _ = writeln!(out, "{}\n", sweep.meta.description);
    }
    let _ = writeln!(out, "Produced by `{command}` (profile `{}`, sweep file `{}`).", sweep.profile, sweep.file.display());
    if let Some(r) = records.last() {
        let _ = writeln!(out, "Last run: commit `{}`, device `{}`, {}. Every run's own provenance is in runs.csv.\n", r.provenance.git_commit, r.provenance.device, r.provenance.date);
    }
    let _ = writeln!(out, "## Data\n\n{}\n", data_summary(data));
    let _ = writeln!(out, "## Runs ({} of {} finished)\n\n{}", records.len(), sweep.runs.len(), table(sweep, records));
    let _ = writeln!(out, "bpb = bits per byte, ppl = perplexity per token; evaluation on {} tokens per split.\n", records.first().map_or(0, |r| r.test.tokens));
    let _ = writeln!(out, "## Plots\n");
    for p in plots {
        let _ = writeln!(out, "![{p}]({p})\n");
    }
    out
}
