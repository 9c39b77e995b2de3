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

/// Two studies sharing the SLIDE baseline and the BST point at layer index 1.
const STUDIES: &str = r#"
[sweep]
name = "s"
seeds = [0, 1, 2]
[base]
model.n_layers = 3
model.d_model = 32
model.n_heads = 2
attn.window = 16
train.seq_len = 64
[[study]]
name = "placement"
paper = "Table 3 [R]"
plot_x = "model.ssm_layers"
baselines = ["SLIDE"]
[study.grid]
model.ssm_layers = [[0], [1], [2]]
[[study.variant]]
name = "BST"
model.arch = "BST:SH:S4D"
[[study.variant]]
name = "SLIDE"
model.arch = "SLIDE"
not_crossed_with = ["model.ssm_layers"]
[[study]]
name = "context"
baselines = ["SLIDE"]
[study.zip]
attn.window = [16, 32]
train.seq_len = [64, 128]
[study.grid]
model.arch = ["BST:SH:S4D", "BST:MF:S4D"]
[[study.exclude]]
model.arch = "BST:MF:S4D"
attn.window = 32
[[study.variant]]
name = "BST"
model.ssm_layers = [1]
[[study.variant]]
name = "SLIDE"
model.arch = "SLIDE"
not_crossed_with = ["model.arch"]
[profiles.quick.sweep]
seeds = [0]
[profiles.quick.base]
train.steps = 5
train.warmup_steps = 1
[profiles.quick.study.placement.grid]
model.ssm_layers = [[1]]
"#;

fn load(text: &str, profile: Option<&str>, overrides: &[&str]) -> Result<Sweep, GridError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    let overrides: Vec<Override> = overrides.iter().map(|o| o.parse().unwrap()).collect();
    Sweep::load(&path, profile, &overrides)
}

#[test]
fn a_single_grid_expands_variants_times_grid_times_seeds() {
    let sweep = load(GOOD, None, &[]).unwrap();
    assert_eq!(sweep.runs.len(), 2 * 2 * 2);
    let labels: Vec<String> = sweep.runs.iter().map(|r| r.to_string()).collect();
    assert_eq!(labels[0], "#0 t: variant=BST attn.window=16 seed=1");
    assert_eq!(labels[7], "#7 t: variant=SLIDE attn.window=32 seed=2");
    assert_eq!(sweep.runs[2].config.attn.window, 32);
    assert_eq!(sweep.runs[5].config.model.arch.to_string(), "SLIDE");
    assert_eq!(sweep.keys, vec!["attn.window"]);
    let mut ids: Vec<&str> = sweep.runs.iter().map(|r| r.run_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 8, "every run has its own id");
    assert_eq!(load(GOOD, None, &[]).unwrap().runs[3].run_id, sweep.runs[3].run_id, "ids are stable");
}

#[test]
fn studies_share_runs_and_honour_axes_zip_and_exclusions() {
    let s = load(STUDIES, None, &[]).unwrap();
    assert_eq!(s.studies.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["placement", "context"]);
    assert_eq!(s.keys, ["model.ssm_layers", "model.arch", "attn.window", "train.seq_len"], "grid keys, then zip keys");
    // placement: 3 BST points + 1 SLIDE point; context: SH at 2 zipped points + MF at 1 (the other
    // excluded) + SLIDE at 2 zipped points; SLIDE at W=16 and BST at [1], W=16 are shared
    let per_seed = 3 + 1 + (2 + 1 + 2) - 2;
    assert_eq!(s.runs.len(), per_seed * 3);
    let shared: Vec<&RunSpec> = s.runs.iter().filter(|r| r.memberships.len() == 2).collect();
    assert_eq!(shared.len(), 2 * 3, "two configurations of the two studies are the same runs");
    assert!(shared.iter().any(|r| r.studies() == ["placement", "context"] && r.variant() == "SLIDE"));
    assert!(!s.runs.iter().any(|r| r.config.model.arch.to_string() == "BST:MF:S4D" && r.config.attn.window == 32), "excluded");
    assert!(s.runs.iter().any(|r| r.config.attn.window == 32 && r.config.train.seq_len == 128), "zipped together");
    assert!(!s.runs.iter().any(|r| r.config.attn.window == 32 && r.config.train.seq_len == 64), "never crossed");
    let slide: Vec<&RunSpec> = s.runs.iter().filter(|r| r.variant() == "SLIDE").collect();
    assert!(slide.iter().all(|r| r.config.model.ssm_layers.is_empty()), "SLIDE is not crossed with the placements");
    assert_eq!(s.study("placement").unwrap().x.as_deref(), Some("model.ssm_layers"));
    assert_eq!(s.study("context").unwrap().x.as_deref(), Some("model.arch"), "the first varying key by default");
}

#[test]
fn profiles_change_seeds_studies_and_are_all_validated_at_load() {
    let quick = load(STUDIES, Some("quick"), &[]).unwrap();
    assert!(quick.runs.iter().all(|r| r.config.seed == 0 && r.config.train.steps == 5));
    assert_eq!(quick.runs.iter().filter(|r| r.memberships.iter().any(|m| m.study == "placement")).count(), 2, "one BST placement and SLIDE");
    assert!(quick.results_dir(Path::new("results")).ends_with("s-quick"));
    // a typo in a profile that is not selected still fails the load
    let typo = format!("{STUDIES}\n[profiles.gpu.base]\nmodel.d_modle = 1024\n");
    let err = load(&typo, None, &[]).unwrap_err().to_string();
    assert!(err.contains("profile `gpu`") && err.contains("d_modle"), "{err}");
    let typo = format!("{STUDIES}\n[profiles.gpu.study.placement.variant.BTS]\nmodel.d_model = 64\n");
    let err = load(&typo, None, &[]).unwrap_err().to_string();
    assert!(err.contains("profile `gpu`") && err.contains("no variant named `BTS`") && err.contains("BST, SLIDE"), "{err}");
    let typo = format!("{STUDIES}\n[profiles.gpu.study.placment.grid]\nattn.window = [8]\n");
    let err = load(&typo, None, &[]).unwrap_err().to_string();
    assert!(err.contains("no study named `placment`") && err.contains("placement, context"), "{err}");
    let bad_default = STUDIES.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2]\ndefault_profile = \"qiuck\"");
    let err = load(&bad_default, Some("quick"), &[]).unwrap_err().to_string();
    assert!(err.contains("default_profile") && err.contains("qiuck") && err.contains("cpu, quick"), "{err}");
}

#[test]
fn profiles_and_overrides_apply_to_a_single_grid() {
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
fn overrides_reach_every_study() {
    let s = load(STUDIES, None, &["train.steps=3", "train.warmup_steps=1", "model.dropout=0.0,0.1"]).unwrap();
    assert!(s.runs.iter().all(|r| r.config.train.steps == 3));
    for study in &s.studies {
        assert!(study.keys.contains(&"model.dropout".to_string()), "{}: {:?}", study.name, study.keys);
    }
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

    let bad_zip = STUDIES.replace("train.seq_len = [64, 128]", "train.seq_len = [64]");
    let err = load(&bad_zip, None, &[]).unwrap_err().to_string();
    assert!(err.contains("study `context`") && err.contains("one length"), "{err}");

    let bad_axis = STUDIES.replace("not_crossed_with = [\"model.ssm_layers\"]", "not_crossed_with = [\"model.ssm_layer\"]");
    let err = load(&bad_axis, None, &[]).unwrap_err().to_string();
    assert!(err.contains("not_crossed_with") && err.contains("model.ssm_layer`"), "{err}");

    let bad_baseline = STUDIES.replace("baselines = [\"SLIDE\"]\n[study.zip]", "baselines = [\"SLIDES\"]\n[study.zip]");
    let err = load(&bad_baseline, None, &[]).unwrap_err().to_string();
    assert!(err.contains("baselines") && err.contains("SLIDES"), "{err}");
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

#[test]
fn config_values_read_any_dotted_key() {
    let s = load(STUDIES, None, &[]).unwrap();
    let r = &s.runs[0];
    assert_eq!(config_value(&r.config, "model.ssm_layers"), "[0]");
    assert_eq!(config_value(&r.config, "attn.window"), "16");
    assert_eq!(config_value(&r.config, "model.arch"), "BST:SH:S4D");
    assert_eq!(config_value(&r.config, "model.nothing"), "");
}

/// A placement study with two claims of the paper, and a profile that moves the grid.
const CLAIMS: &str = r#"
[sweep]
name = "c"
seeds = [0, 1]
[base]
model.n_layers = 3
model.d_model = 32
model.n_heads = 2
attn.window = 16
train.seq_len = 64
[[study]]
name = "placement"
baselines = ["SLIDE"]
[study.grid]
model.ssm_layers = [[0], [1]]
[[study.claim]]
text = "middle beats lowest"
better = "BST"
better_at = { model.ssm_layers = [1] }
worse = "BST"
worse_at = { model.ssm_layers = [0] }
[[study.claim]]
text = "BST beats SLIDE"
better = "BST"
better_at = { model.ssm_layers = [1] }
worse = "SLIDE"
[[study.variant]]
name = "BST"
model.arch = "BST:SH:S4D"
[[study.variant]]
name = "SLIDE"
model.arch = "SLIDE"
not_crossed_with = ["model.ssm_layers"]
[profiles.deep.base]
model.n_layers = 4
[profiles.deep.study.placement.grid]
model.ssm_layers = [[2], [3]]
[[profiles.deep.study.placement.claim]]
text = "upper beats top"
better = "BST"
better_at = { model.ssm_layers = [2] }
worse = "BST"
worse_at = { model.ssm_layers = [3] }
"#;

#[test]
fn claims_name_one_configuration_each_and_profiles_replace_them() {
    let s = load(CLAIMS, None, &[]).unwrap();
    let claims = &s.study("placement").unwrap().claims;
    assert_eq!(claims.len(), 2);
    assert_eq!(claims[0].better.to_string(), "BST model.ssm_layers=[1]");
    assert_eq!(claims[1].worse.to_string(), "SLIDE", "SLIDE does not vary along the placement");
    let deep = load(CLAIMS, Some("deep"), &[]).unwrap();
    let texts: Vec<&str> = deep.study("placement").unwrap().claims.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["upper beats top"]);
    let widened = load(CLAIMS, None, &["attn.window=16,32"]).unwrap();
    assert!(widened.study("placement").unwrap().claims.is_empty(), "a grid changed on the command line drops the claims it no longer pins to one configuration");
}

#[test]
fn a_claim_naming_no_single_configuration_is_refused_with_the_choices() {
    let missing = CLAIMS.replacen("worse_at = { model.ssm_layers = [0] }", "worse_at = { model.ssm_layers = [2] }", 1);
    let e = load(&missing, None, &[]).unwrap_err().to_string();
    assert!(e.contains("study `placement`: claim 1: worse = `BST model.ssm_layers=[2]` matches no configuration"), "{e}");
    assert!(e.contains("the study has: BST model.ssm_layers=[0]; BST model.ssm_layers=[1]; SLIDE"), "{e}");
    let ambiguous = CLAIMS.replacen("better_at = { model.ssm_layers = [1] }\nworse = \"SLIDE\"", "worse = \"SLIDE\"", 1);
    let e = load(&ambiguous, None, &[]).unwrap_err().to_string();
    assert!(e.contains("claim 2: better = `BST` matches several configurations (pin the varying keys with `better_at`)"), "{e}");
    let typo = CLAIMS.replacen("text = \"BST beats SLIDE\"", "text = \"BST beats SLIDE\"\nbeter = \"BST\"", 1);
    let e = load(&typo, None, &[]).unwrap_err().to_string();
    assert!(e.contains("beter"), "{e}");
}

#[test]
fn a_paper_table_must_name_the_studys_variants_and_values() {
    let table = "[study.paper_table]\nkey = \"model.ssm_layers\"\ncolumns = [\"[0]\", \"[1]\"]\nlabels = [\"low\", \"mid\"]\nmetric = \"perplexity\"\ntag = \"R\"\n[study.paper_table.values]\nBST = [11.5, 11.4]\n";
    let with = |t: &str| CLAIMS.replacen("[[study.variant]]\nname = \"BST\"", &format!("{t}[[study.variant]]\nname = \"BST\""), 1);
    let s = load(&with(table), None, &[]).unwrap();
    let t = s.study("placement").unwrap().paper_table.as_ref().expect("the table is kept");
    assert_eq!(t.values["BST"], vec![11.5, 11.4]);
    let e = |t: String| load(&with(&t), None, &[]).unwrap_err().to_string();
    assert!(e(table.replace("BST = ", "BTS = ")).contains("paper_table.values.\"BTS\": no such variant (variants: BST, SLIDE)"));
    assert!(e(table.replace("\"[1]\"]", "\"[2]\"]")).contains("paper_table.columns: `[2]` is not a value of model.ssm_layers"));
    assert!(e(table.replace("[11.5, 11.4]", "[11.5]")).contains("1 values for 2 columns"));
    assert!(e(table.replace("key = \"model.ssm_layers\"", "key = \"attn.window\"")).contains("not a varying key"));
}

#[test]
fn a_claim_at_a_longer_length_needs_that_length_evaluated() {
    let at_4x = CLAIMS.replacen("text = \"BST beats SLIDE\"", "text = \"BST beats SLIDE\"\nlength_factor = 4", 1);
    let e = load(&at_4x, None, &[]).unwrap_err().to_string();
    assert!(e.contains("study `placement`: claim 2: length_factor = 4 is not in train.eval_length_factors of both sides"), "{e}");
    let evaluated = at_4x.replacen("train.seq_len = 64", "train.seq_len = 64\ntrain.eval_length_factors = [1, 4]", 1);
    let s = load(&evaluated, None, &[]).unwrap();
    assert_eq!(s.study("placement").unwrap().claims.iter().map(|c| c.length_factor).collect::<Vec<_>>(), [1, 4]);
}
