//! Pathfinder (Linsley et al. 2018; LRA's Pathfinder-32): is there a path between the two
//! markers? Generated here as grey images flattened row-major, one token per pixel.
//!
//! Every image holds `paths` smooth random curves (each step turns by at most `max_turn`
//! radians) of `path_len` pixels. A positive image marks both ends of one curve; a negative
//! image marks one end of each of two curves. Either way the image has the same number of
//! curves, so the amount of ink does not give the label away. Markers are 3×3 squares of
//! intensity [`MARKER`], curves are [`PATH`], background 0. No two curves (markers included)
//! are 8-adjacent, so "the markers are connected" is exactly "one 8-connected component of
//! non-zero pixels holds both markers", which the tests check by flood fill. Labels are
//! balanced exactly (every other example is positive, then the split is shuffled).
//!
//! Differences from LRA's Pathfinder: LRA draws dashed (gapped) snakes with anti-aliased
//! strokes and circular markers, and counts dashes as connected by continuity; here curves are
//! solid single-pixel 8-connected strokes and the markers are squares with their own
//! intensity. Marker distance is not matched between the classes (positives' markers are at
//! most `path_len` apart), as in LRA.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{invalid, shuffled, stream_rng, Example, LraConfig, LraDataset, LraTask};
use crate::DataError;

/// Pixel values 0–255, then the pad id (shared with the Image task).
pub const VOCAB_SIZE: usize = 257;
pub const PAD: u32 = 256;
/// Intensity of curve pixels.
pub const PATH: u8 = 128;
/// Intensity of marker pixels.
pub const MARKER: u8 = 255;

/// Pathfinder generator settings (the `[lra.pathfinder]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathfinderConfig {
    /// Image side in pixels (LRA: 32).
    pub size: usize,
    /// Curves per image, the marked ones included (at least 2).
    pub paths: usize,
    /// Pixels per curve.
    pub path_len: usize,
    /// Largest turn per one-pixel step, in radians (smaller is straighter).
    pub max_turn: f64,
}

impl Default for PathfinderConfig {
    fn default() -> Self {
        Self { size: 32, paths: 4, path_len: 20, max_turn: 0.4 }
    }
}

impl PathfinderConfig {
    pub fn pixels(&self) -> usize {
        self.size * self.size
    }

    pub fn validate(&self, seq_len: usize) -> Result<(), DataError> {
        if !(8..=256).contains(&self.size) {
            return Err(invalid("lra.pathfinder.size", self.size, "must be in 8..=256"));
        }
        if self.paths < 2 {
            return Err(invalid(
                "lra.pathfinder.paths",
                self.paths,
                "must be at least 2 (a negative needs two marked curves)",
            ));
        }
        if self.path_len < 6 {
            return Err(invalid(
                "lra.pathfinder.path_len",
                self.path_len,
                "must be at least 6 (its markers must not touch)",
            ));
        }
        // curves and the one-pixel gaps around them must fit with room to spare
        if 3 * self.paths * (self.path_len + 9) > self.pixels() {
            return Err(invalid(
                "lra.pathfinder.paths",
                self.paths,
                format!("{} curves of {} pixels do not fit in {}x{}", self.paths, self.path_len, self.size, self.size),
            ));
        }
        if !(self.max_turn > 0.0 && self.max_turn <= 1.0) {
            return Err(invalid("lra.pathfinder.max_turn", self.max_turn, "must be in (0, 1]"));
        }
        if seq_len < self.pixels() {
            return Err(invalid("lra.seq_len", seq_len, format!("an image is {} pixels", self.pixels())));
        }
        Ok(())
    }
}

type Pixel = (i32, i32);

/// A smooth random curve of `len` distinct, consecutively 8-adjacent pixels inside the image
/// with a one-pixel border (room for the markers), or `None` if it ran out or crossed itself.
fn curve(rng: &mut ChaCha8Rng, cfg: &PathfinderConfig) -> Option<Vec<Pixel>> {
    let hi = cfg.size as f64 - 2.0;
    let (mut x, mut y) = (rng.random_range(1.0..hi), rng.random_range(1.0..hi));
    let mut heading = rng.random_range(0.0..std::f64::consts::TAU);
    let round = |x: f64, y: f64| (x.round() as i32, y.round() as i32);
    let mut pixels = vec![round(x, y)];
    // steps of length 1 move the rounded position by at most one pixel per axis
    for _ in 0..4 * cfg.path_len {
        if pixels.len() == cfg.path_len {
            return Some(pixels);
        }
        heading += rng.random_range(-cfg.max_turn..=cfg.max_turn);
        (x, y) = (x + heading.cos(), y + heading.sin());
        let p = round(x, y);
        if p.0 < 1 || p.1 < 1 || p.0 as f64 > hi || p.1 as f64 > hi {
            return None;
        }
        if pixels.last() != Some(&p) {
            if pixels.contains(&p) {
                return None;
            }
            pixels.push(p);
        }
    }
    None
}

/// The 3×3 square around `p`.
fn marker(p: Pixel) -> impl Iterator<Item = Pixel> {
    (-1..=1).flat_map(move |dy| (-1..=1).map(move |dx| (p.0 + dx, p.1 + dy)))
}

/// An image being drawn: intensities and the pixels no new curve may touch.
struct Canvas {
    size: i32,
    image: Vec<u8>,
    /// Pixels of placed curves and their 8-neighbours.
    blocked: Vec<bool>,
}

impl Canvas {
    fn new(size: usize) -> Self {
        Self { size: size as i32, image: vec![0; size * size], blocked: vec![false; size * size] }
    }

    fn index(&self, p: Pixel) -> usize {
        (p.1 * self.size + p.0) as usize
    }

    /// Draws `pixels` with markers at `marked` (indices into `pixels`) if no pixel touches a
    /// placed curve; returns whether it did.
    fn place(&mut self, pixels: &[Pixel], marked: &[usize]) -> bool {
        let marks: Vec<Pixel> = marked.iter().flat_map(|&i| marker(pixels[i])).collect();
        if pixels.iter().chain(&marks).any(|&p| self.blocked[self.index(p)]) {
            return false;
        }
        for &p in pixels {
            let i = self.index(p);
            self.image[i] = PATH;
        }
        for &p in &marks {
            let i = self.index(p);
            self.image[i] = MARKER;
        }
        for &p in pixels.iter().chain(&marks) {
            for q in marker(p).filter(|q| (0..self.size).contains(&q.0) && (0..self.size).contains(&q.1)) {
                let i = self.index(q);
                self.blocked[i] = true;
            }
        }
        true
    }
}

/// Tries to draw one image with the given label; `None` if some curve found no room.
fn try_image(rng: &mut ChaCha8Rng, cfg: &PathfinderConfig, connected: bool) -> Option<Vec<u8>> {
    let mut canvas = Canvas::new(cfg.size);
    for k in 0..cfg.paths {
        // which ends of the k-th curve carry a marker: both ends of the first curve of a
        // positive; one end of each of the first two curves of a negative
        let marked: &[usize] = match (connected, k) {
            (true, 0) => &[0, cfg.path_len - 1],
            (false, 0 | 1) => &[0],
            _ => &[],
        };
        let placed = (0..200).any(|_| match curve(rng, cfg) {
            // both markers of one curve must be separate squares (centres 4 or more apart)
            Some(c) if marked.len() == 2 && chebyshev(c[0], c[c.len() - 1]) < 4 => false,
            Some(c) => canvas.place(&c, marked),
            None => false,
        });
        if !placed {
            return None;
        }
    }
    Some(canvas.image)
}

fn chebyshev(a: Pixel, b: Pixel) -> i32 {
    (a.0 - b.0).abs().max((a.1 - b.1).abs())
}

/// One image with the given label, as pixel tokens.
pub fn generate(rng: &mut ChaCha8Rng, cfg: &PathfinderConfig, connected: bool) -> Example {
    loop {
        if let Some(image) = try_image(rng, cfg, connected) {
            return Example { tokens: image.into_iter().map(u32::from).collect(), pair: None, label: connected as u32 };
        }
    }
}

/// ASCII picture of an image (`#` marker, `+` curve, `.` background), for debugging.
pub fn to_ascii(tokens: &[u32], size: usize) -> String {
    let glyph = |&t: &u32| match t {
        0 => '.',
        t if t == u32::from(MARKER) => '#',
        _ => '+',
    };
    tokens.chunks(size).map(|row| row.iter().map(glyph).collect::<String>() + "\n").collect()
}

pub(crate) fn dataset(cfg: &LraConfig) -> LraDataset {
    let p = &cfg.pathfinder;
    let mut splits = cfg.split_sizes().into_iter().enumerate().map(|(stream, n)| {
        let mut rng = stream_rng(cfg.seed, stream as u64);
        let n = n.expect("generated tasks always have a size");
        let examples = (0..n).map(|i| generate(&mut rng, p, i % 2 == 0)).collect();
        shuffled(examples, cfg.seed, 10 + stream as u64)
    });
    let (train, valid, test) = (splits.next().unwrap(), splits.next().unwrap(), splits.next().unwrap());
    LraDataset {
        task: LraTask::Pathfinder,
        vocab_size: VOCAB_SIZE,
        pad_id: PAD,
        num_classes: 2,
        seq_len: cfg.seq_len(),
        train,
        valid,
        test,
        description: format!(
            "Pathfinder generated here ({0}x{0} pixels, {1} solid curves of {2} pixels, square markers; LRA's has dashed curves)",
            p.size, p.paths, p.path_len
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lra::label_counts;

    /// Independent check from the pixels alone: find the 8-connected groups of marker pixels
    /// (there must be two) and flood-fill the non-zero pixels from the first one.
    fn markers_connected(tokens: &[u32], size: usize) -> bool {
        let n = size as i64;
        let neighbours = move |i: usize| {
            let (x, y) = ((i % size) as i64, (i / size) as i64);
            (-1..=1i64)
                .flat_map(move |dy| (-1..=1i64).map(move |dx| (x + dx, y + dy)))
                .filter(move |&(a, b)| (a, b) != (x, y) && (0..n).contains(&a) && (0..n).contains(&b))
                .map(move |(a, b)| (b * n + a) as usize)
        };
        let fill = |start: usize, inside: &dyn Fn(u32) -> bool| {
            let mut seen = vec![false; tokens.len()];
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                for j in neighbours(i) {
                    if !seen[j] && inside(tokens[j]) {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            seen
        };
        let is_marker = |t: u32| t == u32::from(MARKER);
        let mut groups: Vec<Vec<bool>> = Vec::new();
        for i in (0..tokens.len()).filter(|&i| is_marker(tokens[i])) {
            if !groups.iter().any(|g| g[i]) {
                groups.push(fill(i, &is_marker));
            }
        }
        assert_eq!(groups.len(), 2, "expected two markers:\n{}", to_ascii(tokens, size));
        let first = groups[0].iter().position(|&b| b).unwrap();
        let second = groups[1].iter().position(|&b| b).unwrap();
        fill(first, &|t| t != 0)[second]
    }

    #[test]
    fn labels_match_a_flood_fill_of_the_image() {
        let cfg = PathfinderConfig::default();
        let mut rng = stream_rng(3, 0);
        for i in 0..400 {
            let ex = generate(&mut rng, &cfg, i % 2 == 0);
            assert_eq!(ex.tokens.len(), 1024);
            assert_eq!(
                markers_connected(&ex.tokens, 32),
                ex.label == 1,
                "label {}:\n{}",
                ex.label,
                to_ascii(&ex.tokens, 32)
            );
            let ink = ex.tokens.iter().filter(|&&t| t == u32::from(PATH)).count();
            assert!(ink >= cfg.paths * (cfg.path_len - 9), "all curves drawn ({ink} curve pixels)");
        }
    }

    #[test]
    fn flood_fill_check_can_fail() {
        // two touching curves would merge: the evaluator must see that as connected
        let mut tokens = vec![0u32; 64];
        for i in [9, 10, 11, 12, 13] {
            tokens[i] = 128;
        }
        tokens[9] = 255;
        tokens[13] = 255;
        assert!(markers_connected(&tokens, 8));
        tokens[11] = 0;
        assert!(!markers_connected(&tokens, 8));
    }

    #[test]
    fn dataset_is_balanced_deterministic_and_configurable() {
        let cfg = LraConfig {
            task: LraTask::Pathfinder,
            n_train: Some(40),
            n_valid: Some(10),
            n_test: Some(10),
            pathfinder: PathfinderConfig { size: 16, paths: 3, path_len: 10, ..PathfinderConfig::default() },
            ..LraConfig::default()
        };
        let a = LraDataset::load(&cfg).unwrap();
        assert_eq!(a.seq_len, 256);
        assert_eq!(label_counts(&a.train, 2), vec![20, 20]);
        assert_eq!(label_counts(&a.test, 2), vec![5, 5]);
        assert!(a.train.iter().all(|e| markers_connected(&e.tokens, 16) == (e.label == 1)));
        assert_eq!(a.valid, LraDataset::load(&cfg).unwrap().valid);
        let crowded = PathfinderConfig { size: 16, paths: 8, path_len: 20, ..PathfinderConfig::default() };
        assert!(crowded.validate(256).is_err());
    }
}
