//! One study of a sweep, read back from its runs: every configuration (a variant at a point) with
//! its metric over seeds, the comparisons with the study's baselines, its charts and its section
//! of the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bst_model::EvalMetrics;

use crate::grid::{axis_key, display_value, Claim, PaperTable, Selector, Study, Sweep};
use crate::plot::{Band, Chart, Palette, Series, Style, XAxis};
use crate::run::{Outcome, RunRecord};
use crate::stats::{Comparison, Summary, ALPHA};

/// A per-run test score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Test bits per byte (language models).
    TestBpb,
    /// Test perplexity per token (what the paper's tables report; only comparable between runs
    /// with one tokenizer).
    TestPpl,
    /// Test accuracy on the answers of a synthetic task, or on the labels of a classification task.
    AnswerAccuracy,
}

impl Metric {
    /// The metrics a study is reported and plotted in (perplexity goes into paper tables only).
    pub const ALL: [Metric; 2] = [Metric::TestBpb, Metric::AnswerAccuracy];

    /// The value for one evaluation, if the metric applies to it.
    pub fn of(self, m: &EvalMetrics) -> Option<f64> {
        match self {
            Metric::TestBpb => Some(m.bits_per_byte).filter(|v| v.is_finite()),
            Metric::TestPpl => Some(m.ppl).filter(|v| v.is_finite() && m.answers.is_none()),
            Metric::AnswerAccuracy => m.answers.as_ref().map(|a| a.accuracy),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::TestBpb => "test bits per byte",
            Metric::TestPpl => "test perplexity",
            Metric::AnswerAccuracy => "test accuracy",
        }
    }

    /// Axis label, with units and direction.
    pub fn axis(self) -> &'static str {
        match self {
            Metric::TestBpb => "test bits per byte (lower is better)",
            Metric::TestPpl => "test perplexity per token (lower is better)",
            Metric::AnswerAccuracy => "test accuracy, fraction correct (higher is better)",
        }
    }

    pub fn file_suffix(self) -> &'static str {
        match self {
            Metric::TestBpb => "bpb",
            Metric::TestPpl => "ppl",
            Metric::AnswerAccuracy => "accuracy",
        }
    }

    fn lower_is_better(self) -> bool {
        self != Metric::AnswerAccuracy
    }

    fn decimals(self) -> usize {
        match self {
            Metric::TestPpl => 2,
            _ => 3,
        }
    }
}

/// A run's `metric` on the test split at `factor` times its training length (1: as trained).
fn metric_at(r: &RunRecord, metric: Metric, factor: usize) -> Option<f64> {
    if factor == 1 { metric.of(&r.test) } else { r.longer.iter().find(|l| l.factor == factor).and_then(|l| metric.of(&l.test)) }
}

/// One configuration of a study: a variant at a point, over its seeds.
#[derive(Debug, Clone)]
pub struct Cell<'a> {
    pub variant: String,
    /// The study's keys as this configuration has them (a variant not crossed with a key lacks it).
    pub point: Vec<(String, String)>,
    pub records: Vec<&'a RunRecord>,
    /// Runs of this configuration that failed or diverged.
    pub failures: usize,
}

impl Cell<'_> {
    pub fn summary(&self, metric: Metric) -> Option<Summary> {
        self.summary_at(metric, 1)
    }

    /// The same at `factor` times the training length.
    pub fn summary_at(&self, metric: Metric, factor: usize) -> Option<Summary> {
        Summary::of(&self.records.iter().filter_map(|r| metric_at(r, metric, factor)).collect::<Vec<_>>())
    }

    /// Bits per byte of the same-target length evaluation at `factor` over the seeds.
    pub fn length_summary(&self, factor: f64) -> Option<Summary> {
        Summary::of(&self.records.iter().filter_map(|r| r.length_eval.iter().find(|l| l.factor == factor)).map(|l| l.bits_per_byte).collect::<Vec<_>>())
    }

    /// Answer accuracy over the seeds for the answers whose source lies `from..to` back.
    fn distance_summary(&self, from: usize, to: usize) -> Option<Summary> {
        let of = |r: &&RunRecord| r.test.answers.as_ref()?.by_distance.iter().find(|b| b.from == from && b.to == to && b.count > 0).map(|b| b.accuracy);
        Summary::of(&self.records.iter().filter_map(of).collect::<Vec<_>>())
    }

    /// The metric of each seed at `factor` times the training length (1: the test split as trained).
    fn by_seed_at(&self, metric: Metric, factor: usize) -> BTreeMap<u64, f64> {
        self.records.iter().filter_map(|r| metric_at(r, metric, factor).map(|v| (r.seed, v))).collect()
    }

    /// This configuration against `other` over the seeds: paired when both ran the same seeds
    /// (two or more), Welch's test otherwise.
    pub fn compare(&self, other: &Cell, metric: Metric) -> Option<Comparison> {
        self.compare_at(other, metric, 1)
    }

    /// [`Cell::compare`] at `factor` times the training length.
    fn compare_at(&self, other: &Cell, metric: Metric, factor: usize) -> Option<Comparison> {
        let (a, b) = (self.by_seed_at(metric, factor), other.by_seed_at(metric, factor));
        if a.len() >= 2 && a.keys().eq(b.keys()) {
            return Comparison::paired(&a.iter().map(|(s, v)| (*v, b[s])).collect::<Vec<_>>());
        }
        Comparison::welch(&self.summary_at(metric, factor)?, &other.summary_at(metric, factor)?)
    }

    /// Mean parameter count over the seeds.
    pub fn params(&self) -> Option<f64> {
        (!self.records.is_empty()).then(|| self.records.iter().map(|r| r.params as f64).sum::<f64>() / self.records.len() as f64)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.point.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn arch(&self) -> String {
        self.records.first().map_or_else(String::new, |r| r.arch.clone())
    }

    /// `variant key=value ...` without the key on the x axis.
    fn label_without(&self, x: Option<&str>) -> String {
        self.label_without_keys(&x.into_iter().collect::<Vec<_>>())
    }

    /// The variant and its values of every key but `keys`.
    fn label_without_keys(&self, keys: &[&str]) -> String {
        let others: Vec<String> = self.point.iter().filter(|(k, _)| !keys.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
        [vec![self.variant.clone()], others].concat().into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
    }
}

/// The configurations of `study`, in the order the file lists them.
pub fn cells<'a>(sweep: &Sweep, study: &Study, outcomes: &'a BTreeMap<String, Outcome>) -> Vec<Cell<'a>> {
    let mut out: Vec<Cell> = Vec::new();
    for run in &sweep.runs {
        for m in run.memberships.iter().filter(|m| m.study == study.name) {
            let point: Vec<(String, String)> = m.point.iter().map(|(k, v)| (k.clone(), display_value(v))).collect();
            let i = match out.iter().position(|c| c.variant == m.variant && c.point == point) {
                Some(i) => i,
                None => {
                    out.push(Cell { variant: m.variant.clone(), point, records: Vec::new(), failures: 0 });
                    out.len() - 1
                }
            };
            match outcomes.get(&run.run_id) {
                Some(Outcome::Finished(r)) => out[i].records.push(r),
                Some(Outcome::Failed(_)) => out[i].failures += 1,
                None => {}
            }
        }
    }
    out
}

/// A configuration value as the plot shows it: BST layer indices numbered from 1 as the paper
/// does (`[1]` -> `2`, `[0, 2]` -> `1,3`); `count(...)` counts a list.
pub fn x_label(x: &str, value: &str) -> String {
    let list = || -> Option<Vec<i64>> { toml::from_str::<toml::Table>(&format!("v = {value}")).ok()?.get("v")?.as_array()?.iter().map(|v| v.as_integer()).collect() };
    if x.starts_with("count(") {
        return list().map_or_else(|| value.to_string(), |l| l.len().to_string());
    }
    if x == "model.ssm_layers" {
        if let Some(l) = list() {
            return l.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(",");
        }
    }
    value.to_string()
}

/// The x axis title of a study key.
fn x_desc(x: &str) -> String {
    match x {
        "model.ssm_layers" => "BST layer (numbered from 1, as in the paper)".into(),
        "count(model.ssm_layers)" => "number of BST layers".into(),
        "ssm.state_size" => "SSM state size N".into(),
        "attn.window" => "window W (tokens)".into(),
        "model.context_states" => "context states S".into(),
        "params" => "parameters (millions)".into(),
        other => other.into(),
    }
}

/// A short name of a study key for prose (`BST layer 2`, `N 32`).
fn x_short(x: &str) -> &str {
    match x {
        "model.ssm_layers" => "BST layer",
        "count(model.ssm_layers)" => "BST layers:",
        "ssm.state_size" => "N",
        "attn.window" => "W",
        "model.context_states" => "S",
        other => other,
    }
}

/// The same-target length evaluation of a study's configurations (`plot_x = "eval_length"`):
/// bits per byte against the evaluated length, one line per configuration, log x.
fn length_chart(study: &Study, cells: &[Cell], title_prefix: &str) -> Option<Chart> {
    let mut palette = Palette::default();
    let series: Vec<Series> = cells
        .iter()
        .filter_map(|c| {
            let r = c.records.first()?;
            let points: Vec<(f64, f64, f64)> = r.length_eval.iter().filter_map(|l| c.length_summary(l.factor).map(|s| (l.eval_len as f64, s.mean, s.sd))).collect();
            (!points.is_empty()).then(|| Series { label: c.label_without(None), color: palette.color(&r.arch), points, style: Style::Line })
        })
        .collect();
    (!series.is_empty()).then(|| Chart {
        title: format!("{title_prefix}{}: bits per byte by evaluated length (same targets, mean ± sd)", study.name),
        x_desc: "evaluated length (tokens; trained at train.seq_len)".into(),
        y_desc: Metric::TestBpb.axis().into(),
        x: XAxis::Log,
        log_y: false,
        series,
        bands: Vec::new(),
    })
}

/// Whether `key` takes one value per value of `x` across the cells (zipped with it, or constant).
fn follows(cells: &[Cell], x: &str, key: &str) -> bool {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    cells.iter().filter_map(|c| c.value(x).zip(c.value(key))).all(|(xv, kv)| *seen.entry(xv).or_insert(kv) == kv)
}

/// The study's chart of `metric`: numeric x as lines with ± sd bands, categories as dots with
/// error bars, variants that do not vary along x as horizontal reference bands. `plot_x` may
/// also be `params` (the mean parameter count) or `eval_length` (see [`length_chart`]).
pub fn chart(study: &Study, cells: &[Cell], metric: Metric, title_prefix: &str) -> Option<Chart> {
    let x = study.x.as_deref();
    if x == Some("eval_length") {
        return if metric == Metric::TestBpb { length_chart(study, cells, title_prefix) } else { None };
    }
    let key = x.map(axis_key);
    let along = |c: &Cell| match x {
        Some("params") => c.params().map(|p| format!("{:.3}", p / 1e6)),
        _ => key.and_then(|k| c.value(k)).map(|v| x_label(x.unwrap_or(""), v)),
    };
    let mut labels: Vec<String> = Vec::new();
    for c in cells.iter().filter(|c| c.summary(metric).is_some()) {
        let l = along(c).unwrap_or_else(|| c.variant.clone());
        if along(c).is_some() && !labels.contains(&l) {
            labels.push(l);
        }
    }
    // one value along x is a category: its configurations then stand side by side as dots
    // instead of hiding behind one another on a single point of a line
    let numeric = labels.len() > 1 && labels.iter().all(|l| l.parse::<f64>().is_ok());
    if numeric {
        labels.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
    }
    // keys that move with x (zipped with it) do not split a line
    let moving: Vec<&str> = key.map_or_else(Vec::new, |k| study.keys.iter().map(String::as_str).filter(|o| *o != k && follows(cells, k, o)).collect());
    let unlabelled: Vec<&str> = key.into_iter().chain(moving).collect();
    let mut series: Vec<Series> = Vec::new();
    let mut bands: Vec<Band> = Vec::new();
    let mut palette = Palette::default();
    for c in cells {
        let Some(s) = c.summary(metric) else { continue };
        let arch = c.arch();
        // against the parameter count, one line per variant through its sizes
        let label = if x == Some("params") { c.variant.clone() } else { c.label_without_keys(&unlabelled) };
        match along(c) {
            None if key.is_some() => bands.push(Band { color: palette.color(&arch), label, mean: s.mean, sd: s.sd }),
            at => {
                let pos = match (&at, numeric) {
                    (Some(v), true) => v.parse().unwrap_or(0.0),
                    (Some(v), false) => labels.iter().position(|l| l == v).unwrap_or(0) as f64,
                    (None, _) => {
                        labels.push(c.variant.clone());
                        (labels.len() - 1) as f64
                    }
                };
                match series.iter_mut().find(|se| se.label == label) {
                    Some(se) => se.points.push((pos, s.mean, s.sd)),
                    None => {
                        let style = if numeric { Style::Line } else { Style::Dots };
                        series.push(Series { label, color: palette.color(&arch), points: vec![(pos, s.mean, s.sd)], style });
                    }
                }
            }
        }
    }
    if series.is_empty() && bands.is_empty() {
        return None;
    }
    Some(Chart {
        title: format!("{title_prefix}{}: {} (mean ± sd over seeds)", study.name, metric.name()),
        x_desc: x.map_or_else(|| "variant".into(), x_desc),
        y_desc: metric.axis().into(),
        x: match (numeric, x) {
            (true, Some("params")) => XAxis::Log,
            (true, _) => XAxis::Linear,
            (false, _) => XAxis::Categories(labels),
        },
        log_y: false,
        series,
        bands,
    })
}

/// Every comparison of a configuration with a baseline of the study, where the baseline's point
/// agrees on the keys it has.
pub fn comparisons<'a>(study: &Study, cells: &'a [Cell<'a>], metric: Metric) -> Vec<(&'a Cell<'a>, &'a Cell<'a>, Summary, Summary, Option<Comparison>)> {
    let mut out = Vec::new();
    for c in cells.iter().filter(|c| !study.baselines.contains(&c.variant)) {
        for b in cells.iter().filter(|b| study.baselines.contains(&b.variant)) {
            let agrees = b.point.iter().all(|(k, v)| c.value(k).is_none_or(|cv| cv == v));
            if let (true, Some(cs), Some(bs)) = (agrees, c.summary(metric), b.summary(metric)) {
                out.push((c, b, cs, bs, c.compare(b, metric)));
            }
        }
    }
    out
}

/// One comparison in words.
fn comparison_sentence(metric: Metric, c: &Cell, b: &Cell, cs: &Summary, bs: &Summary, cmp: &Option<Comparison>, x: Option<&str>) -> String {
    let d = metric.decimals();
    let where_ = c.label_without(None);
    let better = if metric.lower_is_better() { cs.mean < bs.mean } else { cs.mean > bs.mean };
    let diff = (cs.mean - bs.mean).abs();
    // the direction of the numbers; which way is better depends on the metric
    let direction = if diff == 0.0 {
        "equal".to_string()
    } else {
        format!("{} ({})", if cs.mean < bs.mean { "lower" } else { "higher" }, if better { "better" } else { "worse" })
    };
    // the x value as the paper counts it (layer 2 for ssm_layers = [1]); the label already has the raw value
    let x_note = x.and_then(|x| c.value(axis_key(x)).filter(|v| x_label(x, v) != *v).map(|v| format!(" ({} {})", x_short(x), x_label(x, v)))).unwrap_or_default();
    let verdict = match cmp {
        Some(t) if t.significant() => format!("**exceeds the seed spread** ({} = {:.2}, df = {:.1}, p = {:.3})", t.test_name(), t.t, t.df, t.p),
        Some(t) => format!("within the seed spread ({} = {:.2}, df = {:.1}, p = {:.2})", t.test_name(), t.t, t.df, t.p),
        None => "cannot be judged (fewer than two seeds, or no spread)".into(),
    };
    format!(
        "- {where_}{x_note}: {} vs {} {}: {diff:.d$} {direction}, {verdict}.",
        cs.display(d),
        b.label_without(None),
        bs.display(d),
    )
}

/// What our runs say about one of the paper's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In the paper's direction, and the difference exceeds the seed spread.
    Reproduced,
    /// Against the paper's direction, and the difference exceeds the seed spread.
    Contradicted,
    /// Within the seed spread (or too few seeds to tell).
    NotResolvable,
    /// A side has no finished run.
    NotRun,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Contradicted => "contradicted",
            Verdict::NotResolvable => "not resolvable at this scale",
            Verdict::NotRun => "not run yet",
        }
    }
}

impl Cell<'_> {
    fn is(&self, s: &Selector) -> bool {
        self.variant == s.variant && self.point.len() == s.point.len() && s.point.iter().all(|(k, v)| self.value(k) == Some(display_value(v).as_str()))
    }
}

/// The verdict on `claim`, with one sentence of evidence.
pub fn verdict(claim: &Claim, cells: &[Cell], metric: Metric) -> (Verdict, String) {
    let f = claim.length_factor;
    let side = |s: &Selector| cells.iter().find(|c| c.is(s)).and_then(|c| Some((c, c.summary_at(metric, f)?)));
    let (Some((bc, b)), Some((wc, w))) = (side(&claim.better), side(&claim.worse)) else {
        return (Verdict::NotRun, format!("{} or {} has no finished run", claim.better, claim.worse));
    };
    let d = metric.decimals();
    let at = if f == 1 { String::new() } else { format!(" at {f}x the training length") };
    let evidence = format!("{} {} vs {} {}{at}", claim.better, b.display(d), claim.worse, w.display(d));
    let (v, why) = judge(&b, &w, bc.compare_at(wc, metric, f), metric.lower_is_better());
    (v, format!("{evidence}{why}"))
}

/// Whether `better` beats `worse` beyond the seed spread (by the test `cmp` of the two), with
/// the test's numbers.
fn judge(better: &Summary, worse: &Summary, cmp: Option<Comparison>, lower_is_better: bool) -> (Verdict, String) {
    let agrees = if lower_is_better { better.mean < worse.mean } else { better.mean > worse.mean };
    match cmp {
        Some(t) if t.significant() => (if agrees { Verdict::Reproduced } else { Verdict::Contradicted }, format!(" ({} p = {:.3})", t.test_name(), t.p)),
        Some(t) => (Verdict::NotResolvable, format!(": within the seed spread (p = {:.2}), {} the paper's direction", t.p, if agrees { "leaning with" } else { "leaning against" })),
        None => (Verdict::NotResolvable, ": fewer than two seeds on a side".into()),
    }
}

/// The study's claims with their verdicts, as markdown lines.
/// The paper's table beside ours (`[study.paper_table]`): per column the paper's number and ours
/// (mean ± sd over seeds), each with its rank in the column (1 = best), and per column Spearman's
/// rank correlation of the two orderings. Language-model tables compare test perplexity per token
/// (what the paper reports; the study's `metric` is bits per byte), accuracy tables accuracy in %.
/// Absolute values differ (other data, tokenizer and scale); the orderings are what can be compared.
fn paper_table_section(study: &Study, cells: &[Cell], metric: Metric) -> String {
    let Some(t) = &study.paper_table else { return String::new() };
    let (ours_metric, scale) = if metric == Metric::AnswerAccuracy { (metric, 100.0) } else { (Metric::TestPpl, 1.0) };
    let ours = |variant: &str, column: &str| {
        let cell = cells.iter().find(|c| c.variant == variant && c.value(&t.key) == Some(column))?;
        cell.summary(ours_metric).map(|s| Summary { mean: s.mean * scale, sd: s.sd * scale, ..s })
    };
    paper_table_markdown(t, &study.variants, metric, ours)
}

/// [`paper_table_section`] given our summary of each (variant, column).
fn paper_table_markdown(t: &PaperTable, variants: &[String], metric: Metric, ours: impl Fn(&str, &str) -> Option<Summary>) -> String {
    let what = if metric == Metric::AnswerAccuracy { "test accuracy in %" } else { "test perplexity per token of this lab's tokenizer" };
    // rank 1 = best: negate higher-is-better values so that the lowest ranks first
    let sign = if metric.lower_is_better() { 1.0 } else { -1.0 };
    let rows: Vec<&String> = variants.iter().filter(|v| t.values.contains_key(*v)).collect();
    // per column: (paper, ours) ranks of the rows that have both numbers
    let mut ranks: Vec<Vec<(String, usize, usize)>> = Vec::new();
    for (i, column) in t.columns.iter().enumerate() {
        let both: Vec<(&String, f64, f64)> = rows.iter().filter_map(|v| ours(v, column).map(|o| (*v, t.values[*v][i], o.mean))).collect();
        let paper = ranks_of(&both.iter().map(|b| sign * b.1).collect::<Vec<_>>());
        let us = ranks_of(&both.iter().map(|b| sign * b.2).collect::<Vec<_>>());
        ranks.push(both.iter().zip(paper.into_iter().zip(us)).map(|(b, (p, o))| (b.0.clone(), p, o)).collect());
    }
    let mut head = vec!["row".to_string()];
    for (label, column) in t.labels.iter().zip(&t.columns) {
        head.push(format!("{label}: paper"));
        head.push(format!("{column}: ours"));
    }
    let mut out = format!(
        "**The paper's table beside ours.** Paper: {} ([{}] unless marked). Ours: {what}, mean ± sd over seeds (n as in the table above). In brackets: the rank in the column. Absolute values are not comparable (other data and a model thousands of times smaller, trained far shorter); the rank of each number in its column (1 = best) is, and Spearman's rho below says how far the orderings agree.\n\n| {} |\n|{}\n",
        t.metric,
        t.tag,
        head.join(" | "),
        "---|".repeat(head.len())
    );
    for v in &rows {
        let mut cells_out = vec![v.to_string()];
        for (i, column) in t.columns.iter().enumerate() {
            let r = ranks[i].iter().find(|(name, _, _)| name == *v);
            let tag = t.tags.get(*v).map_or(String::new(), |g| format!(" [{g}]"));
            cells_out.push(format!("{:.2}{tag}{}", t.values[*v][i], r.map_or(String::new(), |r| format!(" ({})", r.1))));
            cells_out.push(ours(v, column).map_or_else(|| "not run yet".into(), |s| format!("{:.1} ± {:.1} ({})", s.mean, s.sd, r.map_or(0, |r| r.2))));
        }
        let _ = writeln!(out, "| {} |", cells_out.join(" | "));
    }
    let rhos: Vec<String> = t
        .labels
        .iter()
        .zip(&ranks)
        .map(|(label, r)| {
            let (paper, us): (Vec<usize>, Vec<usize>) = r.iter().map(|(_, p, o)| (*p, *o)).unzip();
            if r.len() < 3 { format!("{label}: too few rows run") } else { format!("{label}: rho = {:.2} (n = {})", spearman(&paper, &us), r.len()) }
        })
        .collect();
    let _ = writeln!(out, "\nOrdering agreement (Spearman's rho between the paper's ranks and ours; 1 = the same order, 0 = unrelated; tied values share the better rank): {}.\n", rhos.join("; "));
    out
}

/// 1-based ranks, lowest value first; tied values share the lowest rank of the tie.
fn ranks_of(values: &[f64]) -> Vec<usize> {
    values.iter().map(|&x| 1 + values.iter().filter(|&&y| y < x).count()).collect()
}

/// Spearman's rank correlation `1 - 6 sum d^2 / (n (n^2 - 1))` of two rankings of the same rows.
fn spearman(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len() as f64;
    let d2: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// Answer accuracy by how far back each answer's source lies (the distance buckets of the
/// evaluation that hold answers in some run), one row per configuration.
fn distance_section(study: &Study, cells: &[Cell]) -> String {
    let mut buckets: Vec<(usize, usize)> =
        cells.iter().flat_map(|c| c.records.iter().flat_map(|r| r.test.answers.iter().flat_map(|a| a.by_distance.iter().filter(|b| b.count > 0).map(|b| (b.from, b.to))))).collect();
    buckets.sort_unstable();
    buckets.dedup();
    if buckets.is_empty() {
        return String::new();
    }
    let mut head = vec!["variant".to_string()];
    head.extend(study.keys.iter().cloned());
    head.extend(buckets.iter().map(|(from, to)| if *to == usize::MAX { format!("{from}+ back") } else { format!("{from}-{} back", to - 1) }));
    let mut out = format!("**Accuracy by distance** (test answers whose binding lies that many tokens back; mean ± sd over seeds):\n\n| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for c in cells {
        let mut row = vec![c.variant.clone()];
        row.extend(study.keys.iter().map(|k| c.value(k).map_or_else(|| "—".into(), String::from)));
        row.extend(buckets.iter().map(|&(from, to)| c.distance_summary(from, to).map_or_else(String::new, |s| format!("{:.3} ± {:.3}", s.mean, s.sd))));
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
    out
}

fn claims_section(study: &Study, cells: &[Cell], metric: Metric) -> String {
    let mut out = String::new();
    if study.claims.is_empty() {
        return out;
    }
    let _ = writeln!(out, "**Verdicts on the paper's findings** ({}; a t-test over seeds, paired where both sides ran the same seeds, p < {ALPHA}):
", metric.axis());
    for c in &study.claims {
        let (v, evidence) = verdict(c, cells, metric);
        let _ = writeln!(out, "- {}: **{}**. {evidence}.", c.text, v.name());
    }
    out.push('\n');
    out
}

/// The study's section of report.md.
pub fn section(study: &Study, cells: &[Cell], metric: Metric, plots: &[String]) -> String {
    let mut out = format!("## Study `{}`\n\n", study.name);
    if !study.description.is_empty() {
        let _ = writeln!(out, "{}\n", study.description);
    }
    if !study.paper.is_empty() {
        let _ = writeln!(out, "**What the paper reports** (from `bst-paper-notes.md`, with its tag): {}\n", study.paper);
    }
    let factors: Vec<usize> = {
        let mut f: Vec<usize> = cells.iter().flat_map(|c| c.records.iter().flat_map(|r| r.longer.iter().map(|l| l.factor))).collect();
        f.sort_unstable();
        f.dedup();
        f
    };
    // the same-target length evaluation (train.length_eval), in bits per byte
    let mut same_targets: Vec<f64> = cells.iter().flat_map(|c| c.records.iter().flat_map(|r| r.length_eval.iter().map(|l| l.factor))).collect();
    same_targets.sort_by(f64::total_cmp);
    same_targets.dedup();
    let mut head = vec!["variant".to_string(), "layers (from 1)".to_string()];
    head.extend(study.keys.iter().cloned());
    head.push(format!("{} (mean ± sd, n)", metric.name()));
    head.extend(factors.iter().map(|f| format!("at {f}x length")));
    head.extend(same_targets.iter().map(|f| format!("bpb at {f}x L, same targets")));
    head.extend(["params", "train tokens/s", "failed"].map(String::from));
    let _ = writeln!(out, "**What we measured**:\n\n| {} |\n|{}", head.join(" | "), "---|".repeat(head.len()));
    for c in cells {
        let mut row = vec![c.variant.clone(), c.records.first().map_or_else(String::new, |r| r.placement.clone())];
        row.extend(study.keys.iter().map(|k| c.value(k).map_or_else(|| "—".into(), String::from)));
        row.push(c.summary(metric).map_or_else(|| "not run yet".into(), |s| s.display(metric.decimals())));
        row.extend(factors.iter().map(|&f| c.summary_at(metric, f).map_or_else(String::new, |s| s.display(metric.decimals()))));
        row.extend(same_targets.iter().map(|&f| c.length_summary(f).map_or_else(String::new, |s| s.display(3))));
        let mean = |f: &dyn Fn(&RunRecord) -> f64| c.records.iter().map(|r| f(r)).sum::<f64>() / c.records.len().max(1) as f64;
        row.push(if c.records.is_empty() { String::new() } else { format!("{:.2}M", mean(&|r| r.params as f64) / 1e6) });
        row.push(if c.records.is_empty() { String::new() } else { format!("{:.0}", mean(&|r| r.tokens_per_s)) });
        row.push(if c.failures > 0 { c.failures.to_string() } else { String::new() });
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
    if matches!(metric, Metric::TestBpb | Metric::AnswerAccuracy) {
        out.push_str(&paper_table_section(study, cells, metric));
    }
    if metric == Metric::AnswerAccuracy {
        out.push_str(&distance_section(study, cells));
    }
    out.push_str(&claims_section(study, cells, metric));
    let cmps = comparisons(study, cells, metric);
    if !cmps.is_empty() {
        let _ = writeln!(out, "\n**Against the baselines** ({}; a t-test over seeds, paired where both ran the same seeds (a seed fixes the initialisation and the data order of every configuration) and Welch's otherwise; a difference exceeds the seed spread when p < {ALPHA}; BST layers numbered from 1 as in the paper):\n", metric.axis());
        for (c, b, cs, bs, cmp) in &cmps {
            let _ = writeln!(out, "{}", comparison_sentence(metric, c, b, cs, bs, cmp, study.x.as_deref()));
        }
        let significant = cmps.iter().filter(|x| x.4.is_some_and(|t| t.significant())).count();
        let _ = writeln!(out, "\n{significant} of {} differences exceed the seed spread.", cmps.len());
    }
    for p in plots {
        let _ = writeln!(out, "\n![{}]({p})", study.name);
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_need_the_paper_direction_beyond_the_seed_spread() {
        let s = |v: &[f64]| Summary::of(v).unwrap();
        let (low, high, overlapping) = (s(&[1.00, 1.01, 1.02]), s(&[1.20, 1.21, 1.22]), s(&[1.00, 1.30, 0.90]));
        let j = |a: &Summary, b: &Summary, lower: bool| judge(a, b, Comparison::welch(a, b), lower).0;
        assert_eq!(j(&low, &high, true), Verdict::Reproduced);
        assert_eq!(j(&high, &low, true), Verdict::Contradicted);
        assert_eq!(j(&high, &low, false), Verdict::Reproduced, "higher is better for accuracy");
        assert_eq!(j(&low, &overlapping, true), Verdict::NotResolvable);
        assert_eq!(j(&s(&[1.0]), &high, true), Verdict::NotResolvable, "one seed judges nothing");
    }

    #[test]
    fn orderings_are_ranked_lowest_first_and_compared_by_spearman() {
        assert_eq!(ranks_of(&[11.57, 12.12, 10.52, 11.57]), vec![2, 4, 1, 2]);
        assert!((spearman(&[1, 2, 3, 4], &[1, 2, 3, 4]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1, 2, 3, 4], &[4, 3, 2, 1]) + 1.0).abs() < 1e-12);
        assert!((spearman(&[1, 2, 3], &[2, 1, 3]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn paper_tables_rank_the_best_first_in_either_direction() {
        let table = |values: &[(&str, f64)]| PaperTable {
            key: "lra.task".into(),
            columns: vec!["text".into()],
            labels: vec!["Text".into()],
            metric: "accuracy".into(),
            tag: "X".into(),
            tags: Default::default(),
            values: values.iter().map(|(v, x)| (v.to_string(), vec![*x])).collect(),
        };
        let variants: Vec<String> = ["A", "B", "C"].map(String::from).to_vec();
        let paper = table(&[("A", 90.0), ("B", 60.0), ("C", 50.0)]);
        let ours = |mean: [f64; 3]| move |v: &str, _: &str| Some(Summary { n: 2, mean: mean[(v.as_bytes()[0] - b'A') as usize], sd: 1.0 });
        // accuracy: the highest ranks first, on both sides
        let same = paper_table_markdown(&paper, &variants, Metric::AnswerAccuracy, ours([80.0, 55.0, 52.0]));
        assert!(same.contains("| A | 90.00 (1) | 80.0 ± 1.0 (1) |") && same.contains("| C | 50.00 (3) | 52.0 ± 1.0 (3) |"), "{same}");
        assert!(same.contains("rho = 1.00 (n = 3)") && same.contains("test accuracy in %"), "{same}");
        let reversed = paper_table_markdown(&paper, &variants, Metric::AnswerAccuracy, ours([50.0, 55.0, 80.0]));
        assert!(reversed.contains("rho = -1.00"), "{reversed}");
        // perplexity: the lowest ranks first
        let ppl = paper_table_markdown(&table(&[("A", 10.0), ("B", 12.0), ("C", 11.0)]), &variants, Metric::TestBpb, ours([20.0, 30.0, 25.0]));
        assert!(ppl.contains("| A | 10.00 (1) | 20.0 ± 1.0 (1) |") && ppl.contains("rho = 1.00"), "{ppl}");
    }

    #[test]
    fn comparisons_say_the_direction_of_the_numbers_and_whether_it_is_better() {
        let (a, b) = (Cell { variant: "A".into(), point: vec![], records: vec![], failures: 0 }, Cell { variant: "B".into(), point: vec![], records: vec![], failures: 0 });
        let s = |mean: f64| Summary { n: 2, mean, sd: 0.01 };
        let say = |metric, x: f64, y: f64| comparison_sentence(metric, &a, &b, &s(x), &s(y), &None, None);
        assert!(say(Metric::AnswerAccuracy, 0.2, 0.3).contains("0.100 lower (worse)"), "{}", say(Metric::AnswerAccuracy, 0.2, 0.3));
        assert!(say(Metric::AnswerAccuracy, 0.3, 0.2).contains("0.100 higher (better)"));
        assert!(say(Metric::TestBpb, 3.0, 3.1).contains("0.100 lower (better)"));
        assert!(say(Metric::TestBpb, 3.1, 3.0).contains("0.100 higher (worse)"));
        assert!(say(Metric::TestBpb, 3.0, 3.0).contains("0.000 equal, "));
    }

    #[test]
    fn layer_indices_are_shown_as_the_paper_counts() {
        assert_eq!(x_label("model.ssm_layers", "[1]"), "2");
        assert_eq!(x_label("model.ssm_layers", "[0, 2]"), "1,3");
        assert_eq!(x_label("count(model.ssm_layers)", "[0, 2, 3]"), "3");
        assert_eq!(x_label("attn.window", "32"), "32");
    }
}
