//! `bst-msrnn`: score texts with a GGUF llama under bounded KV-cache policies (the multi-state RNN
//! study), generate greedily, or time the engine against the eager PyTorch reference.
//!
//! ```text
//! bst-msrnn score --corpus books --contexts 1024,2048 --ks 64,128,256,512 --chunks 8
//! bst-msrnn score --text a.txt b.txt --contexts 1024 --policies window+4,tova
//! bst-msrnn generate --prompt "The capital of France is"
//! bst-msrnn bench --corpus books --context 512 --k 64 --policy tova --batch 4
//! ```

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tch::{Device, Kind, Tensor};

use bst_msrnn::study::{self, Chunk, Kept, Row};
use bst_msrnn::{GgufFile, GgufTokenizer, Llama, Policy};

mod report;

const DEFAULT_MODEL: &str = "data/model/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(name = "bst-msrnn", about = "Transformers as multi-state RNNs: bounded KV-cache policies on a GGUF llama")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Perplexity of text chunks for every (policy, k), with the full-cache topline.
    Score(ScoreArgs),
    /// Greedy continuation of a prompt (full cache).
    Generate(GenerateArgs),
    /// Decode tokens/s of this engine and of scripts/reference/llama_decode.py on the same chunks.
    Bench(BenchArgs),
    /// Re-render the plots of a finished `score` run from its CSVs (no decoding).
    Replot {
        /// The run's results folder.
        #[arg(default_value = "results/msrnn")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// GGUF model file (llama architecture; F32/F16/Q4_1/Q8_0 tensors).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
}

#[derive(Args)]
struct Texts {
    /// Text files to score (UTF-8). Give these or --corpus.
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// A corpus of the workspace (books, latex, code): its held-out test split (bst-data's split rule).
    #[arg(long)]
    corpus: Option<String>,
    /// Folder of the fetched data (for --corpus).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    texts: Texts,
    /// Chunk lengths C (tokens), comma-separated.
    #[arg(long, default_value = "1024", value_delimiter = ',')]
    contexts: Vec<usize>,
    /// Cache budgets k, comma-separated.
    #[arg(long, default_value = "64,128,256,512", value_delimiter = ',')]
    ks: Vec<usize>,
    /// Policies: full, window, window+I, h2o, tova, tova-headwise, tova-keepnew.
    #[arg(long, default_value = "full,window,window+4,h2o,tova", value_delimiter = ',')]
    policies: Vec<String>,
    /// Chunks per context, spread over the texts.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Score targets predicted from more than FROM tokens of context: `k` (the paper's protocol) or a number.
    #[arg(long, default_value = "k")]
    from: String,
    /// Chunks decoded together (each under every setting: batch x settings rows per step).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Chunks in the speed measurement of each setting (decoded alone, cache full).
    #[arg(long, default_value_t = 4)]
    speed_batch: usize,
    /// Steps timed in the speed measurement.
    #[arg(long, default_value_t = 64)]
    speed_steps: usize,
    /// Results folder.
    #[arg(long, default_value = "results/msrnn")]
    out: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    prompt: String,
    /// New tokens to generate.
    #[arg(long, default_value_t = 12)]
    max_new: usize,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    texts: Texts,
    #[arg(long, default_value_t = 512)]
    context: usize,
    #[arg(long, default_value_t = 64)]
    k: usize,
    /// Policies (comma-separated): bst-msrnn decodes them in one batch, the reference one after another.
    #[arg(long, default_value = "tova", value_delimiter = ',')]
    policy: Vec<String>,
    /// Chunks decoded together (the same for both engines).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Python with torch and gguf.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// CSV to append the measurement to.
    #[arg(long, default_value = "results/msrnn/bench.csv")]
    csv: PathBuf,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Score(a) => score(a),
        Cmd::Generate(a) => generate(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Replot { dir } => report::replot(&dir, &report::git_commit(), &report::now()),
    }
}

fn setup(c: &Common) -> Result<(Llama, GgufTokenizer)> {
    if let Some(t) = c.threads {
        if t < 1 {
            bail!("--threads must be at least 1, got {t}");
        }
        tch::set_num_threads(t);
    }
    let g = GgufFile::open(&c.model).with_context(|| format!("--model {}", c.model.display()))?;
    let tok = GgufTokenizer::from_gguf(&g).with_context(|| format!("tokenizer of {}", c.model.display()))?;
    let model = Llama::from_gguf(&g, Device::Cpu).with_context(|| format!("weights of {}", c.model.display()))?;
    Ok((model, tok))
}

fn parse_policies(names: &[String]) -> Result<Vec<Policy>> {
    names.iter().map(|n| n.parse::<Policy>().with_context(|| "--policies".to_string())).collect()
}

/// The documents to score: the files given, or a corpus's test split.
fn documents(t: &Texts, tok: &GgufTokenizer) -> Result<Vec<(String, Vec<i64>)>> {
    let raw: Vec<(String, String)> = match (&t.corpus, t.text.is_empty()) {
        (Some(_), false) => bail!("give --text or --corpus, not both"),
        (None, true) => bail!("nothing to score: give --text FILE... or --corpus books|latex|code"),
        (None, false) => t.text.iter().map(|p| Ok((p.display().to_string(), std::fs::read_to_string(p).with_context(|| format!("--text {}", p.display()))?))).collect::<Result<_>>()?,
        (Some(name), true) => corpus_test_split(name, &t.data_dir)?,
    };
    raw.into_iter().map(|(name, text)| Ok((name, tok.encode(&text)?))).collect()
}

fn corpus_test_split(name: &str, dir: &Path) -> Result<Vec<(String, String)>> {
    let corpus = match name {
        "books" => bst_data::CorpusKind::Books,
        "latex" => bst_data::CorpusKind::Latex,
        "code" => bst_data::CorpusKind::Code,
        other => bail!("--corpus `{other}`: allowed are books, latex, code"),
    };
    let cfg = bst_data::DataConfig { corpus, dir: dir.to_path_buf(), ..Default::default() };
    let c = bst_data::Corpus::load(&cfg).with_context(|| format!("--corpus {name} under --data-dir {} (scripts/setup.sh fetches it)", dir.display()))?;
    Ok(c.test.documents.iter().map(|d| (d.title.clone(), String::from_utf8_lossy(&d.bytes).into_owned())).collect())
}

/// Progress lines on stderr: rewritten in place on a terminal, one line per update otherwise.
struct Progress {
    total: usize,
    done: usize,
    start: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self { total, done: 0, start: Instant::now(), tty: std::io::stderr().is_terminal() }
    }

    fn advance(&mut self, tokens: usize, what: &str) {
        self.done += tokens;
        let el = self.start.elapsed().as_secs_f64();
        let frac = self.done as f64 / self.total.max(1) as f64;
        let eta = if frac > 0.0 { el / frac - el } else { 0.0 };
        let line = format!("[msrnn] {:5.1}% {:>9} tokens decoded | {} | {:.0} tok/s | elapsed {} | eta {}", 100.0 * frac, self.done, what, self.done as f64 / el.max(1e-9), hms(el), hms(eta));
        let mut e = std::io::stderr();
        if self.tty {
            let _ = write!(e, "\r{line:<120}");
        } else {
            let _ = writeln!(e, "{line}");
        }
    }
}

fn hms(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn score(a: ScoreArgs) -> Result<()> {
    let policies = parse_policies(&a.policies)?;
    if a.contexts.is_empty() || a.contexts.iter().any(|&c| c < 2) {
        bail!("--contexts must list lengths of at least 2 tokens, got {:?}", a.contexts);
    }
    for &k in &a.ks {
        for p in &policies {
            p.validate(k).with_context(|| "--ks / --policies".to_string())?;
        }
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some((&c, &k)) = a.contexts.iter().flat_map(|c| a.ks.iter().map(move |k| (c, k))).find(|(c, k)| k >= c) {
        bail!("--ks {k} is not below --contexts {c}: a budget must be smaller than the chunk for anything to be evicted");
    }
    let from = |k: usize| -> Result<usize> {
        match a.from.as_str() {
            "k" => Ok(k),
            n => n.parse().with_context(|| format!("--from `{n}`: allowed are `k` or a number of tokens")),
        }
    };
    let (model, tok) = setup(&a.common)?;
    // Taken before the long run, so that edits made meanwhile do not mark the results dirty.
    let prov = report::Provenance::now();
    let docs = documents(&a.texts, &tok)?;
    let bounded: Vec<Policy> = policies.iter().copied().filter(|p| *p != Policy::Full).collect();
    let has_full = policies.contains(&Policy::Full);
    let decodes_per_context = bounded.len() * a.ks.len() + usize::from(has_full);
    if a.speed_batch == 0 || a.speed_steps == 0 {
        bail!("--speed-batch and --speed-steps must be at least 1");
    }
    let total: usize = a.contexts.iter().map(|c| c * a.chunks * decodes_per_context).sum();
    eprintln!("[msrnn] {} documents, {} tokens; {} contexts x {} chunks x {} decodes = {} tokens to decode", docs.len(), docs.iter().map(|d| d.1.len()).sum::<usize>(), a.contexts.len(), a.chunks, decodes_per_context, total);
    let mut progress = Progress::new(total);
    let mut rows = Vec::new();
    let mut kept_all = Vec::new();
    let mut chunk_lists = Vec::new();
    let mut notes = Vec::new();
    let mut speeds = Vec::new();
    for &c in &a.contexts {
        let chunks = study::pick_chunks(&docs, c, a.chunks).with_context(|| format!("--contexts {c} --chunks {}", a.chunks))?;
        let (r, kept) = score_context(&model, &tok, &chunks, c, &a, &bounded, has_full, &from, &mut progress, &mut notes, &mut speeds)?;
        rows.extend(r);
        kept_all.extend(kept);
        chunk_lists.push((c, chunks));
    }
    eprintln!();
    let total_secs = progress.start.elapsed().as_secs_f64();
    notes.push(format!("wall time of the whole command: {} for {total} decoded tokens", hms(total_secs)));
    report::write(&a.out, &rows, &kept_all, &chunk_lists, &notes, &prov)?;
    eprintln!("[msrnn] wrote {}", a.out.display());
    Ok(())
}

type KeptByK = (usize, usize, Kept);

/// Every (policy, budget) to decode: the unbounded cache once, each bounded policy at each k.
fn settings(bounded: &[Policy], ks: &[usize], has_full: bool) -> Vec<(Policy, Option<usize>)> {
    let full = has_full.then_some((Policy::Full, None));
    full.into_iter().chain(bounded.iter().flat_map(|&p| ks.iter().map(move |&k| (p, Some(k))))).collect()
}

#[allow(clippy::too_many_arguments)]
fn score_context(
    model: &Llama,
    tok: &GgufTokenizer,
    chunks: &[Chunk],
    c: usize,
    a: &ScoreArgs,
    bounded: &[Policy],
    has_full: bool,
    from: &dyn Fn(usize) -> Result<usize>,
    progress: &mut Progress,
    notes: &mut Vec<String>,
    speeds: &mut Vec<(Policy, Option<usize>, f64)>,
) -> Result<(Vec<Row>, Vec<KeptByK>)> {
    let flat: Vec<i64> = chunks.iter().flat_map(|ch| ch.tokens.iter().copied()).collect();
    let tokens = Tensor::from_slice(&flat).view([chunks.len() as i64, c as i64]);
    let seqs: Vec<Vec<i64>> = chunks.iter().map(|ch| ch.tokens.clone()).collect();
    let t0 = Instant::now();
    let topline = tch::no_grad(|| model.logprobs(&tokens));
    eprintln!("[msrnn] C={c}: causal forward of {} chunks (topline) in {:.0} s", chunks.len(), t0.elapsed().as_secs_f64());
    let settings = settings(bounded, &a.ks, has_full);
    let mut kept: Vec<Option<Kept>> = settings.iter().map(|(p, _)| matches!(p, Policy::Tova { head_wise: false, keep_newest: false }).then(Kept::default)).collect();
    let steps: Vec<Vec<i64>> = settings.iter().map(|(_, k)| study::snapshot_steps(c, k.unwrap_or(c))).collect();
    let snap = |t: i64, first: usize, i: usize, cache: &bst_msrnn::KvCache| {
        if let Some(kept) = kept[i].as_mut().filter(|_| steps[i].contains(&t)) {
            for (l, layer) in cache.layers.iter().enumerate() {
                let pos = layer.positions();
                let n = pos.size()[0] as usize;
                kept.add(tok, l, t, &pos, &seqs[first..first + n]);
            }
        }
    };
    let t0 = Instant::now();
    let results = study::decode_chunks(model, &tokens, &settings, a.batch, snap, &mut |n, what| progress.advance(n, &format!("C={c} {what}")))?;
    let secs = t0.elapsed().as_secs_f64();
    notes.push(format!("C={c}: {} chunks under {} settings decoded together (batches of {} chunks) in {}, {:.0} tokens/s over all rows", chunks.len(), settings.len(), a.batch, hms(secs), (chunks.len() * c * settings.len()) as f64 / secs));
    let mut rows = Vec::new();
    for (&(policy, k), r) in settings.iter().zip(&results) {
        if k.is_some_and(|k| r.max_cache_len > k) {
            bail!("internal error: policy {policy} held {} entries with k = {k:?}", r.max_cache_len);
        }
        if policy == Policy::Full {
            let diff = (&r.logprobs - &topline).abs().max().double_value(&[]);
            let note = format!("C={c}: the full cache decoded step by step and the causal forward pass differ by at most {diff:.2e} in any log-probability");
            eprintln!("\n[msrnn] {note}");
            notes.push(note);
        }
        // A bounded cache's speed depends on k, not on the chunk length: measured once.
        let speed = match speeds.iter().find(|(p, kk, _)| *p == policy && *kk == k && k.is_some()) {
            Some(&(_, _, s)) => s,
            None => speed_of(model, &tokens, policy, k, a, c)?,
        };
        speeds.push((policy, k, speed));
        for budget in k.map_or_else(|| a.ks.clone(), |k| vec![k]) {
            let f = from(budget)?;
            let (nll, n) = study::nll_from(&r.logprobs, f);
            let (top, _) = study::nll_from(&topline, f);
            rows.push(Row {
                context: c,
                policy: policy.to_string(),
                k: budget,
                from: f,
                chunks: chunks.len(),
                targets: n,
                ppl: (nll / n as f64).exp(),
                topline_ppl: (top / n as f64).exp(),
                max_cache_len: r.max_cache_len,
                cache_bytes_per_seq: r.cache_bytes_per_seq,
                tokens_per_s: speed,
                batch: a.speed_batch,
            });
        }
    }
    let kept = settings.iter().zip(kept).filter_map(|(&(_, k), s)| Some((c, k?, s?))).collect();
    Ok((rows, kept))
}

/// Steady-state tokens/s of one setting on the first `--speed-batch` chunks.
fn speed_of(model: &Llama, tokens: &Tensor, policy: Policy, k: Option<usize>, a: &ScoreArgs, c: usize) -> Result<f64> {
    let b = (a.speed_batch as i64).min(tokens.size()[0]);
    let timed = a.speed_steps.min(c - k.unwrap_or(0));
    let tps = study::steady_speed(model, &tokens.narrow(0, 0, b), policy, k, timed)?;
    eprintln!("[msrnn] C={c} speed {policy} k={}: {tps:.1} tokens/s (batch {b}, {timed} steps with the cache full)", k.map_or("all".into(), |k| k.to_string()));
    Ok(tps)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (model, tok) = setup(&a.common)?;
    let mut ids = tok.encode(&a.prompt)?;
    if ids.is_empty() {
        bail!("--prompt is empty");
    }
    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(Policy::Full, None);
    let mut logits = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for (t, &id) in ids.iter().enumerate() {
        logits = model.step(&Tensor::from_slice(&[id]), t as i64, &mut cache);
    }
    for _ in 0..a.max_new {
        let next = logits.argmax(-1, false).int64_value(&[0]);
        ids.push(next);
        if Some(next) == tok.eos {
            break;
        }
        logits = model.step(&Tensor::from_slice(&[next]), ids.len() as i64 - 1, &mut cache);
    }
    println!("{}", tok.decode(&ids)?);
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let policies = parse_policies(&a.policy).context("--policy")?;
    for p in &policies {
        p.validate(a.k).context("--k")?;
    }
    if a.k >= a.context {
        bail!("--k {} must be below --context {}", a.k, a.context);
    }
    let (model, tok) = setup(&a.common)?;
    let docs = documents(&a.texts, &tok)?;
    let chunks = study::pick_chunks(&docs, a.context, a.batch).with_context(|| format!("--context {} --batch {}", a.context, a.batch))?;
    let rows: Vec<Vec<i64>> = chunks.iter().map(|c| c.tokens.clone()).collect();
    let tokens = Tensor::from_slice(&rows.concat()).view([a.batch as i64, a.context as i64]);
    let settings: Vec<(Policy, Option<usize>)> = policies.iter().map(|&p| (p, Some(a.k))).collect();
    let t0 = Instant::now();
    let ours = bst_msrnn::decode_settings(&model, &tokens, &settings, |_, _| {})?;
    let ours_s = t0.elapsed().as_secs_f64();
    let (py_s, theirs) = run_reference(&a, &rows, &policies)?;
    let diff = ours.iter().zip(&theirs).map(|(o, t)| (&o.logprobs - t).abs().max().double_value(&[])).fold(0.0, f64::max);
    let n = (a.batch * a.context * policies.len()) as f64;
    let (ours_tps, py_tps) = (n / ours_s, n / py_s);
    let names = a.policy.join(",");
    let threads = tch::get_num_threads();
    println!("policies {names} k {} batch {} context {} threads {threads}: bst-msrnn {ours_tps:.1} tok/s, PyTorch eager {py_tps:.1} tok/s, ratio {:.2}x; max |logprob difference| {diff:.2e}", a.k, a.batch, a.context, ours_tps / py_tps);
    report::append_bench(&a.csv, &report::BenchRow { policies: names, k: a.k, batch: a.batch, context: a.context, threads, ours_tokens_per_s: ours_tps, pytorch_tokens_per_s: py_tps, ratio: ours_tps / py_tps, max_abs_logprob_diff: diff, date: report::now(), commit: report::git_commit() })
}

/// Runs scripts/reference/llama_decode.py on the same chunks with the same threads, one policy
/// after another (its decode loop); returns its decode seconds (summed) and log-probabilities.
fn run_reference(a: &BenchArgs, rows: &[Vec<i64>], policies: &[Policy]) -> Result<(f64, Vec<Tensor>)> {
    let dir = tempfile_dir()?;
    let (tok_path, out_path) = (dir.join("tokens.json"), dir.join("logprobs.json"));
    std::fs::write(&tok_path, serde_json::to_string(rows)?)?;
    let names: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
    let py = std::process::Command::new(&a.python)
        .args(["scripts/reference/llama_decode.py", "--model"])
        .arg(&a.common.model)
        .arg("--tokens")
        .arg(&tok_path)
        .args(["--policy", &names.join(","), "--k", &a.k.to_string(), "--threads", &tch::get_num_threads().to_string(), "--out"])
        .arg(&out_path)
        .output()
        .with_context(|| format!("--python {}", a.python.display()))?;
    if !py.status.success() {
        bail!("the PyTorch reference failed: {}", String::from_utf8_lossy(&py.stderr));
    }
    let mut secs = 0.0;
    for line in String::from_utf8_lossy(&py.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("reading the reference's line {line:?}"))?;
        secs += v["seconds"].as_f64().context("the reference's line has no seconds")?;
    }
    let mut all: std::collections::HashMap<String, Vec<Vec<f32>>> = serde_json::from_str(&std::fs::read_to_string(&out_path)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    let lps = names
        .iter()
        .map(|n| {
            let lp = all.remove(n).with_context(|| format!("the reference's output lacks {n}"))?;
            Ok(Tensor::from_slice(&lp.concat()).view([rows.len() as i64, -1]))
        })
        .collect::<Result<_>>()?;
    Ok((secs, lps))
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bst-msrnn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
