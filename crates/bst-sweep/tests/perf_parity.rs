//! `bst-perf --tiny`: our layers and the CPU-profile language model against the PyTorch
//! reference (`scripts/reference/`, run by the venv's Python that scripts/setup.sh makes) with
//! the same weights and inputs. Outputs, the loss and every gradient must agree within 1e-4 in
//! f32, or the command fails. Parity only: the suite times nothing.

use std::path::Path;
use std::process::Command;

#[test]
fn layers_and_model_match_pytorch_at_a_tiny_size() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh (it installs torch and safetensors)", python.display());
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_bst-perf"))
        .current_dir(&root)
        .args(["--tiny", "--threads", "1", "--out"])
        .arg(out.path())
        .output()
        .expect("running bst-perf");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "bst-perf --tiny failed\n{stdout}\n{stderr}");

    let mut rows = csv::Reader::from_path(out.path().join("parity.csv")).unwrap();
    let header = rows.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (compared, tensor, relative) = (col("compared"), col("tensor"), col("relative"));
    let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
    for row in rows.records() {
        let row = row.unwrap();
        let rel: f64 = row[relative].parse().unwrap();
        assert!(rel <= 1e-4, "{} {}: relative error {rel:e}", &row[compared], &row[tensor]);
        seen.entry(row[compared].to_owned()).or_default().push(row[tensor].to_owned());
    }
    for subject in ["SLIDE", "BST:SH:S4D", "BRECT:FIXED:SKIP", "LM"] {
        let tensors = seen.get(subject).unwrap_or_else(|| panic!("{subject} was not compared: {seen:?}"));
        let output = if subject == "LM" { "loss" } else { "y" };
        assert!(tensors.iter().any(|t| t == output), "{subject}: no `{output}` compared");
        assert!(tensors.iter().filter(|t| t.starts_with("grad.")).count() >= 2, "{subject}: gradients not compared: {tensors:?}");
    }
    assert!(seen["SLIDE"].iter().any(|t| t == "grad.x"), "the input's gradient is compared");
}
