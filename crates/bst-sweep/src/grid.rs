//! Sweep files: a TOML grid expanded into fully validated run configurations.
//!
//! ```toml
//! [sweep]                  # name (results/<name>/), seeds, default profile, plot axis
//! name = "ablation"
//! seeds = [0]
//! [base]                   # a partial RunConfig: every run starts from it
//! model.n_layers = 4
//! [grid]                   # each key lists candidates; runs take the cartesian product
//! attn.window = [32, 64]
//! [[variant]]              # named, hand-listed points, crossed with the grid
//! name = "BST:SH:S4D"
//! model.arch = "BST:SH:S4D"
//! [profiles.gpu.base]      # --profile gpu: applied over [base] (and [profiles.gpu.grid] over [grid])
//! model.d_model = 1024
//! [profiles.gpu.variant."BST:SH:S4D"]   # and over that variant's keys
//! model.ssm_layers = [1, 7, 9]
//! ```
//! Runs = variants x product(grid) x seeds. Every run's configuration is deserialised (unknown keys
//! and bad values are errors that name the key and the allowed values) and validated before any
//! run starts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bst_model::{LayerPlan, RunConfig};
use serde::Deserialize;
use toml::{Table, Value};

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
    /// Profile used when none is given on the command line.
    #[serde(default = "default_profile")]
    pub default_profile: String,
    /// Grid key on the x axis of the summary plot (default: the first numeric grid key).
    #[serde(default)]
    pub plot_x: Option<String>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

fn default_profile() -> String {
    "cpu".into()
}

/// One run of a sweep: where it sits in the grid and its complete configuration.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Position in the expansion order.
    pub index: usize,
    /// Hash of the resolved configuration: a rerun with the same configuration finds it.
    pub run_id: String,
    /// Variant name ("" when the file has no `[[variant]]`).
    pub variant: String,
    /// The grid point: dotted key -> value, in file order of the keys.
    pub point: Vec<(String, Value)>,
    pub config: RunConfig,
    /// Which mixer each layer has, from the validated configuration.
    pub plan: LayerPlan,
}

impl fmt::Display for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} :", self.index)?;
        if !self.variant.is_empty() {
            write!(f, " variant={}", self.variant)?;
        }
        for (k, v) in &self.point {
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
    /// The grid keys, in file order (columns of runs.csv).
    pub grid_keys: Vec<String>,
    pub runs: Vec<RunSpec>,
}

/// `key=value` (sets a base value) or `key=v1,v2` (makes `key` a grid axis), as on a Hydra
/// command line; values are TOML (`attn.window=32,64`, `model.arch="SLIDE"`, bare words are strings).
#[derive(Debug, Clone)]
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

impl Sweep {
    /// Reads, expands and validates a sweep file. `profile` overrides `[sweep].default_profile`.
    pub fn load(path: &Path, profile: Option<&str>, overrides: &[Override]) -> Result<Self, GridError> {
        let err = |message: String| GridError { file: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut doc: Table = toml::from_str(&text).map_err(|e| err(format!("not valid TOML: {e}")))?;
        const TOP: [&str; 5] = ["sweep", "base", "grid", "variant", "profiles"];
        if let Some(bad) = doc.keys().find(|k| !TOP.contains(&k.as_str())) {
            return Err(err(format!("unknown top-level key `{bad}`, expected one of: {}", TOP.join(", "))));
        }
        let meta: SweepMeta = doc
            .remove("sweep")
            .ok_or_else(|| err("missing the [sweep] table (it needs at least `name`)".into()))?
            .try_into()
            .map_err(|e| err(format!("[sweep]: {e}")))?;
        if meta.seeds.is_empty() {
            return Err(err("sweep.seeds: must list at least one seed".into()));
        }
        let profile = profile.unwrap_or(&meta.default_profile).to_string();
        let mut base = take_table(&mut doc, "base").map_err(err)?;
        let mut grid = flatten(&take_table(&mut doc, "grid").map_err(err)?, "grid");
        let mut variants = variants(&mut doc).map_err(err)?;
        let mut profiles = take_table(&mut doc, "profiles").map_err(err)?;
        match profiles.remove(&profile) {
            Some(Value::Table(mut p)) => {
                if let Some(bad) = p.keys().find(|k| !["base", "grid", "variant"].contains(&k.as_str())) {
                    return Err(err(format!("profiles.{profile}: unknown key `{bad}`, expected one of: base, grid, variant")));
                }
                for (key, value) in flatten(&take_table(&mut p, "base").map_err(err)?, "") {
                    set_path(&mut base, &key, value);
                }
                for (key, value) in flatten(&take_table(&mut p, "grid").map_err(err)?, "grid") {
                    upsert(&mut grid, key, value);
                }
                for (name, keys) in take_table(&mut p, "variant").map_err(err)? {
                    let Some((_, variant_keys)) = variants.iter_mut().find(|(n, _)| *n == name) else {
                        let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
                        return Err(err(format!("profiles.{profile}.variant: no variant named `{name}` (variants: {})", names.join(", "))));
                    };
                    let Value::Table(keys) = keys else {
                        return Err(err(format!("profiles.{profile}.variant.\"{name}\" must be a table")));
                    };
                    for (key, value) in flatten(&keys, "") {
                        upsert(variant_keys, key, value);
                    }
                }
            }
            Some(_) => return Err(err(format!("profiles.{profile} must be a table"))),
            None if profile == meta.default_profile => {}
            None => {
                let known: Vec<_> = std::iter::once(meta.default_profile.clone()).chain(profiles.keys().cloned()).collect();
                return Err(err(format!("unknown profile `{profile}`, this file has: {}", known.join(", "))));
            }
        }
        for o in overrides {
            match o.values.as_slice() {
                [one] => set_path(&mut base, &o.key, one.clone()),
                many => upsert(&mut grid, format!("grid.{}", o.key), Value::Array(many.to_vec())),
            }
        }
        let axes = grid
            .into_iter()
            .map(|(key, value)| match value {
                Value::Array(values) if !values.is_empty() => Ok((key.trim_start_matches("grid.").to_string(), values)),
                _ => Err(err(format!("{key}: a grid key must be a non-empty list of candidates, e.g. {key} = [32, 64]"))),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut runs = Vec::new();
        for (variant, variant_keys) in &variants {
            for point in cartesian(&axes) {
                for &seed in &meta.seeds {
                    let mut table = base.clone();
                    for (k, v) in variant_keys.iter().chain(point.iter()) {
                        set_path(&mut table, k, v.clone());
                    }
                    table.insert("seed".into(), Value::Integer(seed as i64));
                    let mut spec = RunSpec { index: runs.len(), run_id: String::new(), variant: variant.clone(), point: point.clone(), config: RunConfig { seed, ..RunConfig::default() }, plan: LayerPlan(Vec::new()) };
                    (spec.config, spec.plan) = resolve(table).map_err(|m| err(format!("run {spec}: {m}")))?;
                    spec.run_id = run_id(&spec.config);
                    runs.push(spec);
                }
            }
        }
        let grid_keys = axes.into_iter().map(|(k, _)| k).collect();
        Ok(Sweep { file: path.to_owned(), meta, profile, grid_keys, runs })
    }

    /// `results/<name>` for the default profile, `results/<name>-<profile>` otherwise.
    pub fn results_dir(&self, results_root: &Path) -> PathBuf {
        if self.profile == self.meta.default_profile {
            results_root.join(&self.meta.name)
        } else {
            results_root.join(format!("{}-{}", self.meta.name, self.profile))
        }
    }
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

fn take_table(doc: &mut Table, key: &str) -> Result<Table, String> {
    match doc.remove(key) {
        None => Ok(Table::new()),
        Some(Value::Table(t)) => Ok(t),
        Some(_) => Err(format!("`{key}` must be a table ([{key}])")),
    }
}

/// Nested tables -> (dotted key, leaf value), keeping file order.
fn flatten(table: &Table, prefix: &str) -> Vec<(String, Value)> {
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

fn upsert(entries: &mut Vec<(String, Value)>, key: String, value: Value) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
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

/// `[[variant]]` entries as (name, overrides); one unnamed empty variant when there are none.
fn variants(doc: &mut Table) -> Result<Vec<(String, Vec<(String, Value)>)>, String> {
    let Some(list) = doc.remove("variant") else {
        return Ok(vec![(String::new(), Vec::new())]);
    };
    let Value::Array(list) = list else {
        return Err("`variant` must be an array of tables ([[variant]])".into());
    };
    let mut out: Vec<(String, Vec<(String, Value)>)> = Vec::new();
    for (i, v) in list.into_iter().enumerate() {
        let Value::Table(mut t) = v else {
            return Err(format!("variant #{i} must be a table"));
        };
        let name = match t.remove("name") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return Err(format!("variant #{i} needs a `name` (a non-empty string)")),
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("two variants are named `{name}`"));
        }
        out.push((name, flatten(&t, "")));
    }
    Ok(out)
}

/// All combinations of the axes' candidates, the first axis varying slowest.
fn cartesian(axes: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    axes.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.into_iter()
            .flat_map(|point| values.iter().map(move |v| {
                let mut p = point.clone();
                p.push((key.clone(), v.clone()));
                p
            }))
            .collect()
    })
}

/// Grid values of a run, by key, as strings (for CSV columns).
pub fn point_map(spec: &RunSpec) -> BTreeMap<String, String> {
    spec.point.iter().map(|(k, v)| (k.clone(), display_value(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[sweep]
name = "t"
seeds = [1, 2]
[base]
model.n_layers = 2
model.d_model = 32
model.n_heads = 2
train.seq_len = 64
[grid]
attn.window = [16, 32]
[[variant]]
name = "BST"
model.arch = "BST:SH:S4D"
model.ssm_layers = [1]
[[variant]]
name = "SLIDE"
model.arch = "SLIDE"
[profiles.big.base]
model.d_model = 64
[profiles.big.grid]
attn.window = [64]
[profiles.big.variant.BST]
model.ssm_layers = [0, 1]
"#;

    fn load(text: &str, profile: Option<&str>, overrides: &[&str]) -> Result<Sweep, GridError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
        Sweep::load(&path, profile, &overrides)
    }

    #[test]
    fn expands_variants_times_grid_times_seeds() {
        let sweep = load(GOOD, None, &[]).unwrap();
        assert_eq!(sweep.runs.len(), 2 * 2 * 2);
        let labels: Vec<String> = sweep.runs.iter().map(|r| r.to_string()).collect();
        assert_eq!(labels[0], "#0 : variant=BST attn.window=16 seed=1");
        assert_eq!(labels[7], "#7 : variant=SLIDE attn.window=32 seed=2");
        assert_eq!(sweep.runs[2].config.attn.window, 32);
        assert_eq!(sweep.runs[5].config.model.arch.to_string(), "SLIDE");
        assert_eq!(sweep.grid_keys, vec!["attn.window"]);
        let mut ids: Vec<&str> = sweep.runs.iter().map(|r| r.run_id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 8, "every run has its own id");
        assert_eq!(load(GOOD, None, &[]).unwrap().runs[3].run_id, sweep.runs[3].run_id, "ids are stable");
    }

    #[test]
    fn profiles_and_overrides_apply() {
        let big = load(GOOD, Some("big"), &[]).unwrap();
        assert_eq!(big.runs.len(), 4);
        assert!(big.runs.iter().all(|r| r.config.model.d_model == 64 && r.config.attn.window == 64));
        assert_eq!(big.runs[0].config.model.ssm_layers, vec![0, 1]);
        assert_eq!(load(GOOD, None, &[]).unwrap().runs[0].config.model.ssm_layers, vec![1]);
        assert!(big.results_dir(Path::new("results")).ends_with("t-big"));
        let o = load(GOOD, None, &["train.steps=7", "train.warmup_steps=2", "model.n_heads=1,2"]).unwrap();
        assert_eq!(o.runs.len(), 16);
        assert!(o.runs.iter().all(|r| r.config.train.steps == 7));
        let err = load(GOOD, Some("huge"), &[]).unwrap_err().to_string();
        assert!(err.contains("unknown profile `huge`") && err.contains("cpu, big"), "{err}");
    }

    #[test]
    fn typos_fail_with_file_key_and_allowed_values() {
        let typo = GOOD.replace("attn.window = [16, 32]", "attn.windw = [16, 32]");
        let err = load(&typo, None, &[]).unwrap_err().to_string();
        assert!(err.contains("sweep.toml") && err.contains("attn.windw") && err.contains("`window`"), "{err}");

        let bad_arch = GOOD.replace("model.arch = \"SLIDE\"", "model.arch = \"SLIDER\"");
        let err = load(&bad_arch, None, &[]).unwrap_err().to_string();
        assert!(err.contains("model.arch") && err.contains("BST:SH:S4D, BST:MH:S4D") && err.contains("SLIDE"), "{err}");

        let bad_value = GOOD.replace("attn.window = [16, 32]", "attn.window = [16, 24]");
        let err = load(&bad_value, None, &[]).unwrap_err().to_string();
        assert!(err.contains("train.seq_len") && err.contains("attn.window = 24"), "{err}");

        let bad_type = GOOD.replace("model.n_layers = 2", "model.n_layers = \"two\"");
        let err = load(&bad_type, None, &[]).unwrap_err().to_string();
        assert!(err.contains("model.n_layers"), "{err}");

        let not_list = GOOD.replace("attn.window = [16, 32]", "attn.window = 16");
        let err = load(&not_list, None, &[]).unwrap_err().to_string();
        assert!(err.contains("grid.attn.window") && err.contains("list"), "{err}");

        let bad_top = format!("{GOOD}\n[gird]\nx = 1\n");
        let err = load(&bad_top, None, &[]).unwrap_err().to_string();
        assert!(err.contains("`gird`") && err.contains("grid"), "{err}");

        let bad_meta = GOOD.replace("seeds = [1, 2]", "seed = [1, 2]");
        let err = load(&bad_meta, None, &[]).unwrap_err().to_string();
        assert!(err.contains("[sweep]") && err.contains("seeds"), "{err}");
    }

    #[test]
    fn overrides_parse_like_hydra() {
        let o: Override = "attn.window=32,64".parse().unwrap();
        assert_eq!(o.values, vec![Value::Integer(32), Value::Integer(64)]);
        let o: Override = "model.ssm_layers=[1, 3]".parse().unwrap();
        assert_eq!(o.values.len(), 1);
        let o: Override = "model.arch=SLIDE".parse().unwrap();
        assert_eq!(o.values, vec![Value::String("SLIDE".into())]);
        assert!("nokey".parse::<Override>().is_err());
    }
}
