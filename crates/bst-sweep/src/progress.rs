//! Progress of a sweep: bars on a terminal; plain lines (step, loss, tokens/s, ETA of the run and
//! of the sweep) every so many seconds when stderr is a log file, CI or a batch scheduler, so that
//! a long run never goes silent.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use bst_model::StepMetrics;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
enum Mode {
    Bars { bars: MultiProgress, overall: ProgressBar, run: RefCell<Option<ProgressBar>> },
    Lines { every: Duration, last: Cell<Instant> },
    Silent,
}

/// The progress display of one sweep launch.
pub struct Progress {
    mode: Mode,
    name: String,
    total: usize,
    done: Cell<usize>,
    /// Seconds spent on runs trained in this launch (for the sweep's ETA).
    spent: Cell<f64>,
    trained: Cell<usize>,
    run: RefCell<String>,
    run_steps: Cell<usize>,
}

/// `1h 02m`, `4m 10s`, `12s`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

impl Progress {
    /// Bars when `bars` and stderr is a terminal; otherwise a line every `every` (none if zero).
    pub fn new(name: &str, total: usize, bars: bool, every: Duration) -> Self {
        let mode = if bars && std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total as u64));
            overall.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} runs  elapsed {elapsed}  eta {eta}").expect("valid template").progress_chars("=> "));
            overall.set_prefix(name.to_owned());
            Mode::Bars { bars: multi, overall, run: RefCell::new(None) }
        } else if every.is_zero() {
            Mode::Silent
        } else {
            Mode::Lines { every, last: Cell::new(Instant::now()) }
        };
        Self { mode, name: name.to_owned(), total, done: Cell::new(0), spent: Cell::new(0.0), trained: Cell::new(0), run: RefCell::new(String::new()), run_steps: Cell::new(0) }
    }

    /// A line that stays (above the bars, if any).
    pub fn log(&self, line: &str) {
        match &self.mode {
            Mode::Bars { bars, .. } => bars.suspend(|| eprintln!("{line}")),
            _ => eprintln!("{line}"),
        }
    }

    /// A run finished earlier, or was reused.
    pub fn skip(&self) {
        self.done.set(self.done.get() + 1);
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.inc(1);
        }
    }

    pub fn start_run(&self, label: &str, steps: usize) {
        *self.run.borrow_mut() = label.to_owned();
        self.run_steps.set(steps);
        if let Mode::Bars { bars, run, .. } = &self.mode {
            let bar = bars.add(ProgressBar::new(steps as u64));
            bar.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}").expect("valid template").progress_chars("=> "));
            bar.set_prefix(format!("run {}/{}", self.done.get() + 1, self.total));
            *run.borrow_mut() = Some(bar);
        }
    }

    /// Mean seconds of the runs trained so far in this launch (NaN before the first).
    fn mean_run_s(&self) -> f64 {
        if self.trained.get() > 0 { self.spent.get() / self.trained.get() as f64 } else { f64::NAN }
    }

    /// The sweep's remaining time: the mean time of the runs trained so far for each run left.
    fn sweep_eta(&self, run_left_s: f64) -> f64 {
        let left = self.total.saturating_sub(self.done.get() + 1) as f64;
        run_left_s + left * self.mean_run_s()
    }

    pub fn step(&self, m: &StepMetrics, run_elapsed_s: f64, steps_this_launch: usize) {
        let steps = self.run_steps.get();
        let per_step = run_elapsed_s / steps_this_launch.max(1) as f64;
        let run_left = per_step * steps.saturating_sub(m.step + 1) as f64;
        match &self.mode {
            Mode::Bars { run, .. } => {
                if let Some(bar) = run.borrow().as_ref() {
                    bar.set_position(m.step as u64 + 1);
                    if m.step % 5 == 0 {
                        bar.set_message(format!("loss {:.3}  {:.0} tok/s", m.loss, m.tokens_per_s));
                    }
                }
            }
            Mode::Lines { every, last } => {
                if last.get().elapsed() >= *every || m.step + 1 == steps {
                    last.set(Instant::now());
                    let line = format!("{}: step {}/{steps}, loss {:.3}, {:.0} tok/s, run ETA {}", self.run.borrow(), m.step + 1, m.loss, m.tokens_per_s, duration(run_left));
                    // a display of one run (a --jobs child, a cluster task) has no sweep to place it in
                    if self.total > 1 {
                        eprintln!("[{}] run {}/{} {line}, sweep ETA {}", self.name, self.done.get() + 1, self.total, duration(self.sweep_eta(run_left)));
                    } else {
                        eprintln!("[{}] {line}", self.name);
                    }
                }
            }
            Mode::Silent => {}
        }
    }

    /// The current run ended (finished, failed or interrupted) after `spent_s` seconds here.
    pub fn end_run(&self, spent_s: f64, counts: bool) {
        if counts {
            self.spent.set(self.spent.get() + spent_s);
            self.trained.set(self.trained.get() + 1);
        }
        self.done.set(self.done.get() + 1);
        if let Mode::Bars { overall, run, .. } = &self.mode {
            if let Some(bar) = run.borrow_mut().take() {
                bar.finish_and_clear();
            }
            overall.inc(1);
        }
    }

    /// `3/15 runs ended, sweep ETA 12m 30s`: where a sweep whose runs train `jobs` at a time
    /// stands after a run ended (the parent's view; the children report their steps).
    pub fn tally(&self, jobs: usize) -> String {
        let left = self.total.saturating_sub(self.done.get());
        let eta = if left == 0 { 0.0 } else { parallel_eta(left, self.mean_run_s(), jobs) };
        format!("{}/{} runs ended, sweep ETA {}", self.done.get(), self.total, duration(eta))
    }

    pub fn finish(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.finish_and_clear();
        }
    }
}

/// Wall time for `left` runs of `per_run` seconds each, `jobs` at a time: whole rounds of `jobs`.
fn parallel_eta(left: usize, per_run: f64, jobs: usize) -> f64 {
    left.div_ceil(jobs.max(1)) as f64 * per_run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_eta_counts_rounds_of_jobs() {
        assert_eq!(parallel_eta(5, 60.0, 2), 180.0, "5 runs two at a time take 3 rounds");
        assert_eq!(parallel_eta(4, 60.0, 1), 240.0);
        assert_eq!(parallel_eta(1, 60.0, 0), 60.0, "no jobs means one");
        let p = Progress::new("s", 4, false, Duration::ZERO);
        assert_eq!(p.tally(2), "0/4 runs ended, sweep ETA ?", "no run timed yet");
        p.end_run(100.0, true);
        assert_eq!(p.tally(2), "1/4 runs ended, sweep ETA 3m 20s");
        p.skip();
        p.end_run(0.0, false);
        assert_eq!(p.tally(2), "3/4 runs ended, sweep ETA 1m 40s");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(250.0), "4m 10s");
        assert_eq!(duration(3720.0), "1h 02m");
        assert_eq!(duration(f64::NAN), "?");
    }
}
