//! Learning-rate schedule: linear warmup from 0, then cosine decay to `min_lr_ratio * lr`.

use crate::TrainConfig;

/// Learning rate for optimiser step `step` (0-based).
pub fn lr_at(step: usize, cfg: &TrainConfig) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let decay_steps = cfg.steps.saturating_sub(cfg.warmup_steps).max(1);
    let progress = ((step - cfg.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let cfg = TrainConfig { steps: 110, warmup_steps: 10, lr: 1.0, min_lr_ratio: 0.1, ..TrainConfig::default() };
        assert!((lr_at(0, &cfg) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, &cfg) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, &cfg) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, &cfg) - 0.55).abs() < 1e-12, "halfway is the mean of max and min");
        assert!((lr_at(110, &cfg) - 0.1).abs() < 1e-12);
        let lrs: Vec<f64> = (10..110).map(|s| lr_at(s, &cfg)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "decay is monotone");
    }
}
