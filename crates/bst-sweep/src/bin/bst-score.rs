//! `bst-score <run folder> (--text TEXT | --file FILE)`: per-token log-probabilities of a text
//! under a trained run (its `checkpoint/` and `config.toml`, as bst-sweep writes them).
//! Prints `position, byte, log-probability (nats), bits` per predicted token, then totals.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bst_model::{checkpoint, DeviceChoice, RunConfig};
use clap::Parser;
use tch::nn;

#[derive(Debug, Parser)]
#[command(version, about = "Per-token log-probabilities of a text under a trained bst run")]
struct Args {
    /// Run folder: results/<sweep>/runs/<run id>.
    run: PathBuf,
    /// Text to score.
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// File to score (bytes).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bytes = match (&args.text, &args.file) {
        (Some(t), None) => t.as_bytes().to_vec(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        _ => bail!("give the text with --text or --file"),
    };
    let config_path = args.run.join("config.toml");
    let cfg: RunConfig = toml::from_str(&std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    let saved = args.run.join("tokenizer.json");
    let tokenizer: Box<dyn bst_data::Tokenizer> = if saved.exists() {
        Box::new(bst_data::BpeTokenizer::load(&saved)?)
    } else {
        bst_data::prepare::load_tokenizer(&cfg.data).with_context(|| format!("loading the {} tokenizer of {}", cfg.data.tokenizer_name(), config_path.display()))?
    };
    let device = args.device.resolve()?;
    let vs = nn::VarStore::new(device);
    let model = cfg.build_model(&vs.root(), tokenizer.vocab_size())?;
    let ckpt = args.run.join("checkpoint");
    checkpoint::verify(&ckpt)?;
    checkpoint::load_weights(&ckpt.join("model.safetensors"), &vs)?;
    let ids = tokenizer.encode(&bytes);
    if ids.len() < 2 {
        bail!("the text needs at least two tokens");
    }
    let scores = model.score_with_precision(&ids, device, cfg.train.precision)?;
    println!("position\ttoken\tlogprob_nats\tbits");
    for (i, s) in scores.iter().enumerate() {
        let token = String::from_utf8_lossy(&tokenizer.decode(&ids[i + 1..i + 2])).escape_debug().to_string();
        println!("{}\t{token}\t{s:.4}\t{:.3}", i + 1, -s / std::f64::consts::LN_2);
    }
    let bits: f64 = scores.iter().map(|s| -s / std::f64::consts::LN_2).sum();
    let predicted_bytes = tokenizer.decode(&ids[1..]).len();
    println!("# {} tokens, {bits:.1} bits, {:.3} bits per byte ({})", scores.len(), bits / predicted_bytes as f64, cfg.model.arch);
    Ok(())
}
