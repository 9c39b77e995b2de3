//! LRA Image stand-in: Fashion-MNIST (Xiao et al. 2017) as sequences of 784 grey pixels.
//!
//! LRA classifies CIFAR-10 images flattened to 1024 grey-scale pixels (32×32, one token per
//! 8-bit intensity). No CIFAR package turned up in the registries we can use, so this reads
//! Fashion-MNIST from Debian `dataset-fashion-mnist` instead: 28×28 grey images of 10 clothing
//! classes, stored as gzipped IDX files under `dir/lra/fashion-mnist/`. The 60k training images
//! give train and a seeded `valid_fraction` for validation; the 10k test images are the test set.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;

use super::{capped, invalid, shuffled, stream_rng, Example, LraConfig, LraDataset, LraTask};
use crate::DataError;

/// Pixel values 0–255, then the pad id.
pub const VOCAB_SIZE: usize = 257;
pub const PAD: u32 = 256;

/// The four files, as Debian ships them.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("lra").join("fashion-mnist")
}

/// An IDX array of unsigned bytes: its dimensions and its data, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses an (uncompressed) IDX file of `u8` with `ndims` dimensions: magic `00 00 08 ndims`,
/// then each dimension as a big-endian `u32`, then exactly the product of them in bytes.
pub fn parse_idx(bytes: &[u8], ndims: usize, path: &Path) -> Result<IdxArray, DataError> {
    let format = |reason: String| DataError::Format { path: path.to_owned(), reason };
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format(format!("{} bytes, shorter than the {header}-byte IDX header", bytes.len())));
    }
    let expected = [0, 0, 0x08, ndims as u8];
    if bytes[..4] != expected {
        return Err(format(format!(
            "magic {:02x?}, expected {expected:02x?} (unsigned bytes, {ndims} dimensions)",
            &bytes[..4]
        )));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let size: usize = dims.iter().product();
    if bytes.len() - header != size {
        return Err(format(format!(
            "dimensions {dims:?} need {size} bytes of data, the file has {}",
            bytes.len() - header
        )));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Reads and gunzips one IDX file.
pub fn read_idx_gz(path: &Path, ndims: usize) -> Result<IdxArray, DataError> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_owned() },
        _ => DataError::Io { path: path.to_owned(), source },
    })?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::Format { path: path.to_owned(), reason: format!("not a gzip file: {e}") })?;
    parse_idx(&bytes, ndims, path)
}

/// Images `[n, rows, cols]` and labels `[n]` as examples of `rows * cols` pixel tokens.
pub fn examples(images: &IdxArray, labels: &IdxArray, path: &Path) -> Result<Vec<Example>, DataError> {
    let format = |reason: String| DataError::Format { path: path.to_owned(), reason };
    if images.dims[0] != labels.dims[0] {
        return Err(format(format!("{} images but {} labels", images.dims[0], labels.dims[0])));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l >= 10) {
        return Err(format(format!("label {bad} outside 0..10")));
    }
    let pixels = images.dims[1] * images.dims[2];
    let to_example = |(image, &label): (&[u8], &u8)| Example {
        tokens: image.iter().map(|&p| u32::from(p)).collect(),
        pair: None,
        label: u32::from(label),
    };
    Ok(images.data.chunks(pixels).zip(&labels.data).map(to_example).collect())
}

fn read_split(dir: &Path, images: &str, labels: &str) -> Result<(Vec<Example>, usize), DataError> {
    let images_path = dir.join(images);
    let images = read_idx_gz(&images_path, 3)?;
    let labels = read_idx_gz(&dir.join(labels), 1)?;
    let pixels = images.dims[1] * images.dims[2];
    Ok((examples(&images, &labels, &images_path)?, pixels))
}

pub(crate) fn dataset(cfg: &LraConfig) -> Result<LraDataset, DataError> {
    let dir = data_dir(&cfg.dir);
    let (train_all, pixels) = read_split(&dir, FILES[0], FILES[1])?;
    let (test, _) = read_split(&dir, FILES[2], FILES[3])?;
    let seq_len = cfg.seq_len.unwrap_or(pixels);
    if seq_len < pixels {
        return Err(invalid(
            "lra.seq_len",
            seq_len,
            format!("an image is {pixels} pixels; cutting images is not supported"),
        ));
    }
    // valid is a seeded sample of the training images
    let mut order: Vec<usize> = (0..train_all.len()).collect();
    order.shuffle(&mut stream_rng(cfg.seed, 100));
    let n_valid = (train_all.len() as f64 * cfg.valid_fraction).round() as usize;
    let mut slots: Vec<Option<Example>> = train_all.into_iter().map(Some).collect();
    let mut take = |ids: &[usize]| ids.iter().map(|&i| slots[i].take().expect("index used twice")).collect::<Vec<_>>();
    let (valid, train) = (take(&order[..n_valid]), take(&order[n_valid..]));
    let [n_train, n_valid, n_test] = cfg.split_sizes();
    Ok(LraDataset {
        task: LraTask::Image,
        vocab_size: VOCAB_SIZE,
        pad_id: PAD,
        num_classes: 10,
        seq_len,
        train: capped(train, n_train),
        valid: capped(valid, n_valid),
        test: capped(shuffled(test, cfg.seed, 2), n_test),
        description: format!(
            "Fashion-MNIST, a stand-in for LRA's CIFAR-10 (no CIFAR package in the registries): {pixels} grey pixels per image, valid = a seeded {:.0}% of the 60k training images, test = the 10k test images",
            100.0 * cfg.valid_fraction
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
        bytes.extend(data);
        bytes
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn parses_idx_headers_and_rejects_bad_ones() {
        let p = Path::new("x.idx");
        let data: Vec<u8> = (0..12).collect();
        let arr = parse_idx(&idx(&[3, 2, 2], &data), 3, p).unwrap();
        assert_eq!(arr.dims, vec![3, 2, 2]);
        assert_eq!(arr.data, data);
        assert!(parse_idx(&idx(&[3, 2, 2], &data[..11]), 3, p).unwrap_err().to_string().contains("need 12 bytes"));
        assert!(parse_idx(&idx(&[12], &data), 3, p).unwrap_err().to_string().contains("magic"));
        let mut bad = idx(&[3, 2, 2], &data);
        bad[2] = 0x0d; // floats
        assert!(parse_idx(&bad, 3, p).unwrap_err().to_string().contains("x.idx"));
        assert!(parse_idx(&[0, 0], 1, p).is_err());
    }

    #[test]
    fn loads_a_tiny_gzipped_dataset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = data_dir(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        let (n_train, n_test, side) = (20u32, 4u32, 3u32);
        let pixels = |n: u32| (0..n * side * side).map(|i| (i % 251) as u8).collect::<Vec<_>>();
        let labels = |n: u32| (0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>();
        for (name, bytes) in FILES.iter().zip([
            idx(&[n_train, side, side], &pixels(n_train)),
            idx(&[n_train], &labels(n_train)),
            idx(&[n_test, side, side], &pixels(n_test)),
            idx(&[n_test], &labels(n_test)),
        ]) {
            std::fs::write(dir.join(name), gz(&bytes)).unwrap();
        }
        let cfg = LraConfig {
            task: LraTask::Image,
            dir: tmp.path().to_owned(),
            valid_fraction: 0.25,
            ..LraConfig::default()
        };
        let ds = LraDataset::load(&cfg).unwrap();
        assert_eq!((ds.train.len(), ds.valid.len(), ds.test.len()), (15, 5, 4));
        assert_eq!(ds.seq_len, 9);
        // image i has pixels 9i..9i+9 and label i % 10, so each example identifies itself
        for e in ds.train.iter().chain(&ds.valid) {
            let i = e.tokens[0] / 9;
            assert_eq!(e.tokens, (9 * i..9 * i + 9).collect::<Vec<_>>());
            assert_eq!(e.label, i % 10);
        }
        let too_short = LraConfig { seq_len: Some(8), ..cfg.clone() };
        assert!(LraDataset::load(&too_short).is_err());
        std::fs::remove_file(dir.join(FILES[3])).unwrap();
        let err = LraDataset::load(&cfg).unwrap_err().to_string();
        assert!(err.contains("t10k-labels-idx1-ubyte.gz"), "{err}");
    }

    /// Real data: `cargo test -p bst-data -- --ignored real_fashion_mnist --nocapture` after the fetch.
    #[test]
    #[ignore]
    fn real_fashion_mnist() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
        let ds = LraDataset::load(&LraConfig { task: LraTask::Image, dir, ..LraConfig::default() }).unwrap();
        println!("{}", ds.summary());
        assert_eq!((ds.train.len(), ds.valid.len(), ds.test.len()), (54_000, 6_000, 10_000));
        assert!(ds.train.iter().all(|e| e.tokens.len() == 784));
    }
}
