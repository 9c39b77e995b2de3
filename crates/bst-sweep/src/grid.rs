//! Sweep files: named studies over a shared base, expanded into fully validated runs.
//!
//! ```toml
//! [sweep]                  # name (results/<name>/), seeds, default profile
//! name = "ablation"
//! seeds = [0, 1, 2]
//! [base]                   # a partial RunConfig: every run starts from it
//! model.n_layers = 4
//! [[study]]                # one ablation: its own grid and variants over the base
//! name = "placement"
//! plot_x = "model.ssm_layers"
//! baselines = ["SLIDE"]    # compared against, drawn as reference bands where they do not vary
//! [study.grid]             # cartesian product of candidate lists
//! model.ssm_layers = [[0], [1], [2], [3]]
//! [study.zip]              # lists of one length, read together as one axis (crossed with the grid)
//! [[study.exclude]]        # points left out: every key given must match (`variant` too)
//! [[study.variant]]        # named points, crossed with the grid
//! name = "BST:SH:S4D"
//! model.arch = "BST:SH:S4D"
//! [[study.variant]]
//! name = "SLIDE"
//! model.arch = "SLIDE"
//! not_crossed_with = ["model.ssm_layers"]   # a baseline that does not vary along that axis
//! [speed]                  # the layer-speed study (see crate::speed)
//! [msrnn]                  # the multi-state RNN study over the trained runs (see crate::msrnn)
//! [slurm]                  # job-array resources for `bst-sweep slurm` (see crate::slurm)
//! [profiles.gpu.base]      # --profile gpu: applied over [base]; also .sweep (seeds), .speed, .msrnn,
//! model.d_model = 1024     #   .slurm, .study.<name>.{grid, zip, exclude, variant.<name>}
//! ```
//! A file without `[[study]]` may give one study as top-level `[grid]` and `[[variant]]` (and
//! `[sweep].plot_x`). Runs = for each study, variants x grid x zip x seeds, minus exclusions; a
//! configuration that several studies share (same resolved configuration, same run id) is one run,
//! trained once. Every run of every profile is deserialised (unknown keys and bad values are errors
//! that name the key and the allowed values) and validated when the file is loaded.

use std::fmt;
use std::path::{Path, PathBuf};

use bst_model::{LayerPlan, RunConfig};
use serde::Deserialize;
use toml::{Table, Value};

use crate::msrnn::MsrnnConfig;
use crate::slurm::SlurmConfig;
use crate::speed::SpeedConfig;

/// A sweep file that cannot be turned into runs. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct GridError {
    pub file: PathBuf,
    pub message: String,
}

/// The `[sweep]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepMeta {
    /// Results go to `results/<name>/` (`results/<name>-<profile>/` for a non-default profile).
    pub name: String,
    /// One line on what the sweep measures, for the report.
    #[serde(default)]
    pub description: String,
    /// Every run is repeated for each seed (`seed` in the run configuration).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Profile used when none is given on the command line: `cpu` (the base, without overrides,
    /// unless a `[profiles.cpu]` exists) or one of the `[profiles.*]`.
    #[serde(default = "default_profile")]
    pub default_profile: String,
    /// The plotted key of a file without `[[study]]`.
    #[serde(default)]
    pub plot_x: Option<String>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// The profile that exists in every file: the base itself.
pub const BASE_PROFILE: &str = "cpu";

fn default_profile() -> String {
    BASE_PROFILE.into()
}

/// One study: a named ablation with its own grid and variants.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    pub name: String,
    pub description: String,
    /// What the paper reports for this ablation (quoted, with its confirmation tag), for the report.
    pub paper: String,
    /// The key on the x axis of the study's plot.
    pub x: Option<String>,
    /// Variants the others are compared against (in words and as reference bands).
    pub baselines: Vec<String>,
    /// The study's varying keys (grid and zip), in file order.
    pub keys: Vec<String>,
    /// Its variant names, in file order.
    pub variants: Vec<String>,
    /// The paper's findings this study tests, each as a pair of its configurations.
    pub claims: Vec<Claim>,
    /// The paper's table this study reproduces, laid out beside ours in the report.
    pub paper_table: Option<PaperTable>,
}

/// The paper's numbers for a study's configurations (`[study.paper_table]`): one row per variant,
/// one column per value of one varying key. The report puts them beside ours, with both orderings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperTable {
    /// The varying key the columns follow, e.g. `data.corpus`.
    pub key: String,
    /// Our values of `key`, one per column.
    pub columns: Vec<String>,
    /// The paper's name for each column (its datasets: PG19, arXiv, GitHub).
    pub labels: Vec<String>,
    /// What the paper's numbers are, e.g. "perplexity (32k SentencePiece tokens)".
    pub metric: String,
    /// The notes' confirmation tag of the numbers, per variant when it differs from `tag`.
    pub tag: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Variant -> the paper's value in each column.
    pub values: std::collections::BTreeMap<String, Vec<f64>>,
}

impl PaperTable {
    /// Checks the table against the study's variants and the values its key takes.
    fn validate(&self, variants: &[String], candidates: &[(String, Vec<Value>)]) -> Result<(), String> {
        let Some((_, values)) = candidates.iter().find(|(k, _)| *k == self.key) else {
            let keys: Vec<&str> = candidates.iter().map(|(k, _)| k.as_str()).collect();
            return Err(format!("paper_table.key = `{}` is not a varying key of the study (its keys: {})", self.key, keys.join(", ")));
        };
        let ours: Vec<String> = values.iter().map(display_value).collect();
        if let Some(bad) = self.columns.iter().find(|c| !ours.contains(c)) {
            return Err(format!("paper_table.columns: `{bad}` is not a value of {} (values: {})", self.key, ours.join(", ")));
        }
        if self.labels.len() != self.columns.len() {
            return Err(format!("paper_table.labels: {} labels for {} columns", self.labels.len(), self.columns.len()));
        }
        for (variant, row) in &self.values {
            if !variants.contains(variant) {
                return Err(format!("paper_table.values.\"{variant}\": no such variant (variants: {})", variants.join(", ")));
            }
            if row.len() != self.columns.len() {
                return Err(format!("paper_table.values.\"{variant}\": {} values for {} columns", row.len(), self.columns.len()));
            }
        }
        Ok(())
    }
}

/// A finding of the paper that one configuration of a study beats another on the study's metric
/// (`[[study.claim]]`); the report gives it a verdict: reproduced, contradicted, or not resolvable
/// at this scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The finding in words, with the notes' confirmation tag.
    pub text: String,
    pub better: Selector,
    pub worse: Selector,
    /// The multiple of the training length the claim is judged at (1: the training length).
    pub length_factor: usize,
}

/// One configuration of a study: a variant and the values of the keys it varies along.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub variant: String,
    pub point: Vec<(String, Value)>,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.variant)?;
        for (k, v) in &self.point {
            write!(f, " {k}={}", display_value(v))?;
        }
        Ok(())
    }
}

/// Where a run sits in one study.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub study: String,
    pub variant: String,
    /// The grid/zip point: dotted key -> value, in file order of the keys.
    pub point: Vec<(String, Value)>,
}

/// One run of a sweep: its complete configuration and every study it belongs to.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Position in the expansion order.
    pub index: usize,
    /// Hash of the resolved configuration: a rerun with the same configuration finds it.
    pub run_id: String,
    pub config: RunConfig,
    /// Which mixer each layer has, from the validated configuration.
    pub plan: LayerPlan,
    /// The studies that contain this configuration (at least one).
    pub memberships: Vec<Membership>,
}

impl RunSpec {
    /// The first study's variant name.
    pub fn variant(&self) -> &str {
        &self.memberships[0].variant
    }

    /// The first study's point.
    pub fn point(&self) -> &[(String, Value)] {
        &self.memberships[0].point
    }

    /// The names of the studies this run belongs to.
    pub fn studies(&self) -> Vec<&str> {
        self.memberships.iter().map(|m| m.study.as_str()).collect()
    }
}

impl fmt::Display for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.memberships[0];
        write!(f, "#{} {}:", self.index, m.study)?;
        if !m.variant.is_empty() {
            write!(f, " variant={}", m.variant)?;
        }
        for (k, v) in &m.point {
            write!(f, " {k}={}", display_value(v))?;
        }
        write!(f, " seed={}", self.config.seed)
    }
}

/// A value as a CSV cell or label: strings without quotes, arrays as `[1, 2]`.
pub fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parsed, expanded and validated sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub file: PathBuf,
    pub meta: SweepMeta,
    pub profile: String,
    pub studies: Vec<Study>,
    /// Every varying key of every study, in file order (columns of runs.csv).
    pub keys: Vec<String>,
    pub runs: Vec<RunSpec>,
    /// The layer-speed study, if the file has a `[speed]` table.
    pub speed: Option<SpeedConfig>,
    /// The multi-state RNN study, if the file has an `[msrnn]` table.
    pub msrnn: Option<MsrnnConfig>,
    /// Job-array resources: `[slurm]` with the profile's `[profiles.<p>.slurm]` over it.
    pub slurm: SlurmConfig,
}

/// `key=value` (sets a base value) or `key=v1,v2` (makes `key` an axis of every study), as on a
/// Hydra command line; values are TOML (`attn.window=32,64`, `model.arch="SLIDE"`, bare words are
/// strings).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub key: String,
    pub values: Vec<Value>,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, rhs) = s.split_once('=').ok_or_else(|| format!("override `{s}` is not key=value"))?;
        let parse = |v: &str| {
            toml::from_str::<Table>(&format!("v = {v}")).ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| Value::String(v.to_string()))
        };
        // a TOML array literal is one value (for list-typed keys); otherwise commas separate candidates
        let values = if rhs.trim_start().starts_with('[') { vec![parse(rhs)] } else { rhs.split(',').map(|v| parse(v.trim())).collect() };
        Ok(Override { key: key.trim().to_string(), values })
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<String> = self.values.iter().map(Value::to_string).collect();
        write!(f, "{}={}", self.key, values.join(","))
    }
}

/// A study as written, before expansion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStudy {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    paper: String,
    #[serde(default)]
    plot_x: Option<String>,
    #[serde(default)]
    baselines: Vec<String>,
    #[serde(default)]
    grid: Table,
    #[serde(default)]
    zip: Table,
    #[serde(default)]
    exclude: Vec<Table>,
    #[serde(default)]
    variant: Vec<Table>,
    #[serde(default)]
    claim: Vec<RawClaim>,
    #[serde(default)]
    paper_table: Option<PaperTable>,
}

/// A claim as written: `better` and `worse` name variants; `better_at` / `worse_at` give the
/// values of the study's varying keys that pin each one to a single configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaim {
    text: String,
    better: String,
    worse: String,
    #[serde(default)]
    better_at: Table,
    #[serde(default)]
    worse_at: Table,
    /// Judge the claim at this multiple of the training length (1, the default, or one of
    /// `train.eval_length_factors`).
    #[serde(default = "one")]
    length_factor: usize,
}

fn one() -> usize {
    1
}

/// A variant as written: its name, the axes it is not crossed with, and its keys.
#[derive(Debug, Clone)]
struct RawVariant {
    name: String,
    not_crossed_with: Vec<String>,
    keys: Vec<(String, Value)>,
}

/// The whole file as written (profiles not yet applied).
#[derive(Debug, Clone)]
struct RawSweep {
    meta: SweepMeta,
    base: Table,
    studies: Vec<RawStudy>,
    speed: Option<Table>,
    msrnn: Option<Table>,
    slurm: Table,
    profiles: Table,
}

impl Sweep {
    /// Reads, expands and validates a sweep file: `profile` (default `[sweep].default_profile`)
    /// is the one expanded, and every other profile of the file is expanded and validated too, so
    /// that a typo in a GPU profile fails here rather than on the GPU machine.
    pub fn load(path: &Path, profile: Option<&str>, overrides: &[Override]) -> Result<Self, GridError> {
        let err = |message: String| GridError { file: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let raw = RawSweep::parse(&text).map_err(err)?;
        let selected = profile.unwrap_or(&raw.meta.default_profile).to_string();
        let known = raw.profile_names();
        if !known.contains(&selected) {
            return Err(err(format!("unknown profile `{selected}`, this file has: {}", known.join(", "))));
        }
        if !known.contains(&raw.meta.default_profile) {
            return Err(err(format!("sweep.default_profile = {:?} names no profile (this file has: {})", raw.meta.default_profile, known.join(", "))));
        }
        for other in known.iter().filter(|p| **p != selected) {
            expand(&raw, other, &[]).map_err(|m| err(format!("profile `{other}`: {m}")))?;
        }
        let Expanded { meta, studies, runs, speed, msrnn, slurm } = expand(&raw, &selected, overrides).map_err(err)?;
        let keys = union_keys(&studies);
        Ok(Sweep { file: path.to_owned(), meta, profile: selected, studies, keys, runs, speed, msrnn, slurm })
    }

    /// `results/<name>` for the default profile, `results/<name>-<profile>` otherwise.
    pub fn results_dir(&self, results_root: &Path) -> PathBuf {
        if self.profile == self.meta.default_profile {
            results_root.join(&self.meta.name)
        } else {
            results_root.join(format!("{}-{}", self.meta.name, self.profile))
        }
    }

    /// The study named `name`.
    pub fn study(&self, name: &str) -> Option<&Study> {
        self.studies.iter().find(|s| s.name == name)
    }
}

impl RawSweep {
    fn parse(text: &str) -> Result<Self, String> {
        let mut doc: Table = toml::from_str(text).map_err(|e| format!("not valid TOML: {e}"))?;
        const TOP: [&str; 10] = ["sweep", "base", "grid", "zip", "variant", "study", "speed", "msrnn", "slurm", "profiles"];
        if let Some(bad) = doc.keys().find(|k| !TOP.contains(&k.as_str())) {
            return Err(format!("unknown top-level key `{bad}`, expected one of: {}", TOP.join(", ")));
        }
        let meta: SweepMeta = doc.remove("sweep").ok_or("missing the [sweep] table (it needs at least `name`)")?.try_into().map_err(|e| format!("[sweep]: {e}"))?;
        if meta.seeds.is_empty() {
            return Err("sweep.seeds: must list at least one seed".into());
        }
        let base = take_table(&mut doc, "base")?;
        let speed = doc.remove("speed").map(|v| v.try_into::<Table>().map_err(|_| "`speed` must be a table ([speed])".to_string())).transpose()?;
        let msrnn = doc.remove("msrnn").map(|v| v.try_into::<Table>().map_err(|_| "`msrnn` must be a table ([msrnn])".to_string())).transpose()?;
        let slurm = take_table(&mut doc, "slurm")?;
        SlurmConfig::from_table(slurm.clone(), "slurm")?;
        let profiles = take_table(&mut doc, "profiles")?;
        let studies = match doc.remove("study") {
            Some(list) => {
                if ["grid", "zip", "variant"].iter().any(|k| doc.contains_key(*k)) {
                    return Err("top-level [grid], [zip] and [[variant]] describe a single study; with [[study]] tables, put them inside a study".into());
                }
                let list: Vec<RawStudy> = list.try_into().map_err(|e| format!("[[study]]: {e}"))?;
                list
            }
            None => vec![RawStudy {
                name: meta.name.clone(),
                description: String::new(),
                paper: String::new(),
                plot_x: meta.plot_x.clone(),
                baselines: Vec::new(),
                grid: take_table(&mut doc, "grid")?,
                zip: take_table(&mut doc, "zip")?,
                exclude: Vec::new(),
                variant: match doc.remove("variant") {
                    Some(v) => v.try_into().map_err(|_| "`variant` must be an array of tables ([[variant]])".to_string())?,
                    None => Vec::new(),
                },
                claim: Vec::new(),
                paper_table: None,
            }],
        };
        if studies.is_empty() {
            return Err("[[study]]: the file lists no study".into());
        }
        for (i, s) in studies.iter().enumerate() {
            if studies[..i].iter().any(|o| o.name == s.name) {
                return Err(format!("two studies are named `{}`", s.name));
            }
        }
        Ok(Self { meta, base, studies, speed, msrnn, slurm, profiles })
    }

    /// `cpu` (the base) and every `[profiles.*]`.
    fn profile_names(&self) -> Vec<String> {
        std::iter::once(BASE_PROFILE.to_string()).chain(self.profiles.keys().filter(|k| *k != BASE_PROFILE).cloned()).collect()
    }

    /// The file with `profile`'s overrides applied.
    fn with_profile(&self, profile: &str) -> Result<RawSweep, String> {
        let mut out = self.clone();
        let Some(p) = self.profiles.get(profile) else { return Ok(out) };
        let Value::Table(p) = p.clone() else { return Err(format!("profiles.{profile} must be a table")) };
        let single = self.studies.len() == 1 && self.studies[0].name == self.meta.name;
        for (key, value) in p {
            let at = format!("profiles.{profile}.{key}");
            match (key.as_str(), value) {
                ("base", Value::Table(t)) => flatten(&t, "").into_iter().for_each(|(k, v)| set_path(&mut out.base, &k, v)),
                ("speed", Value::Table(t)) => {
                    let speed = out.speed.get_or_insert_with(Table::new);
                    flatten(&t, "").into_iter().for_each(|(k, v)| set_path(speed, &k, v));
                }
                ("msrnn", Value::Table(t)) => {
                    let msrnn = out.msrnn.get_or_insert_with(Table::new);
                    flatten(&t, "").into_iter().for_each(|(k, v)| set_path(msrnn, &k, v));
                }
                ("slurm", Value::Table(t)) => {
                    SlurmConfig::from_table(t.clone(), &at)?;
                    flatten(&t, "").into_iter().for_each(|(k, v)| set_path(&mut out.slurm, &k, v));
                }
                ("sweep", Value::Table(t)) => out.meta = apply_meta(&out.meta, t).map_err(|e| format!("{at}: {e}"))?,
                ("grid" | "zip" | "variant", Value::Table(t)) if single => apply_study(&mut out.studies[0], &key, t).map_err(|e| format!("{at}: {e}"))?,
                ("study", Value::Table(t)) => {
                    for (name, changes) in t {
                        let names: Vec<&str> = self.studies.iter().map(|s| s.name.as_str()).collect();
                        let study = out.studies.iter_mut().find(|s| s.name == name).ok_or_else(|| format!("{at}: no study named `{name}` (studies: {})", names.join(", ")))?;
                        let Value::Table(changes) = changes else { return Err(format!("{at}.{name} must be a table")) };
                        for (part, t) in changes {
                            if part == "claim" {
                                // the profile's claims replace the file's (its grid names other configurations)
                                study.claim = t.try_into().map_err(|e| format!("{at}.{name}.claim: {e}"))?;
                                continue;
                            }
                            let Value::Table(t) = t else { return Err(format!("{at}.{name}.{part} must be a table")) };
                            apply_study(study, &part, t).map_err(|e| format!("{at}.{name}: {e}"))?;
                        }
                    }
                }
                (other, _) => return Err(format!("{at}: unknown or misplaced key `{other}`, expected base, sweep, speed, msrnn, slurm, study{}", if single { ", grid, zip, variant" } else { "" })),
            }
        }
        Ok(out)
    }
}

/// A profile's `[sweep]` overrides: only the seeds may change (the name and profiles may not).
fn apply_meta(meta: &SweepMeta, t: Table) -> Result<SweepMeta, String> {
    let mut meta = meta.clone();
    for (key, value) in t {
        match key.as_str() {
            "seeds" => meta.seeds = value.try_into().map_err(|e| format!("sweep.seeds: {e}"))?,
            other => return Err(format!("sweep.{other} cannot be changed by a profile (only seeds)")),
        }
    }
    if meta.seeds.is_empty() {
        return Err("sweep.seeds: must list at least one seed".into());
    }
    Ok(meta)
}

/// A profile's changes to one study: `grid` and `zip` keys replace or add axes, `variant.<name>`
/// keys are set on that variant.
fn apply_study(study: &mut RawStudy, part: &str, t: Table) -> Result<(), String> {
    match part {
        "grid" => flatten(&t, "").into_iter().for_each(|(k, v)| set_path(&mut study.grid, &k, v)),
        "zip" => flatten(&t, "").into_iter().for_each(|(k, v)| set_path(&mut study.zip, &k, v)),
        "variant" => {
            for (name, keys) in t {
                let names: Vec<String> = study.variant.iter().filter_map(|v| v.get("name").and_then(Value::as_str).map(String::from)).collect();
                let variant = study.variant.iter_mut().find(|v| v.get("name").and_then(Value::as_str) == Some(name.as_str())).ok_or_else(|| format!("variant: no variant named `{name}` (variants: {})", names.join(", ")))?;
                let Value::Table(keys) = keys else { return Err(format!("variant.\"{name}\" must be a table")) };
                flatten(&keys, "").into_iter().for_each(|(k, v)| set_path(variant, &k, v));
            }
        }
        other => return Err(format!("unknown key `{other}`, expected grid, zip or variant")),
    }
    Ok(())
}

/// One profile of a file, expanded and validated.
struct Expanded {
    meta: SweepMeta,
    studies: Vec<Study>,
    runs: Vec<RunSpec>,
    speed: Option<SpeedConfig>,
    msrnn: Option<MsrnnConfig>,
    slurm: SlurmConfig,
}

/// Every run of `profile`, validated, shared configurations merged.
fn expand(raw: &RawSweep, profile: &str, overrides: &[Override]) -> Result<Expanded, String> {
    let mut raw = raw.with_profile(profile)?;
    for o in overrides {
        match o.values.as_slice() {
            [one] => set_path(&mut raw.base, &o.key, one.clone()),
            many => raw.studies.iter_mut().for_each(|s| set_path(&mut s.grid, &o.key, Value::Array(many.to_vec()))),
        }
    }
    let speed = raw.speed.clone().map(|t| SpeedConfig::from_table(t, &raw.base)).transpose()?;
    let msrnn = raw.msrnn.clone().map(|t| MsrnnConfig::from_table(t, &raw.base)).transpose()?;
    let slurm = SlurmConfig::from_table(raw.slurm.clone(), "slurm")?;
    let mut runs: Vec<RunSpec> = Vec::new();
    let mut studies = Vec::new();
    // A grid changed on the command line may drop the configurations a claim names: the claim is
    // then left out rather than refused.
    let grid_overridden = overrides.iter().any(|o| o.values.len() > 1);
    for s in &raw.studies {
        // a profile or a command line may move the grid off the paper table's columns: the table is
        // then left out (a typo in it still fails, since the file's own profile is always expanded)
        let lenient_table = grid_overridden || profile != BASE_PROFILE;
        let (study, members) = expand_study(s, &raw.base, &raw.meta.seeds, grid_overridden, lenient_table)?;
        for (config, plan, membership) in members {
            let run_id = run_id(&config);
            match runs.iter_mut().find(|r| r.run_id == run_id) {
                Some(r) => r.memberships.push(membership),
                None => runs.push(RunSpec { index: runs.len(), run_id, config, plan, memberships: vec![membership] }),
            }
        }
        studies.push(study);
    }
    Ok(Expanded { meta: raw.meta, studies, runs, speed, msrnn, slurm })
}

/// Axes a study may plot that are measured rather than configured: the parameter count, and the
/// evaluation length of `train.length_eval`.
pub const DERIVED_X: [&str; 2] = ["params", "eval_length"];

/// One study's runs as (configuration, plan, membership).
fn expand_study(s: &RawStudy, base: &Table, seeds: &[u64], lenient_claims: bool, lenient_table: bool) -> Result<(Study, Vec<(RunConfig, LayerPlan, Membership)>), String> {
    let at = |m: String| format!("study `{}`: {m}", s.name);
    let grid = axes(&s.grid, "grid").map_err(at)?;
    let zip = zip_axis(&s.zip).map_err(at)?;
    let variants = variants(&s.variant).map_err(at)?;
    let keys: Vec<String> = grid.iter().map(|(k, _)| k.clone()).chain(zip.first().map(|p| p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()).unwrap_or_default()).collect();
    for name in &s.baselines {
        if !variants.iter().any(|v| v.name == *name) {
            return Err(at(format!("baselines: no variant named `{name}`")));
        }
    }
    if let Some(x) = &s.plot_x {
        if !keys.contains(&axis_key(x).to_string()) && !DERIVED_X.contains(&x.as_str()) {
            return Err(at(format!("plot_x = `{x}` is neither one of its varying keys ({}) nor one of {}", keys.join(", "), DERIVED_X.join(", "))));
        }
    }
    let mut members = Vec::new();
    for v in &variants {
        if let Some(bad) = v.not_crossed_with.iter().find(|k| !keys.contains(k)) {
            return Err(at(format!("variant `{}`: not_crossed_with names `{bad}`, which is not a varying key ({})", v.name, keys.join(", "))));
        }
        let own_grid: Vec<(String, Vec<Value>)> = grid.iter().filter(|(k, _)| !v.not_crossed_with.contains(k)).cloned().collect();
        let own_zip: Vec<Vec<(String, Value)>> = zip.iter().map(|p| p.iter().filter(|(k, _)| !v.not_crossed_with.contains(k)).cloned().collect()).collect();
        let mut points: Vec<Vec<(String, Value)>> = Vec::new();
        for g in cartesian(&own_grid) {
            for z in own_zip.iter().cloned().chain(own_zip.is_empty().then(Vec::new)) {
                let point = [g.clone(), z].concat();
                if !points.contains(&point) && !excluded(&s.exclude, &v.name, &point) {
                    points.push(point);
                }
            }
        }
        for point in points {
            for &seed in seeds {
                let mut table = base.clone();
                for (k, val) in v.keys.iter().chain(point.iter()) {
                    set_path(&mut table, k, val.clone());
                }
                table.insert("seed".into(), Value::Integer(seed as i64));
                let membership = Membership { study: s.name.clone(), variant: v.name.clone(), point: point.clone() };
                let label = RunSpec { index: 0, run_id: String::new(), config: RunConfig::default(), plan: LayerPlan(Vec::new()), memberships: vec![membership.clone()] };
                let (config, plan) = resolve(table).map_err(|m| format!("run {}: {m}", label.to_string().trim_start_matches("#0 ")))?;
                members.push((config, plan, membership));
            }
        }
    }
    let claims = s.claim.iter().enumerate().map(|(i, c)| claim(c, &members).map_err(|m| at(format!("claim {}: {m}", i + 1))));
    let claims = if lenient_claims { claims.filter_map(Result::ok).collect() } else { claims.collect::<Result<Vec<_>, _>>()? };
    let variant_names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
    let mut candidates = axes(&s.grid, "grid")?;
    candidates.extend(axes(&s.zip, "zip")?);
    let paper_table = match &s.paper_table {
        Some(t) => match t.validate(&variant_names, &candidates) {
            Ok(()) => Some(t.clone()),
            Err(_) if lenient_table => None,
            Err(m) => return Err(at(m)),
        },
        None => None,
    };
    let study = Study {
        claims,
        paper_table,
        name: s.name.clone(),
        description: s.description.clone(),
        paper: s.paper.clone(),
        x: s.plot_x.clone().or_else(|| keys.first().cloned()),
        baselines: s.baselines.clone(),
        keys,
        variants: variant_names,
    };
    Ok((study, members))
}

/// A claim whose two sides each name exactly one configuration of the study.
fn claim(c: &RawClaim, members: &[(RunConfig, LayerPlan, Membership)]) -> Result<Claim, String> {
    let side = |name: &str, variant: &str, at: &Table| -> Result<Selector, String> {
        let point: Vec<(String, Value)> = flatten(at, "");
        let mut found: Vec<&Membership> = members.iter().map(|(_, _, m)| m).filter(|m| m.variant == variant && point.iter().all(|(k, v)| m.point.iter().any(|(mk, mv)| mk == k && mv == v))).collect();
        found.dedup_by(|a, b| a.point == b.point);
        match found.as_slice() {
            [m] => Ok(Selector { variant: variant.to_string(), point: m.point.clone() }),
            _ => {
                let mut all: Vec<String> = members.iter().map(|(_, _, m)| Selector { variant: m.variant.clone(), point: m.point.clone() }.to_string()).collect();
                all.dedup();
                let how = if found.is_empty() { "matches no configuration".to_string() } else { format!("matches several configurations (pin the varying keys with `{name}_at`)") };
                Err(format!("{name} = `{}` {how}; the study has: {}", Selector { variant: variant.to_string(), point }, all.join("; ")))
            }
        }
    };
    let (better, worse) = (side("better", &c.better, &c.better_at)?, side("worse", &c.worse, &c.worse_at)?);
    if c.length_factor != 1 {
        let evaluated = |s: &Selector| members.iter().filter(|(_, _, m)| m.variant == s.variant && m.point == s.point).all(|(cfg, _, _)| cfg.train.eval_length_factors.contains(&c.length_factor));
        if !(evaluated(&better) && evaluated(&worse)) {
            return Err(format!("length_factor = {} is not in train.eval_length_factors of both sides (1, the training length, always is)", c.length_factor));
        }
    }
    Ok(Claim { text: c.text.clone(), better, worse, length_factor: c.length_factor })
}

/// The configuration key behind a plotted axis (`count(model.ssm_layers)` plots a count of it).
pub fn axis_key(x: &str) -> &str {
    x.strip_prefix("count(").and_then(|k| k.strip_suffix(')')).unwrap_or(x)
}

/// Grid keys as (dotted key, candidates); each must be a non-empty list.
fn axes(table: &Table, what: &str) -> Result<Vec<(String, Vec<Value>)>, String> {
    flatten(table, "")
        .into_iter()
        .map(|(key, value)| match value {
            Value::Array(values) if !values.is_empty() => Ok((key, values)),
            _ => Err(format!("{what}.{key}: must be a non-empty list of candidates, e.g. {key} = [32, 64]")),
        })
        .collect()
}

/// The zipped points: the i-th candidate of every zip key together.
fn zip_axis(table: &Table) -> Result<Vec<Vec<(String, Value)>>, String> {
    let lists = axes(table, "zip")?;
    let Some((first_key, first)) = lists.first() else { return Ok(Vec::new()) };
    if let Some((key, values)) = lists.iter().find(|(_, v)| v.len() != first.len()) {
        return Err(format!("zip.{key} has {} candidates, zip.{first_key} {}: zipped lists must have one length", values.len(), first.len()));
    }
    Ok((0..first.len()).map(|i| lists.iter().map(|(k, v)| (k.clone(), v[i].clone())).collect()).collect())
}

/// Whether an `exclude` entry matches `point` of `variant`: every key it gives is equal.
fn excluded(exclude: &[Table], variant: &str, point: &[(String, Value)]) -> bool {
    exclude.iter().any(|rule| {
        flatten(rule, "").iter().all(|(k, v)| match k.as_str() {
            "variant" => v.as_str() == Some(variant),
            key => point.iter().any(|(pk, pv)| pk == key && pv == v),
        })
    })
}

/// `[[variant]]` entries; one unnamed empty variant when there are none.
fn variants(list: &[Table]) -> Result<Vec<RawVariant>, String> {
    if list.is_empty() {
        return Ok(vec![RawVariant { name: String::new(), not_crossed_with: Vec::new(), keys: Vec::new() }]);
    }
    let mut out: Vec<RawVariant> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let mut t = t.clone();
        let name = match t.remove("name") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return Err(format!("variant #{i} needs a `name` (a non-empty string)")),
        };
        if out.iter().any(|v| v.name == name) {
            return Err(format!("two variants are named `{name}`"));
        }
        let not_crossed_with = match t.remove("not_crossed_with") {
            None => Vec::new(),
            Some(v) => v.try_into().map_err(|_| format!("variant `{name}`: not_crossed_with must be a list of keys"))?,
        };
        out.push(RawVariant { name, not_crossed_with, keys: flatten(&t, "") });
    }
    Ok(out)
}

/// Deserialises a table of the file; an error names the full dotted key under `at` (`speed`,
/// `profiles.gpu.slurm`, `base`).
pub(crate) fn deserialize_at<T: serde::de::DeserializeOwned>(table: Table, at: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { format!("{at}: {}", e.into_inner()) } else { format!("{at}.{path}: {}", e.into_inner()) }
    })
}

/// Deserialises a run's table into a RunConfig and validates it; errors name the dotted key.
fn resolve(table: Table) -> Result<(RunConfig, LayerPlan), String> {
    let config: RunConfig = serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        format!("key `{path}`: {}", e.into_inner())
    })?;
    let plan = config.validate().map_err(|e| e.to_string())?;
    Ok((config, plan))
}

/// First 12 hex digits of the SHA-256 of the resolved configuration (as JSON).
pub fn run_id(config: &RunConfig) -> String {
    let json = serde_json::to_string(config).expect("RunConfig serialises");
    bst_core::sha256_hex(json.as_bytes())[..12].to_owned()
}

/// The keys of every study, each once, in order.
fn union_keys(studies: &[Study]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for k in studies.iter().flat_map(|s| s.keys.iter()) {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys
}

fn take_table(doc: &mut Table, key: &str) -> Result<Table, String> {
    match doc.remove(key) {
        None => Ok(Table::new()),
        Some(Value::Table(t)) => Ok(t),
        Some(_) => Err(format!("`{key}` must be a table ([{key}])")),
    }
}

/// Nested tables -> (dotted key, leaf value), keeping file order.
pub(crate) fn flatten(table: &Table, prefix: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Table(t) => out.extend(flatten(t, &key)),
            leaf => out.push((key, leaf.clone())),
        }
    }
    out
}

/// Sets `a.b.c = value`, creating the intermediate tables.
fn set_path(table: &mut Table, dotted: &str, value: Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut t = table;
    for p in parts {
        let entry = t.entry(p.to_string()).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.to_string(), value);
}

/// All combinations of the axes' candidates, the first axis varying slowest.
fn cartesian(axes: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    axes.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut p = point.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect()
    })
}

/// The value of a dotted key in a run's resolved configuration, as a cell (`""` when absent).
pub fn config_value(config: &RunConfig, dotted: &str) -> String {
    let json = serde_json::to_value(config).expect("RunConfig serialises");
    let found = dotted.split('.').try_fold(&json, |v, part| v.get(part));
    match found {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string().replace(',', ", "),
    }
}

#[cfg(test)]
mod tests;
