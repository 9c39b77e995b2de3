//! Checks on the real model, SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by scripts/setup.sh):
//! dequantisation and tokenization against independent Python code, greedy generation, the full
//! cache against the causal forward pass, every policy against the eager PyTorch reference,
//! batching, and a sane perplexity on a book.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use bst_msrnn::{decode, GgufFile, GgufTokenizer, Llama, Policy};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path() -> PathBuf {
    let p = root().join("data/model/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (or scripts/fetch_data.sh data model) first", p.display());
    p
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (it installs torch, gguf and regex into .venv)", p.display());
    p
}

struct Loaded {
    model: Llama,
    tok: GgufTokenizer,
}

/// The model is loaded once per test binary; tests take turns (it is not `Sync`).
fn loaded() -> std::sync::MutexGuard<'static, Loaded> {
    static L: OnceLock<Mutex<Loaded>> = OnceLock::new();
    L.get_or_init(|| {
        // One thread, like the reference: two spinning workers crawl when the cores are shared.
        tch::set_num_threads(1);
        let g = GgufFile::open(model_path()).expect("open the GGUF");
        let tok = GgufTokenizer::from_gguf(&g).expect("tokenizer");
        let model = Llama::from_gguf(&g, Device::Cpu).expect("weights");
        Mutex::new(Loaded { model, tok })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn run_python(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(args)
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start .venv/bin/python");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python {args:?} failed (scripts/setup.sh installs gguf and regex): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const TEXT: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair.";

#[test]
fn every_dequantised_tensor_equals_the_python_gguf_package() {
    let g = GgufFile::open(model_path()).unwrap();
    let listing = run_python(&["scripts/reference/gguf_reference.py", "digests", model_path().to_str().unwrap()], None);
    let mut checked = 0;
    let mut mismatched = Vec::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (name, shape, digest) = (f[0], f[1], f[2]);
        let t = g.tensor(name).unwrap();
        let ours_shape = t.size().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let values: Vec<f32> = Vec::try_from(t.view([-1])).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ours = format!("{:x}", Sha256::digest(&bytes));
        if ours_shape != shape || ours != digest {
            mismatched.push(format!("{name}: ours {ours_shape} {ours}, gguf {shape} {digest}"));
        }
        checked += 1;
    }
    assert_eq!(checked, g.tensors.len(), "python listed {checked} tensors, the file has {}", g.tensors.len());
    assert!(mismatched.is_empty(), "{} tensors differ:\n{}", mismatched.len(), mismatched.join("\n"));
}

#[test]
fn tokenizer_matches_an_independent_python_bpe_and_round_trips() {
    let l = loaded();
    let mut texts: Vec<String> = [
        TEXT,
        "The capital of France is",
        "In 1984, 12 cats ate 3.5 pies!\n\nHello  world\t\ttabs   and spaces ",
        "Don't stop: we'll see they're here, I'm sure it's John's. Émile naïve café — “quotes” ½ ² 東京 😀",
        "fn main() { let x = vec![1, 2, 3]; println!(\"{x:?}\"); }\n    indented\r\nCRLF",
        "<|im_start|>user\nHi<|im_end|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(book) = std::fs::read_to_string(root().join("data/books/gutenberg_big.txt")) {
        texts.push(book.chars().skip(200_000).take(20_000).collect());
    }
    let want: Vec<Vec<i64>> = serde_json::from_str(&run_python(&["scripts/reference/gguf_reference.py", "tokenize", model_path().to_str().unwrap()], Some(&serde_json::to_string(&texts).unwrap()))).unwrap();
    for (text, want) in texts.iter().zip(&want) {
        let ours = l.tok.encode(text).unwrap();
        assert_eq!(l.tok.decode(&ours).unwrap(), *text, "decode(encode(x)) != x");
        if text.contains("<|im_start|>") {
            // Special tokens are matched as such by `tokenizers`; the Python BPE has no notion of them.
            assert_eq!(ours[0], 1, "<|im_start|> is token 1");
            continue;
        }
        assert_eq!(&ours, want, "token ids differ for {:?}", &text[..text.len().min(60)]);
    }
    assert_eq!(l.tok.encode("The capital of France is").unwrap(), vec![504, 3575, 282, 4649, 314]);
}

#[test]
fn greedy_continuation_of_the_capital_of_france_names_paris() {
    let l = loaded();
    let _g = tch::no_grad_guard();
    let mut ids = l.tok.encode("The capital of France is").unwrap();
    let mut cache = l.model.new_cache(Policy::Full, None);
    let mut logits = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for (t, &id) in ids.iter().enumerate() {
        logits = l.model.step(&Tensor::from_slice(&[id]), t as i64, &mut cache);
    }
    for _ in 0..8 {
        let next = logits.argmax(-1, false).int64_value(&[0]);
        ids.push(next);
        logits = l.model.step(&Tensor::from_slice(&[next]), ids.len() as i64 - 1, &mut cache);
    }
    let text = l.tok.decode(&ids).unwrap();
    assert!(text.contains("Paris"), "greedy continuation: {text:?}");
}

fn text_tokens(l: &Loaded, n: usize) -> Vec<i64> {
    let mut ids = l.tok.encode(TEXT).unwrap();
    ids.truncate(n);
    assert_eq!(ids.len(), n, "the test text is too short");
    ids
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn with_k_at_least_the_length_every_policy_equals_the_full_model() {
    let l = loaded();
    let toks = Tensor::from_slice(&text_tokens(&l, 56)).view([1, -1]);
    let full = tch::no_grad(|| l.model.logprobs(&toks));
    for p in ["full", "window", "window+4", "h2o", "tova", "tova-headwise", "tova-keepnew"] {
        let p: Policy = p.parse().unwrap();
        let out = decode(&l.model, &toks, p, Some(56), |_, _| {}).unwrap();
        let d = max_diff(&out.logprobs, &full);
        assert!(d < 1e-4, "{p}: max |logprob difference| {d}");
    }
}

#[test]
fn every_policy_matches_the_eager_pytorch_reference_and_batching_changes_nothing() {
    let l = loaded();
    let ids = text_tokens(&l, 52);
    let rows = vec![ids[..40].to_vec(), ids[12..].to_vec()];
    let toks = Tensor::from_slice(&rows.concat()).view([2, 40]);
    let dir = tempfile::tempdir().unwrap();
    let (tok_file, out_file) = (dir.path().join("tokens.json"), dir.path().join("out.json"));
    std::fs::write(&tok_file, serde_json::to_string(&rows).unwrap()).unwrap();
    let policies = ["full", "window", "window+4", "h2o", "tova", "tova-headwise", "tova-keepnew"];
    // One thread: on a shared machine, libtorch's spinning worker threads slow a small batch down a lot.
    let (model, tokens, out) = (model_path(), tok_file.to_str().unwrap().to_string(), out_file.to_str().unwrap().to_string());
    run_python(&["scripts/reference/llama_decode.py", "--model", model.to_str().unwrap(), "--tokens", &tokens, "--policy", &policies.join(","), "--k", "10", "--threads", "1", "--out", &out], None);
    let theirs: std::collections::HashMap<String, Vec<Vec<f32>>> = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    for name in policies {
        let p: Policy = name.parse().unwrap();
        let theirs = Tensor::from_slice(&theirs[name].concat()).view([2, 39]);
        let ours = decode(&l.model, &toks, p, Some(10), |_, _| {}).unwrap();
        assert!(ours.max_cache_len <= 10 || p == Policy::Full);
        let d = max_diff(&ours.logprobs, &theirs);
        eprintln!("{name} k = 10: max |logprob difference| against PyTorch {d:.2e}");
        assert!(d < 2e-4, "{name} k = 10: max |logprob difference| against PyTorch {d}");
        // Matrix products of 1 and 2 rows round differently (float noise, about 1e-5 here).
        for i in 0..2 {
            let alone = decode(&l.model, &toks.narrow(0, i, 1), p, Some(10), |_, _| {}).unwrap();
            let d = max_diff(&alone.logprobs, &ours.logprobs.narrow(0, i, 1));
            assert!(d < 1e-4, "{name}: sequence {i} alone vs in the batch: {d}");
        }
    }
}

#[test]
fn full_cache_perplexity_of_a_book_is_sane_for_a_135m_model() {
    let l = loaded();
    let path = root().join("data/books/gutenberg_big.txt");
    let book = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    let text: String = book.chars().skip(300_000).take(8_000).collect();
    let mut ids = l.tok.encode(&text).unwrap();
    ids.truncate(1024);
    let toks = Tensor::from_slice(&ids).view([1, -1]);
    let lp = tch::no_grad(|| l.model.logprobs(&toks));
    let ppl = (-lp.mean(Kind::Double).double_value(&[])).exp();
    eprintln!("full-cache perplexity of 1024 tokens of gutenberg_big.txt: {ppl:.2}");
    assert!((4.0..60.0).contains(&ppl), "perplexity {ppl}");
}
