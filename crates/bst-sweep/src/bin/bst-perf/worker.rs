//! The PyTorch reference process (`scripts/reference/worker.py`): started once, asked over its
//! stdin/stdout one JSON line at a time, so that its timings interleave with ours.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// A running reference worker.
pub struct Worker {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    /// Answers of `init`: torch version, device name.
    pub torch: String,
    pub device: String,
}

/// The Python that has torch: `.venv/bin/python` of the checkout (scripts/setup.sh makes it),
/// else `python3` on the PATH (the GPU bundle's machines).
pub fn default_python(root: &Path) -> PathBuf {
    let venv = root.join(".venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

impl Worker {
    /// Starts `python scripts/reference/worker.py` under `root` and initialises torch with the
    /// same threads, device and precision as ours.
    pub fn start(python: &Path, root: &Path, threads: usize, device: &str, precision: &str) -> Result<Self> {
        let script = root.join("scripts/reference/worker.py");
        if !script.exists() {
            bail!("{} is missing", script.display());
        }
        let mut child = Command::new(python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("OMP_NUM_THREADS", threads.to_string())
            .spawn()
            .with_context(|| format!("starting {} (run scripts/setup.sh: it installs torch and safetensors into .venv)", python.display()))?;
        let input = child.stdin.take().expect("piped stdin");
        let output = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut worker = Self { child, input, output, torch: String::new(), device: String::new() };
        let init = worker
            .ask(json!({"op": "init", "threads": threads, "device": device, "precision": precision}))
            .with_context(|| format!("the PyTorch reference did not start with {} (run scripts/setup.sh)", python.display()))?;
        worker.torch = init["torch"].as_str().unwrap_or("?").to_owned();
        worker.device = init["device"].as_str().unwrap_or("?").to_owned();
        Ok(worker)
    }

    /// Sends one request; returns the answer, or the worker's error as an `Err`.
    pub fn ask(&mut self, request: Value) -> Result<Value> {
        writeln!(self.input, "{request}").context("writing to the reference worker")?;
        self.input.flush()?;
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            bail!("the reference worker exited (its error is above)");
        }
        let answer: Value = serde_json::from_str(&line).with_context(|| format!("reference worker answered {line:?}"))?;
        if answer["ok"] == Value::Bool(true) {
            Ok(answer)
        } else {
            bail!("{}", answer["error"].as_str().unwrap_or("unknown error"))
        }
    }

    /// Seconds per run of a request that answers `{"seconds": [...]}`.
    pub fn seconds(&mut self, request: Value) -> Result<Vec<f64>> {
        let answer = self.ask(request)?;
        answer["seconds"].as_array().context("no `seconds` in the answer")?.iter().map(|s| s.as_f64().context("a non-number in `seconds`")).collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "{}", json!({"op": "quit"}));
        let _ = self.input.flush();
        let _ = self.child.wait();
    }
}
