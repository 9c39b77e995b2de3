//! The multi-state RNN study over a sweep's trained runs (`[msrnn]` in a sweep file; Oren et al.
//! 2024, "Transformers are Multi-State RNNs"). Every finished language-model run is scored on
//! the same chunks of its test split, each chunk read from an empty state:
//! - full-attention runs (TRANSFORMER) are decoded token by token through a KV cache bounded to
//!   `k` entries per layer under each policy (bst-msrnn's engine, the one the pretrained llama
//!   uses), plus the unbounded cache as the topline;
//! - SLIDE, BRECT and the BST layers are bounded by construction (their window, recurrent states,
//!   SSM state: `LayerPlan::stream_state_floats`) and are scored by their own forward pass.
//!
//! Each row records the state in bytes (f32, one sequence) next to the perplexity, so one chart
//! sets every model's quality against the memory it carries from token to token. Rows are
//! appended to `msrnn.csv` run by run, so an interrupted study resumes; the settings are kept in
//! `msrnn.json`, and a change of settings starts the table afresh.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bst_model::{checkpoint, LanguageModel, RunConfig};
use bst_msrnn::{LabTransformer, Policy};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use toml::Table;

use crate::grid::deserialize_at;

use crate::error::write_atomically;
use crate::plot::{self, Band, Chart, Series, Style, XAxis};
use plotters::style::RGBColor;
use crate::run::{self, LoadedData, Outcome};
use crate::stats::{Comparison, Summary, ALPHA};
use crate::{RunSpec, Sweep, SweepError};

/// The `[msrnn]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MsrnnConfig {
    /// Cache policies for full-attention runs: `window`, `window+<i>` (i sinks; `window+` = 4),
    /// `h2o`, `tova`, `tova-headwise`, `tova-keepnew`. The unbounded cache is always added as
    /// the topline.
    pub policies: Vec<String>,
    /// Cache budgets k: entries per layer.
    pub budgets: Vec<usize>,
    /// Chunks of the test split, spread evenly over it.
    pub chunks: usize,
    /// Tokens per chunk (0: `train.seq_len`, the length every model was trained at); at most
    /// `train.seq_len`, so that no model reads past what it was trained on.
    pub context: usize,
    /// First target position scored, the same for every model and policy (0: the largest
    /// budget, the paper's protocol of scoring only positions after k).
    pub score_from: usize,
}

impl Default for MsrnnConfig {
    fn default() -> Self {
        let policies = ["window", "window+4", "h2o", "tova"].map(String::from).to_vec();
        Self { policies, budgets: vec![16, 32, 64, 128], chunks: 32, context: 0, score_from: 0 }
    }
}

impl MsrnnConfig {
    /// Reads `[msrnn]`, resolves its defaults against the sweep's `[base]` and checks every value.
    pub fn from_table(table: Table, base: &Table) -> Result<Self, String> {
        let mut cfg: MsrnnConfig = deserialize_at(table, "msrnn")?;
        let run: RunConfig = deserialize_at(base.clone(), "base")?;
        let seq_len = run.train.seq_len;
        if cfg.context == 0 {
            cfg.context = seq_len;
        }
        if cfg.score_from == 0 {
            cfg.score_from = cfg.budgets.iter().copied().max().unwrap_or(1);
        }
        if cfg.policies.is_empty() || cfg.budgets.is_empty() || cfg.chunks == 0 {
            return Err("msrnn: policies and budgets must each list at least one value, and chunks must be >= 1".into());
        }
        let policies = cfg.parsed_policies()?;
        for &k in &cfg.budgets {
            for p in &policies {
                p.validate(k).map_err(|e| format!("msrnn.budgets: {e}"))?;
            }
        }
        if cfg.context > seq_len {
            return Err(format!("msrnn.context = {}: must be at most train.seq_len = {seq_len} (every model is read from a fresh state, one training window long)", cfg.context));
        }
        if cfg.score_from >= cfg.context {
            return Err(format!("msrnn.score_from = {}: must be below msrnn.context = {} (nothing would be scored)", cfg.score_from, cfg.context));
        }
        Ok(cfg)
    }

    fn parsed_policies(&self) -> Result<Vec<Policy>, String> {
        self.policies
            .iter()
            .map(|p| match p.parse::<Policy>() {
                Ok(Policy::Full) => Err("msrnn.policies: `full` is always added as the topline; list only bounded policies".to_string()),
                Ok(policy) => Ok(policy),
                Err(_) => Err(format!("msrnn.policies: unknown policy `{p}`, expected window, window+<i>, h2o, tova, tova-headwise, tova-keepnew")),
            })
            .collect()
    }

    /// Every (policy, budget) a full-attention run is decoded under; the unbounded cache first.
    fn settings(&self) -> Vec<(Policy, Option<usize>)> {
        let bounded = self.parsed_policies().expect("validated at load");
        std::iter::once((Policy::Full, None)).chain(bounded.into_iter().flat_map(|p| self.budgets.iter().map(move |&k| (p, Some(k))))).collect()
    }
}

/// One (run, policy, budget) of msrnn.csv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsrnnRow {
    pub run_id: String,
    /// The run's variant name (its first study's).
    pub model: String,
    pub seed: u64,
    /// The cache policy, or `by construction` for a model whose state is bounded by its layers.
    pub policy: String,
    /// The cache budget (0: none).
    pub k: usize,
    /// State carried between tokens, one sequence, f32: the cache measured at the end of the
    /// chunk for full attention, the layers' count for the others.
    pub state_bytes: usize,
    /// Targets scored (chunks x positions from `score_from` on).
    pub tokens: usize,
    /// Mean negative log-likelihood, nats per token.
    pub nll: f64,
    pub perplexity: f64,
}

const BY_CONSTRUCTION: &str = "by construction";

/// Runs the study over every finished run not yet in msrnn.csv; returns the CSV's path.
pub fn run(sweep: &Sweep, cfg: &MsrnnConfig, results_dir: &Path, device: Device, data: &mut run::DataCache, log: &dyn Fn(String)) -> Result<PathBuf, SweepError> {
    let (csv, settings) = (results_dir.join("msrnn.csv"), results_dir.join("msrnn.json"));
    let wanted = serde_json::to_string_pretty(cfg).expect("settings serialise");
    let mut rows = match std::fs::read_to_string(&settings) {
        Ok(old) if old == wanted => read(results_dir)?.unwrap_or_default(),
        _ => Vec::new(), // new or changed settings: start afresh
    };
    write_atomically(&settings, wanted.as_bytes())?;
    for spec in &sweep.runs {
        let Some(Outcome::Finished(_)) = run::outcome(results_dir, spec) else { continue };
        if rows.iter().any(|r| r.run_id == spec.run_id) || spec.config.lra.is_some() {
            continue;
        }
        let model = &spec.memberships[0].variant;
        if spec.plan.stream_state_floats(&spec.config.layer_config()).is_none() && !LabTransformer::accepts(&spec.plan) {
            log(format!("[msrnn] {model} [{}]: skipped (its state is neither bounded by construction nor a KV cache: {})", spec.run_id, spec.plan.placement()));
            continue;
        }
        log(format!("[msrnn] {model} seed {} [{}]: scoring {} chunks of {} tokens", spec.config.seed, spec.run_id, cfg.chunks, cfg.context));
        rows.extend(score_run(spec, cfg, &run::run_dir(results_dir, &spec.run_id), device, data)?);
        write_csv(&csv, &rows)?; // after every run: an interruption loses at most the current one
    }
    write_csv(&csv, &rows)?;
    Ok(csv)
}

/// The rows of one trained run (in `dir`): every (policy, k) and the full cache for a
/// full-attention run, one row for a model whose state is bounded by construction.
fn score_run(spec: &RunSpec, cfg: &MsrnnConfig, dir: &Path, device: Device, data: &mut run::DataCache) -> Result<Vec<MsrnnRow>, SweepError> {
    let loaded = data.get(&spec.config.data)?;
    let vs = nn::VarStore::new(device);
    let lm = spec.config.build_model(&vs.root(), loaded.tokenizer.vocab_size())?;
    checkpoint::load_weights(&dir.join("checkpoint").join("model.safetensors"), &vs)?;
    let chunks = chunks_of(&loaded, cfg, dir)?;
    let row = |policy: String, k: usize, state_bytes: usize, logprobs: &Tensor| {
        let scored = logprobs.narrow(1, cfg.score_from as i64 - 1, (cfg.context - cfg.score_from) as i64);
        let nll = -scored.mean(Kind::Double).double_value(&[]);
        let model = spec.memberships[0].variant.clone();
        MsrnnRow { run_id: spec.run_id.clone(), model, seed: spec.config.seed, policy, k, state_bytes, tokens: scored.numel(), nll, perplexity: nll.exp() }
    };
    let failed = |e: bst_msrnn::MsrnnError| SweepError::File { path: dir.to_owned(), reason: e.to_string() };
    match spec.plan.stream_state_floats(&spec.config.layer_config()) {
        Some(floats) => Ok(vec![row(BY_CONSTRUCTION.into(), 0, floats * 4, &own_scores(&lm, &chunks, device))]),
        None => {
            let lab = LabTransformer::from_vars(&vs, &spec.config).map_err(failed)?;
            let settings = cfg.settings();
            let decoded = bst_msrnn::study::decode_chunks(&lab, &chunks, &settings, cfg.chunks, |_, _, _, _| {}, &mut |_, _| {}).map_err(failed)?;
            Ok(settings.iter().zip(&decoded).map(|((policy, k), d)| row(policy.to_string(), k.unwrap_or(0), d.cache_bytes_per_seq, &d.logprobs)).collect())
        }
    }
}

/// `cfg.chunks` windows of `cfg.context` tokens spread evenly over the test split.
fn chunks_of(data: &LoadedData, cfg: &MsrnnConfig, dir: &Path) -> Result<Tensor, SweepError> {
    let n = data.test.len();
    if n < cfg.context {
        return Err(SweepError::File { path: dir.to_owned(), reason: format!("the test split has {n} tokens, fewer than msrnn.context = {}", cfg.context) });
    }
    let span = n - cfg.context;
    let starts: Vec<usize> = (0..cfg.chunks).map(|i| if cfg.chunks == 1 { 0 } else { i * span / (cfg.chunks - 1) }).collect();
    Ok(data.test.windows(&starts, cfg.context))
}

/// A model's own log-probabilities of each chunk from a fresh state. # Shapes: `[chunks, context]` -> `[chunks, context - 1]`
fn own_scores(lm: &LanguageModel, chunks: &Tensor, device: Device) -> Tensor {
    let rows: Vec<Tensor> = (0..chunks.size()[0])
        .map(|i| {
            let tokens: Vec<i64> = Vec::try_from(chunks.get(i)).expect("int64 tokens");
            Tensor::from_slice(&lm.score(&tokens, device))
        })
        .collect();
    Tensor::stack(&rows, 0)
}

fn write_csv(path: &Path, rows: &[MsrnnRow]) -> Result<(), SweepError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| SweepError::File { path: path.to_owned(), reason: e.to_string() })?;
    }
    let bytes = w.into_inner().map_err(|e| SweepError::File { path: path.to_owned(), reason: e.to_string() })?;
    write_atomically(path, &bytes)
}

/// msrnn.csv, if the study has run.
pub fn read(results_dir: &Path) -> Result<Option<Vec<MsrnnRow>>, SweepError> {
    let path = results_dir.join("msrnn.csv");
    if !path.exists() {
        return Ok(None);
    }
    let bad = |e: csv::Error| SweepError::File { path: path.clone(), reason: e.to_string() };
    let rows = csv::Reader::from_path(&path).map_err(bad)?.deserialize().collect::<Result<Vec<MsrnnRow>, _>>().map_err(bad)?;
    Ok(Some(rows))
}

/// (model, policy, k) -> (state bytes, perplexity over seeds).
type Grouped = BTreeMap<(String, String, usize), (usize, Summary)>;

fn grouped(rows: &[MsrnnRow]) -> Grouped {
    let mut values: BTreeMap<(String, String, usize), (usize, Vec<f64>)> = BTreeMap::new();
    for r in rows {
        let e = values.entry((r.model.clone(), r.policy.clone(), r.k)).or_insert((r.state_bytes, Vec::new()));
        e.0 = e.0.max(r.state_bytes);
        e.1.push(r.perplexity);
    }
    values.into_iter().map(|(key, (bytes, v))| (key, (bytes, Summary::of(&v).expect("a group has a value")))).collect()
}

/// The chart (perplexity against state bytes) and the report section.
pub fn outputs(rows: &[MsrnnRow], results_dir: &Path, title: &str) -> Result<(Vec<PathBuf>, String), SweepError> {
    let groups = grouped(rows);
    let mut palette = plot::Palette::default();
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut bands = Vec::new();
    for ((model, policy, _), (bytes, s)) in &groups {
        let kib = *bytes as f64 / 1024.0;
        if policy == "full" {
            bands.push(Band { label: format!("{model}, full cache ({kib:.0} KiB)"), color: plot::arch_color(model), mean: s.mean, sd: s.sd });
            continue;
        }
        let label = if policy == BY_CONSTRUCTION { model.clone() } else { format!("{model} + {policy}") };
        let style = if policy == BY_CONSTRUCTION { Style::Dots } else { Style::Line };
        let color = if policy == BY_CONSTRUCTION { palette.color(model) } else { policy_color(policy) };
        let entry = series.entry(label.clone()).or_insert_with(|| Series { label, color, points: Vec::new(), style });
        entry.points.push((kib, s.mean, s.sd));
    }
    let mut series: Vec<Series> = series.into_values().collect();
    series.iter_mut().for_each(|s| s.points.sort_by(|a, b| a.0.total_cmp(&b.0)));
    let chart = Chart {
        title: format!("{title}: perplexity against the state carried between tokens"),
        x_desc: "state per sequence, KiB (f32; log scale)".into(),
        y_desc: "test perplexity per token (mean ± sd over seeds)".into(),
        x: XAxis::Log,
        log_y: false,
        series,
        bands,
    };
    let mut files = vec![results_dir.join("msrnn.csv")];
    files.extend(plot::render(&[chart], &results_dir.join("msrnn_state"))?);
    Ok((files, section(rows, &groups)))
}

/// One colour per cache policy, apart from the architectures' colours.
fn policy_color(policy: &str) -> RGBColor {
    match policy {
        "window" => RGBColor(255, 127, 14),
        "h2o" => RGBColor(44, 160, 44),
        "tova" => RGBColor(148, 103, 189),
        p if p.starts_with("tova") => RGBColor(227, 119, 194),
        p if p.starts_with("window+") => RGBColor(140, 86, 75),
        _ => RGBColor(23, 190, 207),
    }
}

fn section(rows: &[MsrnnRow], groups: &Grouped) -> String {
    let tokens = rows.first().map_or(0, |r| r.tokens);
    let mut out = format!(
        "## Multi-state RNNs: perplexity against state\n\n![perplexity against state](msrnn_state.png)\n\nEvery run scored on the same {tokens} target tokens of its test split (chunks read from an empty state; only positions past the largest budget count). TRANSFORMER runs are decoded token by token with a KV cache of k entries per layer under each policy (state = the cache at the end of a chunk, measured); SLIDE, BRECT and BST carry a state bounded by construction (counted per layer: window keys and values, recurrent states, SSM state, context states). Perplexity is per token (the same tokenizer for every run of a study); `msrnn.csv` has every run.\n\n| model | policy | k | state (KiB) | perplexity | seeds |\n|---|---|---|---|---|---|\n"
    );
    for ((model, policy, k), (bytes, s)) in groups {
        let k = if *k == 0 { "-".to_string() } else { k.to_string() };
        let _ = writeln!(out, "| {model} | {policy} | {k} | {:.1} | {:.3} ± {:.3} | {} |", *bytes as f64 / 1024.0, s.mean, s.sd, s.n);
    }
    out.push_str(&policy_orderings(rows, groups));
    out.push_str(&comparisons(groups));
    out
}

/// Per (full-attention model, budget), the policies from lowest to highest perplexity (the
/// paper's ordering is TOVA <= H2O <= Window+4 << Window), and the lowest against each other
/// policy in a t-test paired over seeds (every policy decodes the same runs).
fn policy_orderings(rows: &[MsrnnRow], groups: &Grouped) -> String {
    let mut by_budget: BTreeMap<(String, usize), Vec<(String, f64)>> = BTreeMap::new();
    for ((model, policy, k), (_, s)) in groups.iter().filter(|((_, p, _), _)| p != BY_CONSTRUCTION && p != "full") {
        by_budget.entry((model.clone(), *k)).or_default().push((policy.clone(), s.mean));
    }
    let per_seed = |model: &str, policy: &str, k: usize| -> BTreeMap<u64, f64> { rows.iter().filter(|r| r.model == model && r.policy == policy && r.k == k).map(|r| (r.seed, r.perplexity)).collect() };
    let mut out = format!("\nPolicies from lowest to highest perplexity (means over seeds; the paper's order is tova, h2o, window+4, then window far behind), and the lowest against each other one (t-test paired over seeds, p < {ALPHA}):\n");
    for ((model, k), mut policies) in by_budget {
        policies.sort_by(|a, b| a.1.total_cmp(&b.1));
        let order: Vec<String> = policies.iter().map(|(p, m)| format!("{p} {m:.3}")).collect();
        let best = per_seed(&model, &policies[0].0, k);
        let tests: Vec<String> = policies[1..]
            .iter()
            .map(|(p, _)| {
                let other = per_seed(&model, p, k);
                let pairs: Vec<(f64, f64)> = best.iter().filter_map(|(seed, a)| other.get(seed).map(|b| (*a, *b))).collect();
                match Comparison::paired(&pairs) {
                    Some(c) => format!("vs {p}: {} (t = {:.2}, p = {:.3})", if c.significant() { "beyond the spread" } else { "within the spread" }, c.t, c.p),
                    None => format!("vs {p}: too few seeds to test"),
                }
            })
            .collect();
        let _ = writeln!(out, "- {model}, k = {k}: {}; {}", order.join(" < "), tests.join("; "));
    }
    out
}

/// For each model bounded by construction, the best cache policy of full attention at no more
/// state, in words.
fn comparisons(groups: &Grouped) -> String {
    let mut out = String::from("\n");
    for ((model, _, _), (bytes, s)) in groups.iter().filter(|((_, p, _), _)| p == BY_CONSTRUCTION) {
        let best = groups.iter().filter(|((_, p, _), (b, _))| p != BY_CONSTRUCTION && p != "full" && b <= bytes).min_by(|a, b| a.1 .1.mean.total_cmp(&b.1 .1.mean));
        let line = match best {
            Some(((m, p, k), (b, t))) => {
                // different trained models: Welch's test over their seeds
                let verdict = match Comparison::welch(s, t) {
                    None => "not separable from one seed".to_string(),
                    Some(c) if !c.significant() => format!("within the seed spread (Welch p = {:.3})", c.p),
                    Some(c) => format!("{}, beyond the seed spread (Welch p = {:.3})", if s.mean < t.mean { "better" } else { "worse" }, c.p),
                };
                format!("- {model} ({:.1} KiB): {:.3} ± {:.3}; the best cache policy at no more state is {m} + {p} with k = {k} ({:.1} KiB): {:.3} ± {:.3}: {model} is {verdict}.\n", *bytes as f64 / 1024.0, s.mean, s.sd, *b as f64 / 1024.0, t.mean, t.sd)
            }
            None => format!("- {model} ({:.1} KiB): {:.3} ± {:.3}; no cache policy was run at that little state.\n", *bytes as f64 / 1024.0, s.mean, s.sd),
        };
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Table {
        toml::from_str("train.seq_len = 256").unwrap()
    }

    #[test]
    fn defaults_resolve_against_the_base_and_bad_values_name_the_key() {
        let cfg = MsrnnConfig::from_table(Table::new(), &base()).unwrap();
        assert_eq!((cfg.context, cfg.score_from), (256, 128));
        assert_eq!(cfg.settings().len(), 1 + 4 * 4, "the full cache plus every policy x budget");
        let err = |t: &str| MsrnnConfig::from_table(toml::from_str(t).unwrap(), &base()).unwrap_err();
        assert!(err("policies = [\"lru\"]").contains("msrnn.policies: unknown policy `lru`"));
        assert!(err("policies = [\"full\"]").contains("topline"));
        assert!(err("context = 512").contains("msrnn.context = 512"));
        assert!(err("budgets = [4]\npolicies = [\"window+4\"]").contains("msrnn.budgets"));
        assert!(err("score_from = 300").contains("msrnn.score_from"));
        assert!(err("chunk = 3").starts_with("msrnn.chunk"), "{}", err("chunk = 3"));
    }

    fn row(model: &str, policy: &str, k: usize, bytes: usize, seed: u64, ppl: f64) -> MsrnnRow {
        MsrnnRow { run_id: format!("{model}{seed}"), model: model.into(), seed, policy: policy.into(), k, state_bytes: bytes, tokens: 100, nll: ppl.ln(), perplexity: ppl }
    }

    #[test]
    fn the_section_compares_each_bounded_model_with_the_best_policy_at_no_more_state() {
        let rows = vec![
            row("SLIDE", BY_CONSTRUCTION, 0, 4096, 0, 10.0),
            row("SLIDE", BY_CONSTRUCTION, 0, 4096, 1, 10.2),
            row("TRANSFORMER", "tova", 32, 4096, 0, 12.0),
            row("TRANSFORMER", "tova", 32, 4096, 1, 12.1),
            row("TRANSFORMER", "window", 32, 4096, 0, 14.0),
            row("TRANSFORMER", "tova", 64, 8192, 0, 9.0),
            row("TRANSFORMER", "full", 0, 65536, 0, 8.0),
        ];
        let text = section(&rows, &grouped(&rows));
        assert!(text.contains("| SLIDE | by construction | - | 4.0 | 10.100 ± 0.141 | 2 |"), "{text}");
        assert!(text.contains("TRANSFORMER + tova with k = 32 (4.0 KiB): 12.050"), "the 8 KiB cache is more state than SLIDE's: {text}");
        assert!(text.contains("SLIDE is better, beyond the seed spread (Welch p = "), "{text}");
        assert!(text.contains("- TRANSFORMER, k = 32: tova 12.050 < window 14.000; vs window: too few seeds to test"), "{text}");
    }
}
