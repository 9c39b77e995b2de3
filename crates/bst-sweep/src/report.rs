//! report.md and the console summary of a sweep.

use std::fmt::Write as _;
use std::rc::Rc;

use crate::grid::Sweep;
use bst_data::lra::LraDataset;

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
    let mut head = vec!["variant".to_string(), "layers (from 1)".to_string()];
    head.extend(sweep.grid_keys.iter().cloned());
    head.extend(["seed", "params", "tokens", "tok/s", "wall (s)", "valid bpb", "test bpb", "test ppl"].map(String::from));
    head.extend(factors.iter().map(|f| format!("test bpb {f}x len")));
    let answers = records.iter().any(|r| r.test.answers.is_some());
    if answers {
        head.extend(["test accuracy", "bits per answer"].map(String::from));
    }
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in records {
        let mut cells = vec![r.variant.clone(), r.placement.clone()];
        cells.extend(sweep.grid_keys.iter().map(|k| r.point.get(k).cloned().unwrap_or_default()));
        cells.extend([
            r.seed.to_string(),
            format!("{:.2}M", r.params as f64 / 1e6),
            format!("{:.2}M", r.tokens_seen as f64 / 1e6),
            format!("{:.0}", r.tokens_per_s),
            format!("{:.0}", r.wall_s),
            cell(r.valid.bits_per_byte, 3),
            cell(r.test.bits_per_byte, 3),
            cell(r.test.ppl, 2),
        ]);
        cells.extend(factors.iter().map(|f| r.longer.iter().find(|l| l.factor == *f).map_or(String::new(), |l| format!("{:.3}", l.test.bits_per_byte))));
        if answers {
            let a = r.test.answers.as_ref();
            cells.extend([a.map_or(String::new(), |a| format!("{:.3}", a.accuracy)), a.map_or(String::new(), |a| format!("{:.2}", a.bits))]);
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// The data of the sweep (one paragraph per distinct corpus or task), with the baselines every
/// model must clear: unigram bits per byte for corpora, chance accuracy for tasks.
pub fn data_summary(lm: &[Rc<LoadedData>], lra: &[Rc<LraDataset>]) -> String {
    let corpora = lm.iter().map(|d| {
        format!(
            "Corpus `{}` ({}), tokenizer `{}` (data card: `{}`): train {:.2}M tokens, valid {:.2}M, test {:.2}M. \
             Unigram entropy of the training bytes: {:.3} bits/byte; a unigram model fitted on train scores {:.3} bits/byte on test.",
            d.stats.corpus,
            d.stats.corpus.describe(),
            d.stats.tokenizer,
            d.cache_dir.join("CARD.md").display(),
            d.train.len() as f64 / 1e6,
            d.valid.len() as f64 / 1e6,
            d.test.len() as f64 / 1e6,
            d.stats.unigram_entropy_bpb,
            d.stats.unigram_test_bpb,
        ) + &d.stats.answer_chance.map_or(String::new(), |c| format!(" Answer accuracy of a model without memory reaching the answers' sources (chance): {c:.3}."))
    });
    let tasks = lra.iter().map(|d| {
        let counts = bst_data::lra::label_counts(&d.test, d.num_classes);
        let majority = *counts.iter().max().unwrap_or(&0) as f64 / d.test.len().max(1) as f64;
        format!("{}\n  majority-class accuracy on test: {majority:.3}", d.summary())
    });
    corpora.chain(tasks).collect::<Vec<_>>().join("\n\n")
}

/// One line on a finished run: bits per byte for a language model, accuracy when it has answers.
pub fn headline(r: &RunRecord) -> String {
    let mut parts = Vec::new();
    if r.test.bits_per_byte.is_finite() {
        parts.push(format!("valid bpb {:.3}, test bpb {:.3}", r.valid.bits_per_byte, r.test.bits_per_byte));
    }
    if let (Some(v), Some(t)) = (&r.valid.answers, &r.test.answers) {
        parts.push(format!("valid accuracy {:.3}, test accuracy {:.3}", v.accuracy, t.accuracy));
    }
    parts.join(", ")
}

/// A number for a table cell; empty where the metric does not apply (NaN).
pub fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() { format!("{v:.decimals$}") } else { String::new() }
}

/// The whole report.md.
pub fn markdown(sweep: &Sweep, records: &[RunRecord], data_text: &str, plots: &[String], command: &str) -> String {
    let mut out = format!("# {}\n\n", sweep.meta.name);
    if !sweep.meta.description.is_empty() {
        let _ = writeln!(out, "{}\n", sweep.meta.description);
    }
    let _ = writeln!(out, "Produced by `{command}` (profile `{}`, sweep file `{}`).", sweep.profile, sweep.file.display());
    if let Some(r) = records.last() {
        let _ = writeln!(out, "Last run: commit `{}`, device `{}`, {}. Every run's own provenance is in runs.csv.\n", r.provenance.git_commit, r.provenance.device, r.provenance.date);
    }
    let _ = writeln!(out, "## Data\n\n{data_text}\n");
    let _ = writeln!(out, "## Runs ({} of {} finished)\n\n{}", records.len(), sweep.runs.len(), table(sweep, records));
    let _ = writeln!(out, "bpb = bits per byte, ppl = perplexity per token (per label for a classification task); evaluation on {} tokens (examples, for a classification task) per split. \"layers (from 1)\" lists the layers that are not SLIDE, numbered from 1 as the paper counts them (`model.ssm_layers` counts from 0). Training windows: {}.\n", records.first().map_or(0, |r| r.test.tokens), sampling_summary(records));
    if let Some(spread) = params_spread(records.iter().map(|r| (r.variant.as_str(), r.params))) {
        let _ = writeln!(out, "{spread}\n");
    }
    let _ = writeln!(out, "## Plots\n");
    for p in plots {
        let _ = writeln!(out, "![{p}]({p})\n");
    }
    out
}

/// How the runs drew their training windows, in words.
fn sampling_summary(records: &[RunRecord]) -> String {
    let mut kinds: Vec<&str> = records.iter().map(|r| r.sampling.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let words = |k: &str| match k {
        "sequential" => "sequential (consecutive windows of whole documents per batch row, state carried from step to step)".to_string(),
        "random" => "random (independent windows, fresh state each step)".to_string(),
        other => other.to_string(),
    };
    match kinds.as_slice() {
        [one] => words(one),
        many => format!("differ between runs ({}); see the sampling column of runs.csv", many.join(", ")),
    }
}

/// How far apart the sizes of the compared models are, in one sentence (the paper compares models
/// of about the same size, so a difference in quality should be read against this); `None`
/// without runs.
pub fn params_spread<'a>(runs: impl IntoIterator<Item = (&'a str, usize)>) -> Option<String> {
    let mut runs: Vec<(&str, usize)> = runs.into_iter().collect();
    runs.sort_by_key(|&(variant, params)| (params, variant));
    let (&(small, min), &(large, max)) = (runs.first()?, runs.last()?);
    let m = |p: usize| format!("{:.2}M", p as f64 / 1e6);
    Some(if min == max {
        format!("Every run has {} parameters.", m(min))
    } else {
        format!("Parameters range from {} ({small}) to {} ({large}): the largest model has {:.0}% more than the smallest.", m(min), m(max), 100.0 * (max as f64 / min as f64 - 1.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_spread_names_the_smallest_and_largest() {
        let runs = [("SLIDE", 860_000), ("BST:MF:UNSTRUCT", 1_070_000), ("GSS-HYBRID", 620_000), ("SLIDE", 860_000)];
        assert_eq!(
            params_spread(runs).unwrap(),
            "Parameters range from 0.62M (GSS-HYBRID) to 1.07M (BST:MF:UNSTRUCT): the largest model has 73% more than the smallest."
        );
        assert_eq!(params_spread([("SLIDE", 860_000), ("SLIDE", 860_000)]).unwrap(), "Every run has 0.86M parameters.");
        assert_eq!(params_spread([]), None);
    }
}
