//! Data cards: a generated markdown description of a prepared corpus (sources, licences,
//! documents, bytes and tokens per split, cleaning), written next to its shards.

use std::fmt::Write;

use serde::Deserialize;

use crate::prepare::DataStats;
use crate::{Corpus, CORPUS_SPLIT_RULE};

/// One `[[source]]` of the SOURCES.toml the fetch script writes.
#[derive(Debug, Deserialize)]
struct Source {
    package: String,
    version: String,
    licence: String,
    content: String,
}

#[derive(Debug, Deserialize, Default)]
struct Sources {
    #[serde(default)]
    source: Vec<Source>,
}

/// The card of a corpus prepared with one tokenizer.
pub fn render(stats: &DataStats, sources_toml: &str, corpus: &Corpus) -> String {
    let mut md = String::new();
    let kind = stats.corpus;
    let _ = writeln!(md, "# Data card: `{kind}` corpus, `{}` tokenizer\n", stats.tokenizer);
    let _ = writeln!(md, "A stand-in for the paper's **{}** data, built from registry packages by `scripts/fetch_data.sh`; not the paper's data, so numbers are not comparable with its tables.\n", kind.stands_in_for());
    let _ = writeln!(md, "## Sources\n\n| package | version | licence | content |\n|---|---|---|---|");
    match toml::from_str::<Sources>(sources_toml) {
        Ok(s) if !s.source.is_empty() => {
            for s in s.source {
                let _ = writeln!(md, "| {} | {} | {} | {} |", s.package, s.version, s.licence, s.content);
            }
        }
        _ => md.push_str("| (SOURCES.toml missing or unreadable) | | | |\n"),
    }
    let _ = writeln!(md, "\nFiles: `{}/MANIFEST.sha256` (sha256 {}).\n", corpus.root.display(), stats.manifest_sha256);
    let c = &stats.cleaning;
    let _ = writeln!(md, "## Cleaning\n");
    let _ = writeln!(md, "- {} documents read; every split holds whole documents ({CORPUS_SPLIT_RULE}).", c.read);
    let _ = writeln!(md, "- {} documents were not UTF-8 and were decoded as Latin-1, then stored as UTF-8.", c.latin1_transcoded);
    let _ = writeln!(md, "- Dropped: {} byte-identical duplicates, {} empty, {} over the size cap{}.", c.duplicates_dropped, c.empty_dropped, c.oversized_dropped, if matches!(kind, crate::CorpusKind::Code | crate::CorpusKind::CodeGo) { format!(" of {} KiB (generated tables)", crate::corpus::CODE_MAX_FILE_BYTES / 1024) } else { String::new() });
    if kind == crate::CorpusKind::Books {
        md.push_str("- big.txt is cut into its four books at the Project Gutenberg `*** START OF` / `*** END OF` markers; the licence text around them is dropped.\n");
    }
    let _ = writeln!(md, "\n## Splits\n\n| split | documents | bytes | tokens | bytes/token |\n|---|---:|---:|---:|---:|");
    for s in &stats.splits {
        let _ = writeln!(md, "| {} | {} | {} | {} | {:.3} |", s.split, s.documents, s.bytes, s.tokens, s.bytes as f64 / s.tokens.max(1) as f64);
    }
    let _ = writeln!(md, "\nTokenizer: `{}`, {} tokens{}.", stats.tokenizer, stats.vocab_size, if stats.tokenizer == "byte" { "" } else { ", byte-level BPE trained on the train split only (Hugging Face `tokenizers`)" });
    let _ = writeln!(md, "Byte unigram baselines: entropy of train {:.3} bits/byte; unigram model on test {:.3} bits/byte.\n", stats.unigram_entropy_bpb, stats.unigram_test_bpb);
    let _ = writeln!(md, "## Documents per split (first 10)\n");
    for split in [&corpus.valid, &corpus.test] {
        let titles: Vec<&str> = split.documents.iter().take(10).map(|d| d.title.as_str()).collect();
        let more = split.documents.len().saturating_sub(10);
        let _ = writeln!(md, "- {}: {}{}", split.name, titles.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() });
    }
    md
}
