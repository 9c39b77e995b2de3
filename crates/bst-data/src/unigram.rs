//! Unigram statistics: the bits per byte of a model that ignores all context. A language model
//! that has learned anything about sequences must get well below this.

/// Byte histogram of `data`.
fn histogram(data: &[u8]) -> [u64; 256] {
    let mut counts = [0u64; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    counts
}

/// Entropy of the byte distribution of `data`, in bits per byte.
pub fn entropy_bits(data: &[u8]) -> f64 {
    let counts = histogram(data);
    let n = data.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| {
        let p = c as f64 / n;
        -p * p.log2()
    }).sum()
}

/// Cross-entropy (bits per byte) of `test` under the add-one-smoothed byte distribution of
/// `train`: the test score of the best context-free model fitted on the training split.
pub fn cross_entropy_bits(train: &[u8], test: &[u8]) -> f64 {
    let counts = histogram(train);
    let total = train.len() as f64 + 256.0;
    let test_counts = histogram(test);
    let bits: f64 = (0..256)
        .filter(|&b| test_counts[b] > 0)
        .map(|b| -(test_counts[b] as f64) * ((counts[b] as f64 + 1.0) / total).log2())
        .sum();
    bits / test.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_known_distributions() {
        assert_eq!(entropy_bits(b"aaaa"), 0.0);
        assert!((entropy_bits(b"abab") - 1.0).abs() < 1e-12);
        assert!((entropy_bits(b"abcd") - 2.0).abs() < 1e-12);
        let all: Vec<u8> = (0..=255u8).collect();
        assert!((entropy_bits(&all) - 8.0).abs() < 1e-12);
    }

    #[test]
    fn cross_entropy_is_at_least_entropy_and_penalises_mismatch() {
        let train = b"the cat sat on the mat".repeat(5000);
        let h = entropy_bits(&train);
        let same = cross_entropy_bits(&train, &train);
        assert!(same >= h && same < h + 0.2, "h={h} same={same}");
        assert!(cross_entropy_bits(&train, b"zzzzqqqq") > 8.0);
    }
}
