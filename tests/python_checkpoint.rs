//! A checkpoint written by bst loads in Python with `safetensors.torch.load_file`, with the same
//! names, shapes and values (the venv's Python; scripts/setup.sh installs the package).

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;

use bst::data::TokenStream;
use bst::model::{RunConfig, Trainer};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn checkpoint_loads_in_python_with_the_same_tensors() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(python.exists(), "{} missing: run scripts/setup.sh", python.display());
    let mut cfg = RunConfig::default();
    cfg.model = toml::from_str("arch = \"BST:SH:S4D\"\nn_layers = 2\nd_model = 16\nn_heads = 2\nssm_layers = [0]").unwrap();
    cfg.attn.window = 8;
    cfg.train = toml::from_str("steps = 2\nbatch_size = 2\nseq_len = 16\nwarmup_steps = 1").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = cfg.build_model(&vs.root(), 256).unwrap();
    let stream = TokenStream::from_bytes(&b"some text to train on, repeated. ".repeat(10));
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(&lm, &vs, &cfg, &stream).unwrap().run(&stream, Some(dir.path()), |_| ControlFlow::Continue(())).unwrap();

    let script = "import sys\nfrom safetensors.torch import load_file\nd = load_file(sys.argv[1])\nfor k in sorted(d): print(k, list(d[k].shape), float(d[k].double().sum()))";
    let out = Command::new(&python).args(["-c", script]).arg(dir.path().join("model.safetensors")).output().expect("running python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listing.lines().count(), vars.len());
    for (line, (name, t)) in listing.lines().zip(&vars) {
        let mut parts = line.splitn(2, ' ');
        assert_eq!(parts.next(), Some(name.as_str()));
        let rest = parts.next().unwrap();
        let (shape, sum) = rest.rsplit_once(' ').unwrap();
        assert_eq!(shape, format!("{:?}", t.size()), "{name}");
        let expected = t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        assert!((sum.parse::<f64>().unwrap() - expected).abs() < 1e-6 * (1.0 + expected.abs()), "{name}: {sum} vs {expected}");
    }
}
