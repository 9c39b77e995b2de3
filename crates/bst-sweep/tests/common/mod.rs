//! What the runner and Slurm tests share: the corpus, a tiny model, runs.csv read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// data/ beside the workspace, with the books corpus scripts/setup.sh fetches.
pub fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data").canonicalize().expect("data/ beside the workspace: run scripts/setup.sh");
    assert!(dir.join("books/MANIFEST.sha256").exists(), "{} has no books corpus: run scripts/setup.sh first", dir.display());
    dir
}

/// A `[base]` table of a tiny model on the books corpus (a checkpoint every 2 steps).
pub fn tiny_base(steps: usize) -> String {
    format!(
        r#"[base]
model.n_layers = 2
model.d_model = 16
model.n_heads = 2
attn.window = 16
train.steps = {steps}
train.warmup_steps = 2
train.batch_size = 4
train.seq_len = 32
train.lr = 3e-3
train.eval_tokens = 1024
train.checkpoint_every = 2
data.dir = "{}"
"#,
        data_dir().display()
    )
}

/// runs.csv as rows of column -> value.
pub fn rows(csv_path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(csv_path).unwrap();
    let header = reader.headers().unwrap().clone();
    reader.records().map(|r| header.iter().zip(r.unwrap().iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect()).collect()
}
