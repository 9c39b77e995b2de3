//! Parameter counts at the paper's scale against Table 1 of the paper (Fathi et al. 2023), and the
//! differences between models that its comparisons rely on.
//!
//! Scale (`experiments/models.toml`, profile `gpu`): 12 layers, d_model 1024, 8 heads, MLP 4096,
//! W = 512, L = 4096, S4 N = 16 with the d/4 projection, BST layers {1, 7, 9}, S = 512 context
//! states, BRECT's recurrent layer at -3, XL memory 2048. Vocabulary 32128, meliad's
//! `pg19_tokens.gin` (the paper: "32k").
//!
//! **Accounting.** Our LM has an output head of its own (`head`: vocab x d + bias, 32.9M); meliad,
//! whose SLIDE/BRECT/XL configurations the paper's baselines are, reads logits off the embedding
//! (`self.embed.attend(ys)` in `decoder_stack.py`). Totals are compared "tied": ours minus the
//! head. Both the paper's and our differences between models are unaffected by it.
//!
//! **Tolerance** ([`TOLERANCE`], 4% of the paper's total). The paper's totals are rounded to 1M
//! (at most 0.5%), and the paper's SLIDE:12L (190M) is itself 3.2% above what meliad's
//! `medium_150M` configuration gives: 151M without embeddings (meliad's own comment; we match it to
//! 0.1%, see [`backbone_matches_meliad_medium_150m`]) + 32.9M tied embedding = 184M. What the other
//! 6M are is unknown (T5 relative bias and scale-only norms are ~0.03M; we use RoPE, which has no
//! parameters, and LayerNorm/Linear biases, +0.14M). Every model inherits that base, so the
//! tolerance is that 3.2% plus the rounding, and is the same for all models.
//!
//! **Status.** SLIDE, TRSF-XL, BRECT:FIXED:SKIP, BST:SH:S4 and BST:SH:UNSTRUCT agree. BST:MH and
//! BST:MF do not (see [`multi_head_and_multi_filter_totals_match_the_paper`], ignored, which
//! fails): our MH adds almost nothing to SH (paper: +16M), and our MF gives each of the S = 512
//! context states a whole bank of d/4 kernels, so its kernel parameters grow with S (MF:S4 +54M
//! over SH, MF:UNSTRUCT 1.85B in all), whereas the paper's MF adds the same 15M to SH for S4 and
//! for unstructured kernels. The Params column of the paper's BST rows is recalled, not confirmed
//! (`bst-paper-notes.md` tags it R), which is one more reason these are reported, not tuned away.
//! GSS-HYBRID-L (373M) is Mehta et al.'s own larger configuration, not our GSS-HYBRID on this
//! backbone (169.8M), so it is not compared.
//!
//! Building one ~220M model takes ~2.5 s on 2 CPU cores (random initialisation of ~0.9 GB), so
//! each model is built once, one at a time, and dropped; BST:MF:UNSTRUCT (1.85B parameters at
//! L = 4096) is not built but counted from two small builds, its count being affine in L.

use std::sync::OnceLock;

use bst_model::{lm::parameter_count, RunConfig};
use tch::{nn, Device};

const VOCAB: usize = 32_128;
const D: usize = 1024;
/// Relative tolerance of totals against the paper's: see the module docs.
const TOLERANCE: f64 = 0.04;

/// The paper's Table 1 (~200M rows), in parameters.
const PAPER: [(&str, f64); 8] = [
    ("SLIDE", 190e6),
    ("TRSF-XL", 190e6),
    ("BRECT:FIXED:SKIP", 196e6),
    ("BST:SH:S4", 202e6),
    ("BST:MH:S4", 218e6),
    ("BST:MF:S4", 217e6),
    ("BST:SH:UNSTRUCT", 206e6),
    ("BST:MF:UNSTRUCT", 221e6),
];

fn paper(arch: &str) -> f64 {
    PAPER.iter().find(|(a, _)| *a == arch).expect("a model of Table 1").1
}

/// The `gpu` profile of experiments/models.toml for `arch`, with training length `seq_len` and
/// window `window` (the paper's: 4096 and 512).
fn config(arch: &str, seq_len: usize, window: usize) -> RunConfig {
    let mut cfg = RunConfig::default(); // 12 layers, d 1024, 8 heads, MLP x4, N = 16, d/4
    cfg.model.arch = arch.parse().unwrap();
    if arch.starts_with("BST") {
        cfg.model.ssm_layers = vec![1, 7, 9];
    }
    cfg.model.context_states = 512;
    cfg.model.recurrent_layer = -3;
    cfg.model.memory_len = 2048;
    cfg.attn.window = window;
    cfg.train.seq_len = seq_len;
    cfg
}

/// Parameters of the model, all of them and without the output head ("tied").
#[derive(Debug, Clone, Copy)]
struct Count {
    total: usize,
    tied: usize,
}

fn count(cfg: &RunConfig) -> Count {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = cfg.build_model(&vs.root(), VOCAB).unwrap();
    let vars = vs.variables();
    let head = vars["head.weight"].numel() + vars["head.bias"].numel();
    let total = parameter_count(&vs);
    Count { total, tied: total - head }
}

/// The models built at the paper's scale, counted once for all tests (one at a time).
fn counts() -> &'static Vec<(&'static str, Count)> {
    static COUNTS: OnceLock<Vec<(&'static str, Count)>> = OnceLock::new();
    COUNTS.get_or_init(|| {
        ["SLIDE", "TRSF-XL", "BRECT:FIXED:SKIP", "BST:SH:S4", "BST:SH:UNSTRUCT", "BST:MH:S4", "BST:MF:S4"]
            .into_iter()
            .map(|arch| {
                let c = count(&config(arch, 4096, 512));
                eprintln!("{arch:<18} {:>7.1}M  tied {:>7.1}M  paper {:>5.0}M", c.total as f64 / 1e6, c.tied as f64 / 1e6, paper(arch) / 1e6);
                (arch, c)
            })
            .collect()
    })
}

fn of(arch: &str) -> Count {
    counts().iter().find(|(a, _)| *a == arch).unwrap_or_else(|| panic!("{arch} is not counted")).1
}

/// `Err` with the numbers when `arch`'s tied count is off the paper's by more than [`TOLERANCE`].
fn compare(arch: &str, tied: usize) -> Result<(), String> {
    let rel = tied as f64 / paper(arch) - 1.0;
    let line = format!("{arch}: ours {:.1}M (tied) vs paper {:.0}M: {:+.1}%", tied as f64 / 1e6, paper(arch) / 1e6, 100.0 * rel);
    if rel.abs() <= TOLERANCE {
        Ok(())
    } else {
        Err(line)
    }
}

/// Our SLIDE without embedding and head is meliad's `medium_150M` ("Number of parameters = 151M":
/// 12 x (4 d^2 + 2 d x 4d)), plus our biases; TRSF-XL has exactly SLIDE's parameters (its memory
/// is a cache, RoPE has none), as in the paper (190M both).
#[test]
fn backbone_matches_meliad_medium_150m() {
    let slide = of("SLIDE");
    let embedding = VOCAB * D;
    let body = slide.tied - embedding;
    assert!((body as f64 / 151e6 - 1.0).abs() < 0.005, "SLIDE without embeddings: {body}, meliad: 151M");
    assert_eq!(of("TRSF-XL").total, slide.total);
}

/// Totals against Table 1, for the models whose layers match the paper's description.
#[test]
fn totals_match_the_paper_where_our_layers_match_its() {
    let failures: Vec<String> = ["SLIDE", "TRSF-XL", "BRECT:FIXED:SKIP", "BST:SH:S4", "BST:SH:UNSTRUCT"]
        .into_iter()
        .filter_map(|arch| compare(arch, of(arch).tied).err())
        .collect();
    assert!(failures.is_empty(), "beyond {}%:\n{}", 100.0 * TOLERANCE, failures.join("\n"));
}

/// The relations between models that the paper's comparisons rest on.
#[test]
fn differences_between_models_are_the_papers() {
    let total = |arch| of(arch).total as i64;
    let slide_layer = 12 * D * D; // attention 4 d^2 + MLP 8 d^2
    // "Three BST layers add about one layer's parameters" (paper: 202M - 190M = 12M, about 6%;
    // ours: 3 x (cross-attention q, k, v, a 2d -> d output, d <-> d/4 projections) = 3 x 4.5 d^2).
    let bst_extra = (total("BST:SH:S4") - total("SLIDE")) as f64 / slide_layer as f64;
    assert!((0.75..=1.25).contains(&bst_extra), "BST:SH:S4 adds {bst_extra:.2} SLIDE layers");
    // MH and MF have more parameters than SH (paper: 218M and 217M against 202M)
    assert!(total("BST:MH:S4") > total("BST:SH:S4") && total("BST:MF:S4") > total("BST:SH:S4"));
    // BRECT lies between SLIDE and BST:SH (paper: 190M < 196M < 202M)
    assert!(total("SLIDE") < total("BRECT:FIXED:SKIP") && total("BRECT:FIXED:SKIP") < total("BST:SH:S4"));
    // unstructured kernels: 3 layers x d/4 channels x L taps more than S4 (paper: 206M - 202M =
    // 4M, each total rounded to 1M, so 3M to 5M)
    let unstruct = total("BST:SH:UNSTRUCT") - total("BST:SH:S4");
    assert!((3_000_000..=5_000_000).contains(&unstruct), "UNSTRUCT - S4 = {unstruct}");
}

/// BST:MH and BST:MF against Table 1. Fails: see the module docs. MF:UNSTRUCT is counted from
/// builds at L = 1 and 2 (W = 1; nothing but unstructured taps depends on L or W), checked on
/// SH:UNSTRUCT against its full build.
#[test]
#[ignore = "known gap: our BST:MH adds ~0.7M to SH (paper +16M); our BST:MF has S = 512 kernel banks (MF:S4 252M tied vs 217M, MF:UNSTRUCT 1.8B vs 221M)"]
fn multi_head_and_multi_filter_totals_match_the_paper() {
    let at_length = |arch: &str, len: usize| {
        let (a, b) = (count(&config(arch, 1, 1)).tied as i64, count(&config(arch, 2, 1)).tied as i64);
        (a + (len as i64 - 1) * (b - a)) as usize
    };
    assert_eq!(at_length("BST:SH:UNSTRUCT", 4096), of("BST:SH:UNSTRUCT").tied, "the count is not affine in L");
    let mf_unstruct = at_length("BST:MF:UNSTRUCT", 4096);
    eprintln!("BST:MF:UNSTRUCT    tied {:>7.1}M  paper {:>5.0}M", mf_unstruct as f64 / 1e6, paper("BST:MF:UNSTRUCT") / 1e6);
    let failures: Vec<String> = [("BST:MH:S4", of("BST:MH:S4").tied), ("BST:MF:S4", of("BST:MF:S4").tied), ("BST:MF:UNSTRUCT", mf_unstruct)]
        .into_iter()
        .filter_map(|(arch, tied)| compare(arch, tied).err())
        .collect();
    assert!(failures.is_empty(), "beyond {}%:\n{}", 100.0 * TOLERANCE, failures.join("\n"));
}
