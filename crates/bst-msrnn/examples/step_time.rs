use std::time::Instant;
use bst_msrnn::{GgufFile, Llama, Policy};
use tch::{Device, Kind, Tensor};
fn main() {
    let threads: i32 = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    let batch: i64 = std::env::args().nth(2).map_or(1, |s| s.parse().unwrap());
    tch::set_num_threads(threads);
    let g = GgufFile::open("data/model/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
    let m = Llama::from_gguf(&g, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let toks = Tensor::randint(49152, [batch, 40], (Kind::Int64, Device::Cpu));
    let mut cache = m.new_cache(Policy::Tova { head_wise: false, keep_newest: false }, Some(16));
    for t in 0..8 { m.step(&toks.select(1, t), t, &mut cache); }
    let t0 = Instant::now();
    for t in 8..40 { m.step(&toks.select(1, t), t, &mut cache); }
    println!("threads {threads} batch {batch}: per step {:.1} ms", t0.elapsed().as_secs_f64() / 32.0 * 1e3);
}
