//! `bst-prepare [--corpus books|latex|code|code-go|all] [--tokenizer byte|bpe] [--vocab-size N]`:
//! prepares corpora ahead of a sweep (trains the BPE on the training split, writes the token
//! shards and the data card under `<data dir>/cache/`) and prints each data card. Sweeps do the
//! same on demand; this only lets the (minutes-long, for a 32K BPE) preparation happen first.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bst_data::{CorpusKind, DataConfig, PreparedData, TokenizerKind};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CorpusArg {
    Books,
    Latex,
    Code,
    CodeGo,
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TokenizerArg {
    Byte,
    Bpe,
}

#[derive(Debug, Parser)]
#[command(version, about = "Prepare corpora (tokenizer, token shards, data card) before a sweep")]
struct Args {
    #[arg(long, value_enum, default_value = "all")]
    corpus: CorpusArg,
    #[arg(long, value_enum, default_value = "byte")]
    tokenizer: TokenizerArg,
    /// BPE vocabulary size (default 4096; the paper's is 32768).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Folder scripts/fetch_data.sh wrote to.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Print only the card paths, not the cards.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let corpora = match args.corpus {
        CorpusArg::Books => vec![CorpusKind::Books],
        CorpusArg::Latex => vec![CorpusKind::Latex],
        CorpusArg::Code => vec![CorpusKind::Code],
        CorpusArg::CodeGo => vec![CorpusKind::CodeGo],
        CorpusArg::All => CorpusKind::REAL.to_vec(),
    };
    let tokenizer = match args.tokenizer {
        TokenizerArg::Byte => TokenizerKind::Byte,
        TokenizerArg::Bpe => TokenizerKind::Bpe,
    };
    for corpus in corpora {
        let cfg = DataConfig { corpus, tokenizer, vocab_size: args.vocab_size, dir: args.data_dir.clone(), ..Default::default() };
        let t0 = Instant::now();
        let data = PreparedData::load(&cfg).with_context(|| format!("preparing the {corpus} corpus with the {} tokenizer", cfg.tokenizer_name()))?;
        let card = data.cache_dir.join("CARD.md");
        let what = if data.rebuilt.is_empty() { "cached".to_string() } else { format!("built ({})", data.rebuilt.join("; ")) };
        eprintln!("[prepare] {corpus} / {}: {what} in {:.1} s -> {}", cfg.tokenizer_name(), t0.elapsed().as_secs_f64(), card.display());
        if !args.quiet {
            println!("{}", std::fs::read_to_string(&card).with_context(|| format!("reading {}", card.display()))?);
        }
    }
    Ok(())
}
