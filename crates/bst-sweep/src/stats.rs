//! Statistics over seeds: mean, standard deviation, and whether two configurations differ by more
//! than their seeds spread: a paired t-test when both ran the same seeds (a seed fixes the
//! initialisation draw and the order of the training data for every configuration, and at CPU
//! scale that shared part dominates the spread), Welch's t-test otherwise (no equal variances
//! assumed).

use statrs::distribution::{ContinuousCDF, StudentsT};

/// A metric over the seeds of one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for a single value.
    pub sd: f64,
}

impl Summary {
    /// `None` without values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Some(Self { n, mean, sd: var.sqrt() })
    }

    /// `2.614 ± 0.012 (n=3)`.
    pub fn display(&self, decimals: usize) -> String {
        format!("{:.decimals$} ± {:.decimals$} (n={})", self.mean, self.sd, self.n)
    }
}

/// How two configurations compare over their seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// `a.mean - b.mean`.
    pub diff: f64,
    pub t: f64,
    /// Degrees of freedom (Welch-Satterthwaite for Welch, pairs - 1 when paired).
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// A paired test over shared seeds (else Welch's).
    pub paired: bool,
}

/// The significance level at which a difference is said to exceed the seed spread.
pub const ALPHA: f64 = 0.05;

impl Comparison {
    /// Welch's t-test of `a` against `b`; `None` when either has fewer than two seeds or both
    /// have no spread at all.
    pub fn welch(a: &Summary, b: &Summary) -> Option<Self> {
        if a.n < 2 || b.n < 2 {
            return None;
        }
        let (va, vb) = (a.sd.powi(2) / a.n as f64, b.sd.powi(2) / b.n as f64);
        let se = (va + vb).sqrt();
        if se == 0.0 {
            return None;
        }
        let diff = a.mean - b.mean;
        let t = diff / se;
        let df = (va + vb).powi(2) / (va.powi(2) / (a.n - 1) as f64 + vb.powi(2) / (b.n - 1) as f64);
        Self::with_t(diff, t, df, false)
    }

    /// The paired t-test of `(a, b)` values of the same seeds; `None` below two pairs or when
    /// the differences do not vary.
    pub fn paired(pairs: &[(f64, f64)]) -> Option<Self> {
        let diffs: Vec<f64> = pairs.iter().map(|(a, b)| a - b).collect();
        let d = Summary::of(&diffs)?;
        if d.n < 2 || d.sd == 0.0 {
            return None;
        }
        Self::with_t(d.mean, d.mean / (d.sd / (d.n as f64).sqrt()), (d.n - 1) as f64, true)
    }

    fn with_t(diff: f64, t: f64, df: f64, paired: bool) -> Option<Self> {
        let dist = StudentsT::new(0.0, 1.0, df).ok()?;
        let p = 2.0 * (1.0 - dist.cdf(t.abs()));
        Some(Self { diff, t, df, p, paired })
    }

    /// `paired t` or `Welch t`, for the report.
    pub fn test_name(&self) -> &'static str {
        if self.paired { "paired t" } else { "Welch t" }
    }

    /// Whether the difference exceeds the seed spread at [`ALPHA`].
    pub fn significant(&self) -> bool {
        self.p < ALPHA
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_the_sample_mean_and_deviation() {
        let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!((s.n, s.mean), (8, 5.0));
        assert!((s.sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(Summary::of(&[3.0]).unwrap().sd, 0.0);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0]).unwrap().display(2), "2.00 ± 1.00 (n=3)");
    }

    /// Against a hand computation: a = (1, 2, 3), b = (4, 5, 6, 7): means 2 and 5.5, variances 1
    /// and 5/3; se^2 = 1/3 + 5/12 = 0.75; t = -3.5/0.866 = -4.041; df = 0.5625 / (1/18 + 25/432)
    /// = 4.91; two-sided p (t-table, df 4.91) about 0.0104.
    #[test]
    fn welch_matches_a_hand_computation() {
        let a = Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        let b = Summary::of(&[4.0, 5.0, 6.0, 7.0]).unwrap();
        let c = Comparison::welch(&a, &b).unwrap();
        assert!((c.diff + 3.5).abs() < 1e-12);
        assert!((c.t + 3.5 / 0.75f64.sqrt()).abs() < 1e-9, "{}", c.t);
        assert!((c.df - 0.5625 / (1.0 / 18.0 + 25.0 / 432.0)).abs() < 1e-9, "{}", c.df);
        assert!((c.p - 0.0104).abs() < 5e-4, "{}", c.p);
        assert!(c.significant());
        let close = Comparison::welch(&a, &Summary::of(&[1.5, 2.5, 3.5]).unwrap()).unwrap();
        assert!(!close.significant() && close.p > 0.5, "{close:?}");
        assert!(Comparison::welch(&Summary::of(&[1.0]).unwrap(), &b).is_none(), "one seed separates nothing");
    }

    /// Seeds shared by both sides move both: a consistent 0.02 gap under a 0.09 spread between
    /// seeds. Paired differences -0.02, -0.03, -0.02: mean -0.0233, sd 0.00577, t = -7.0 on 2 df,
    /// two-sided p = 1 - 7 / sqrt(51) = 0.0198 (the df = 2 closed form); Welch sees nothing.
    #[test]
    fn a_paired_test_sees_a_consistent_gap_that_the_seed_spread_hides() {
        let (a, b) = ([3.30, 3.37, 3.48], [3.32, 3.40, 3.50]);
        let pairs: Vec<(f64, f64)> = a.iter().copied().zip(b.iter().copied()).collect();
        let c = Comparison::paired(&pairs).unwrap();
        assert!(c.paired && (c.t + 7.0).abs() < 1e-9 && c.df == 2.0, "{c:?}");
        assert!((c.p - (1.0 - 7.0 / 51f64.sqrt())).abs() < 1e-6, "{}", c.p);
        let w = Comparison::welch(&Summary::of(&a).unwrap(), &Summary::of(&b).unwrap()).unwrap();
        assert!(c.significant() && !w.significant(), "{w:?}");
        assert!(Comparison::paired(&pairs[..1]).is_none(), "one pair separates nothing");
    }
}
