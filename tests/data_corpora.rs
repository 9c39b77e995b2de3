//! The three real corpora as scripts/fetch_data.sh leaves them in data/: every split holds whole
//! documents, no document is in two splits, the split is the same on every load, and the token
//! shards decode back to exactly the split's text.

use std::collections::HashSet;
use std::path::PathBuf;

use bst::data::{Corpus, CorpusKind, DataConfig, PreparedData, SplitName};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[test]
fn real_corpora_split_by_document_and_shards_decode_to_the_text() {
    for corpus in CorpusKind::REAL {
        let cfg = DataConfig { corpus, dir: data_dir(), ..Default::default() };
        let a = Corpus::load(&cfg).unwrap_or_else(|e| panic!("{corpus}: {e} (run scripts/setup.sh first)"));
        let b = Corpus::load(&cfg).unwrap();
        let mut seen = HashSet::new();
        for name in SplitName::ALL {
            let titles: Vec<&String> = a.split(name).documents.iter().map(|d| &d.title).collect();
            let again: Vec<&String> = b.split(name).documents.iter().map(|d| &d.title).collect();
            assert_eq!(titles, again, "{corpus} {name}: the split must not change between loads");
            assert!(!titles.is_empty(), "{corpus} {name} is empty");
            for t in titles {
                assert!(seen.insert(t.clone()), "{corpus}: document {t} is in two splits");
            }
        }
        let total: usize = SplitName::ALL.iter().map(|&n| a.split(n).bytes()).sum();
        for (name, share) in [(SplitName::Valid, cfg.valid_fraction), (SplitName::Test, cfg.test_fraction)] {
            let frac = a.split(name).bytes() as f64 / total as f64;
            assert!((frac - share).abs() < 0.02, "{corpus} {name} holds {frac:.3} of the bytes, wanted about {share}");
        }

        let prepared = PreparedData::load(&cfg).unwrap();
        let test = prepared.stream(SplitName::Test);
        let ids: Vec<i64> = (0..test.len()).map(|i| i64::from(test.get(i))).collect();
        assert_eq!(prepared.tokenizer.decode(&ids), a.test.concatenated(), "{corpus}: the test shard must decode to the test split");
        assert!(prepared.cache_dir.join("CARD.md").exists());
    }
}
