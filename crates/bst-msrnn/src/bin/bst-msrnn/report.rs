//! The results folder of `bst-msrnn score`: `ppl.csv`, `kept.csv`, the plots and `report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::SeriesLabelPosition;

use bst_msrnn::plot::{render, Chart, Series};
use bst_msrnn::study::{bucket_start, Chunk, Kept, Row, TOKEN_TYPES};

/// Where and when the numbers were made.
pub struct Provenance {
    pub commit: String,
    pub device: String,
    pub date: String,
    pub command: String,
}

pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `git rev-parse --short HEAD`, with `-dirty` when tracked files differ from it.
pub fn git_commit() -> String {
    let git = |args: &[&str]| std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

impl Provenance {
    pub fn now() -> Self {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Self {
            commit: git_commit(),
            device: format!("CPU ({}, {cores} cores), libtorch with {} threads, f32", cpu_name(), tch::get_num_threads()),
            date: now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

#[derive(serde::Serialize)]
pub struct BenchRow {
    /// Comma-separated: several are decoded in one batch by bst-msrnn, in turn by the reference.
    pub policies: String,
    pub k: usize,
    pub batch: usize,
    pub context: usize,
    pub threads: i32,
    pub ours_tokens_per_s: f64,
    pub pytorch_tokens_per_s: f64,
    pub ratio: f64,
    pub max_abs_logprob_diff: f64,
    pub date: String,
    pub commit: String,
}

pub fn append_bench(path: &Path, row: &BenchRow) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let fresh = !path.exists();
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("--csv {}", path.display()))?;
    let mut w = csv::WriterBuilder::new().has_headers(fresh).from_writer(file);
    w.serialize(row)?;
    w.flush()?;
    Ok(())
}

pub fn write(out: &Path, rows: &[Row], kept: &[(usize, usize, Kept)], chunks: &[(usize, Vec<Chunk>)], notes: &[String], prov: &Provenance) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating --out {}", out.display()))?;
    let mut w = csv::Writer::from_path(out.join("ppl.csv"))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    write_kept_csv(&out.join("kept.csv"), kept)?;
    let plots = plots(out, rows, kept)?;
    let md = markdown(rows, kept, chunks, notes, prov, &plots);
    std::fs::write(out.join("report.md"), md).with_context(|| format!("writing {}", out.join("report.md").display()))?;
    Ok(())
}

fn write_kept_csv(path: &Path, kept: &[(usize, usize, Kept)]) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["context", "k", "what", "bin", "kept", "present", "rate"])?;
    for (c, k, s) in kept {
        let mut rec = |what: &str, bin: String, (n, d): (u64, u64)| w.write_record([c.to_string(), k.to_string(), what.into(), bin, n.to_string(), d.to_string(), format!("{:.6}", n as f64 / d.max(1) as f64)]);
        for (b, &v) in s.by_age.iter().enumerate() {
            rec("age_from", bucket_start(b).to_string(), v)?;
        }
        for (t, &v) in s.by_type.iter().enumerate() {
            rec("type", TOKEN_TYPES[t].into(), v)?;
        }
        for (l, &v) in s.first_by_layer.iter().enumerate() {
            rec("first_token_layer", l.to_string(), v)?;
        }
    }
    w.flush()?;
    Ok(())
}

fn rate((n, d): (u64, u64)) -> f64 {
    n as f64 / d.max(1) as f64
}

fn contexts(rows: &[Row]) -> Vec<usize> {
    let mut c: Vec<usize> = rows.iter().map(|r| r.context).collect();
    c.dedup();
    c
}

fn policies(rows: &[Row]) -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    for r in rows {
        if !p.contains(&r.policy) {
            p.push(r.policy.clone());
        }
    }
    p
}

fn plots(out: &Path, rows: &[Row], kept: &[(usize, usize, Kept)]) -> Result<Vec<(String, PathBuf)>> {
    let mut made = Vec::new();
    let mut add = |caption: String, chart: Chart, stem: &str| -> Result<()> {
        let files = render(&chart, &out.join(stem))?;
        made.push((caption, files[0].clone()));
        Ok(())
    };
    for c in contexts(rows) {
        let of_c: Vec<&Row> = rows.iter().filter(|r| r.context == c).collect();
        let mut series: Vec<Series> = policies(rows)
            .into_iter()
            .filter(|p| p != "full")
            .map(|p| Series { points: of_c.iter().filter(|r| r.policy == p).map(|r| (r.k as f64, r.ppl)).collect(), label: p, reference: false })
            .collect();
        series.push(Series { label: "full cache (topline, same targets)".into(), points: of_c.iter().filter(|r| r.policy == of_c[0].policy).map(|r| (r.k as f64, r.topline_ppl)).collect(), reference: true });
        let chart = Chart {
            title: format!("Perplexity against cache budget k, {c}-token chunks"),
            x_desc: "cache budget k (entries per layer; log scale)".into(),
            y_desc: "perplexity on targets after k (log scale)".into(),
            series,
            log2_x: true,
            log_y: true,
            y_from_zero: false,
            categories: None,
            // Window falls from the top left; the top right stays free for the legend.
            legend: SeriesLabelPosition::UpperRight,
        };
        add(format!("Perplexity against k, {c}-token chunks"), chart, &format!("ppl_vs_k_c{c}"))?;
    }
    if let Some(&(c, _, _)) = kept.iter().max_by_key(|(c, _, _)| *c) {
        kept_plots(c, kept, &mut add)?;
    }
    speed_and_memory(rows, &mut add)?;
    Ok(made)
}

type Add<'a> = dyn FnMut(String, Chart, &str) -> Result<()> + 'a;

fn kept_plots(c: usize, kept: &[(usize, usize, Kept)], add: &mut Add) -> Result<()> {
    let of_c: Vec<&(usize, usize, Kept)> = kept.iter().filter(|(cc, _, _)| *cc == c).collect();
    // Trailing buckets nothing reached (older than any token) would only be empty bars.
    let n_buckets = of_c.iter().map(|(_, _, s)| s.by_age.iter().rposition(|&(_, n)| n > 0).map_or(0, |b| b + 1)).max().unwrap_or(0);
    let age_labels: Vec<String> = (0..n_buckets).map(|b| if b == 0 { "0".into() } else { format!("{}-{}", bucket_start(b), bucket_start(b + 1) - 1) }).collect();
    let by_age = of_c.iter().map(|(_, k, s)| Series { label: format!("k = {k}"), points: s.by_age.iter().take(n_buckets).enumerate().map(|(b, &v)| (b as f64, rate(v))).collect(), reference: false }).collect();
    add(
        format!("TOVA: share of cached tokens by age, {c}-token chunks"),
        Chart { title: format!("TOVA: which past tokens are kept, by age ({c}-token chunks)"), x_desc: "age of the token (steps before the current one)".into(), y_desc: "share kept (layers, heads, chunks pooled)".into(), series: by_age, log2_x: false, log_y: false, y_from_zero: false, categories: Some(age_labels), legend: SeriesLabelPosition::UpperRight },
        "tova_kept_by_age",
    )?;
    let by_type = of_c.iter().map(|(_, k, s)| Series { label: format!("k = {k}"), points: s.by_type.iter().enumerate().map(|(t, &v)| (t as f64, rate(v))).collect(), reference: false }).collect();
    add(
        format!("TOVA: share of cached tokens by kind, {c}-token chunks"),
        Chart { title: format!("TOVA: which past tokens are kept, by kind ({c}-token chunks)"), x_desc: "kind of token".into(), y_desc: "share of such tokens kept".into(), series: by_type, log2_x: false, log_y: false, y_from_zero: false, categories: Some(TOKEN_TYPES.iter().map(|s| s.to_string()).collect()), legend: SeriesLabelPosition::UpperRight },
        "tova_kept_by_type",
    )?;
    let first = of_c.iter().map(|(_, k, s)| Series { label: format!("k = {k}"), points: s.first_by_layer.iter().enumerate().map(|(l, &v)| (l as f64, rate(v))).collect(), reference: false }).collect();
    add(
        format!("TOVA: is the first token in the cache, per layer ({c}-token chunks)"),
        Chart { title: format!("TOVA: share of caches holding the first token, per layer ({c}-token chunks)"), x_desc: "layer".into(), y_desc: "share of (chunk, snapshot) caches with token 0".into(), series: first, log2_x: false, log_y: false, y_from_zero: false, categories: None, legend: SeriesLabelPosition::LowerRight },
        "tova_first_token_by_layer",
    )
}

fn speed_and_memory(rows: &[Row], add: &mut Add) -> Result<()> {
    // Bounded caches were timed once (their speed depends on k, not on C): one line per policy.
    let first_c = rows.first().map_or(0, |r| r.context);
    let mut speed: Vec<Series> = policies(rows)
        .into_iter()
        .filter(|p| p != "full")
        .map(|p| Series { points: rows.iter().filter(|r| r.context == first_c && r.policy == p).map(|r| (r.k as f64, r.tokens_per_s)).collect(), label: p, reference: false })
        .collect();
    for c in contexts(rows) {
        let pts: Vec<(f64, f64)> = rows.iter().filter(|r| r.context == c && r.policy == "full").map(|r| (r.k as f64, r.tokens_per_s)).collect();
        if !pts.is_empty() {
            speed.push(Series { label: format!("full cache of {c} tokens"), points: pts, reference: true });
        }
    }
    let batch = rows.first().map_or(0, |r| r.batch);
    add(
        "Decode tokens/s against k".into(),
        Chart { title: format!("Decode speed with a full cache of k entries (batch of {batch})"), x_desc: "cache budget k (log scale)".into(), y_desc: "tokens decoded per second (wall clock)".into(), series: speed, log2_x: true, log_y: false, y_from_zero: true, categories: None, legend: SeriesLabelPosition::LowerRight },
        "speed_vs_k",
    )?;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut mem: Vec<Series> = Vec::new();
    let bounded: Vec<(f64, f64)> = rows.iter().filter(|r| r.policy != "full" && r.context == first_c).map(|r| (r.k as f64, mib(r.cache_bytes_per_seq))).collect();
    mem.push(Series { label: "bounded cache (every policy)".into(), points: bounded, reference: false });
    for c in contexts(rows) {
        let pts: Vec<(f64, f64)> = rows.iter().filter(|r| r.context == c && r.policy == "full").map(|r| (r.k as f64, mib(r.cache_bytes_per_seq))).collect();
        if !pts.is_empty() {
            mem.push(Series { label: format!("full cache at the end of a {c}-token chunk"), points: pts, reference: true });
        }
    }
    add(
        "Cache memory against k".into(),
        Chart { title: "Key/value cache per sequence against k (f32, all layers)".into(), x_desc: "cache budget k (log scale)".into(), y_desc: "MiB per sequence".into(), series: mem, log2_x: true, log_y: false, y_from_zero: true, categories: None, legend: SeriesLabelPosition::Coordinate(520, 110) },
        "cache_bytes_vs_k",
    )
}

/// Re-renders the plots of a finished `score` run from its `ppl.csv` and `kept.csv` (the
/// numbers are not recomputed) and notes it at the end of `report.md`.
pub fn replot(out: &Path, commit: &str, date: &str) -> Result<()> {
    let mut rows = Vec::new();
    let path = out.join("ppl.csv");
    for r in csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?.deserialize() {
        rows.push(r.with_context(|| format!("a row of {}", path.display()))?);
    }
    let kept = read_kept(&out.join("kept.csv"))?;
    let made = plots(out, &rows, &kept)?;
    let report = out.join("report.md");
    let old = std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?;
    // Only the latest re-rendering is noted.
    let mut md: String = old.lines().filter(|l| !(l.starts_with("Plots (") && l.contains("re-rendered"))).map(|l| format!("{l}\n")).collect();
    while md.ends_with("\n\n") {
        md.pop();
    }
    let _ = writeln!(md, "\nPlots ({} files) re-rendered from `ppl.csv` and `kept.csv` by `bst-msrnn replot` at commit `{commit}`, {date}; the numbers are those of the run above.", made.len() * 2);
    std::fs::write(&report, md).with_context(|| format!("writing {}", report.display()))?;
    Ok(())
}

fn read_kept(path: &Path) -> Result<Vec<(usize, usize, Kept)>> {
    let mut out: Vec<(usize, usize, Kept)> = Vec::new();
    for rec in csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?.records() {
        let rec = rec?;
        let num = |i: usize| -> Result<u64> { rec.get(i).unwrap_or("").parse().with_context(|| format!("{}: column {i} of {rec:?}", path.display())) };
        let (c, k, what, bin, kept, present) = (num(0)? as usize, num(1)? as usize, rec.get(2).unwrap_or(""), rec.get(3).unwrap_or(""), num(4)?, num(5)?);
        if !out.iter().any(|(cc, kk, _)| *cc == c && *kk == k) {
            out.push((c, k, Kept::default()));
        }
        let s = &mut out.iter_mut().find(|(cc, kk, _)| *cc == c && *kk == k).expect("pushed above").2;
        match what {
            "age_from" => {
                let start: i64 = bin.parse().with_context(|| format!("{}: age bin {bin}", path.display()))?;
                s.by_age.push((kept, present));
                anyhow::ensure!(bucket_start(s.by_age.len() - 1) == start, "{}: age bins out of order at {start}", path.display());
            }
            "type" => {
                let t = TOKEN_TYPES.iter().position(|n| *n == bin).with_context(|| format!("{}: unknown token kind {bin}", path.display()))?;
                s.by_type[t] = (kept, present);
            }
            "first_token_layer" => s.first_by_layer.push((kept, present)),
            other => anyhow::bail!("{}: unknown statistic {other}", path.display()),
        }
    }
    Ok(out)
}

fn markdown(rows: &[Row], kept: &[(usize, usize, Kept)], chunks: &[(usize, Vec<Chunk>)], notes: &[String], prov: &Provenance, plots: &[(String, PathBuf)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Transformers as multi-state RNNs: bounded KV caches on SmolLM2-135M\n");
    let _ = writeln!(s, "Made by `bst-msrnn score` at commit `{}` on {}, {}.\n\nCommand:\n\n```\n{}\n```\n", prov.commit, prov.device, prov.date, prov.command);
    let _ = writeln!(s, "Each chunk is decoded token by token from an empty cache; a policy with budget k keeps at most k key/value entries per layer (keys cached after RoPE at their absolute positions). Perplexity is over the targets predicted from more than `from` tokens of context (the paper's protocol: `from` = k, the targets a bounded cache can change); `topline` is the full model (causal attention over the whole chunk) on the same targets. `full` is the unbounded cache decoded step by step.\n");
    for c in contexts(rows) {
        ppl_table(&mut s, rows, c);
    }
    let _ = writeln!(s, "## Plots\n");
    for (caption, file) in plots {
        let name = file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(s, "{caption}:\n\n![{caption}]({name})\n");
    }
    kept_section(&mut s, kept);
    speed_table(&mut s, rows);
    let _ = writeln!(s, "## Checks and notes\n");
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    let _ = writeln!(s, "\n## Chunks\n");
    for (c, list) in chunks {
        let docs: Vec<String> = list.iter().map(|ch| format!("{} @{}", ch.doc, ch.start)).collect();
        let _ = writeln!(s, "- {c} tokens, {} chunks (document @ first token): {}", list.len(), docs.join("; "));
    }
    s
}

fn ppl_table(s: &mut String, rows: &[Row], c: usize) {
    let of_c: Vec<&Row> = rows.iter().filter(|r| r.context == c).collect();
    let mut ks: Vec<usize> = of_c.iter().map(|r| r.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let chunks = of_c.first().map_or(0, |r| r.chunks);
    let _ = writeln!(s, "## Perplexity, {c}-token chunks ({chunks} chunks)\n");
    let _ = writeln!(s, "| policy | {} |", ks.iter().map(|k| format!("k = {k} ({:.0}% of C)", 100.0 * *k as f64 / c as f64)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(ks.len()));
    let cell = |p: &str, k: usize, f: &dyn Fn(&Row) -> f64| of_c.iter().find(|r| r.policy == p && r.k == k).map_or("".into(), |r| format!("{:.2}", f(r)));
    for p in policies(rows) {
        let _ = writeln!(s, "| {p} | {} |", ks.iter().map(|&k| cell(&p, k, &|r| r.ppl)).collect::<Vec<_>>().join(" | "));
    }
    let first = of_c.first().map(|r| r.policy.clone()).unwrap_or_default();
    let _ = writeln!(s, "| topline (full model, same targets) | {} |", ks.iter().map(|&k| cell(&first, k, &|r| r.topline_ppl)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "| targets scored | {} |\n", ks.iter().map(|&k| of_c.iter().find(|r| r.k == k).map_or("".into(), |r| r.targets.to_string())).collect::<Vec<_>>().join(" | "));
}

fn kept_section(s: &mut String, kept: &[(usize, usize, Kept)]) {
    if kept.is_empty() {
        return;
    }
    let _ = writeln!(s, "## What TOVA keeps\n\nCaches inspected at every quarter of each chunk past the first k tokens, pooled over chunks, layers and KV heads (`kept.csv` has every count).\n");
    let _ = writeln!(s, "| C | k | first token kept | {} |", TOKEN_TYPES[1..].join(" | "));
    let _ = writeln!(s, "|---|---|---|{}", "---|".repeat(TOKEN_TYPES.len() - 1));
    for (c, k, st) in kept {
        let types: Vec<String> = st.by_type[1..].iter().map(|&v| format!("{:.3}", rate(v))).collect();
        let _ = writeln!(s, "| {c} | {k} | {:.3} | {} |", rate(st.by_type[0]), types.join(" | "));
    }
    let _ = writeln!(s, "\nA share is kept / present: of all tokens of that kind before the inspected step, the fraction still in the cache. For comparison, keeping k tokens at random out of t would give k/t.\n");
}

fn speed_table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(s, "## Speed and memory\n\n| C | policy | k | tokens/s | cache MiB per sequence |\n|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(s, "| {} | {} | {} | {:.1} | {:.2} |", r.context, r.policy, r.k, r.tokens_per_s, r.cache_bytes_per_seq as f64 / 1048576.0);
    }
    let _ = writeln!(s, "\nTokens/s: each setting decoded alone on a batch of {} chunks, prefilled in parallel up to k (the full cache: up to the last timed steps), then timed over the next steps with the cache full; wall clock on a shared machine, so indicative only. Bounded caches are timed once (their speed depends on k, not on C); `full` rows repeat one measurement for every k. Cache bytes are f32 keys and values of all 30 layers for one sequence.\n", rows.first().map_or(0, |r| r.batch));
}
