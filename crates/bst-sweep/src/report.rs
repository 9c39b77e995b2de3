//! report.md and the console summary of a sweep.

use std::fmt::Write as _;
use std::rc::Rc;

use crate::grid::Sweep;
use bst_data::lra::LraDataset;

use crate::provenance::Provenance;
use crate::run::{LoadedData, RunFailure, RunRecord};

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

/// One line on a finished run: bits per byte for a language model, accuracy when it has answers
/// (alone when the model trained on the answers only: its bits per byte score bytes it never
/// learned to predict).
pub fn headline(r: &RunRecord) -> String {
    let mut parts = Vec::new();
    if r.test.bits_per_byte.is_finite() && !r.config.answers_only() {
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

/// `commit(s) `a`, `b`<what> on <devices>, from <first date> to <last>`; `None` for no launches.
fn provenance_line(launches: &[&Provenance], what: &str) -> Option<String> {
    let distinct = |f: fn(&Provenance) -> &str| {
        let mut v: Vec<&str> = launches.iter().map(|p| f(p)).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (commits, devices, dates) = (distinct(|p| &p.git_commit), distinct(|p| &p.device), distinct(|p| &p.date));
    let (first, last) = (dates.first()?, dates.last()?);
    Some(format!("commit{} `{}`{what} on {}, from {first} to {last}", if commits.len() > 1 { "s" } else { "" }, commits.join("`, `"), devices.join(", ")))
}

/// The whole report.md: provenance, data, one section per study, the speed study, failures.
pub fn markdown(sweep: &Sweep, records: &[&RunRecord], failures: &[&RunFailure], data_text: &str, sections: &[String], command: &str) -> String {
    let mut out = format!("# {}\n\n", sweep.meta.name);
    if !sweep.meta.description.is_empty() {
        let _ = writeln!(out, "{}\n", sweep.meta.description);
    }
    let _ = writeln!(out, "Produced by `{command}` (profile `{}`, sweep file `{}`, seeds {:?}).", sweep.profile, sweep.file.display(), sweep.meta.seeds);
    let trained: Vec<&Provenance> = records.iter().flat_map(|r| r.training_provenance()).collect();
    // results from before the build commit was recorded hold the checkout's commit
    let what = if trained.iter().all(|p| !p.checkout_commit.is_empty()) { " (the binaries' build)" } else { "" };
    if let Some(line) = provenance_line(&trained, what) {
        let _ = writeln!(out, "Runs trained at {line}; every run's own provenance is in runs.csv.\n");
    }
    let again: Vec<&Provenance> = records.iter().filter(|r| r.evaluated_again()).map(|r| &r.provenance).collect();
    if let Some(line) = provenance_line(&again, " (the binaries' build)") {
        let _ = writeln!(out, "{} of these runs were evaluated again from their final checkpoints (no step trained) at {line}; their scores are that evaluation's (runs.csv's commit and date too).\n", again.len());
    }
    let total_wall: f64 = records.iter().map(|r| r.wall_s).sum();
    let _ = writeln!(
        out,
        "{} of {} runs finished{}; their training took {} in all. Bits per byte divide by the exact bytes of the tokens scored; bpb = bits per byte, ppl = perplexity per token. Training windows: {}.\n",
        records.len(),
        sweep.runs.len(),
        if failures.is_empty() { String::new() } else { format!(", {} failed or diverged (listed at the end)", failures.len()) },
        crate::progress::duration(total_wall),
        sampling_summary(records)
    );
    if let Some(spread) = params_spread(records.iter().map(|r| (r.variant.as_str(), r.params))) {
        let _ = writeln!(out, "{spread}\n");
    }
    let _ = writeln!(out, "## Data\n\n{data_text}\n");
    for s in sections {
        out.push_str(s);
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "## Failed runs\n\n| run | variant | seed | status | error |\n|---|---|---|---|---|");
        for f in failures {
            let _ = writeln!(out, "| {} | {} | {} | {} | {} |", f.run_id, f.variant, f.seed, f.status, f.error.replace('|', "/").replace('\n', " "));
        }
        out.push('\n');
    }
    out
}

/// How the runs drew their training windows, in words.
fn sampling_summary(records: &[&RunRecord]) -> String {
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
