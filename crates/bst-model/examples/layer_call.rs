//! One call of each given layer, forward and forward+backward, for instruction counting (the
//! machine is shared, so callgrind's counts, not wall time, judge whether a change made a layer
//! cheaper). `scripts/callgrind_layers.sh` runs it:
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*layer_call*measured*' --dump-after='*layer_call*measured*' \
//!     target/release/examples/layer_call 2048 SLIDE BST:SH:S4D
//! ```
//!
//! Arguments: L, then architectures (`SSM` for the SSM sublayer alone); `BATCH=n` in the
//! environment sets the batch (1). CPU profile sizes: d 128, 4 heads, W 32, S 16; one thread.
//! Each measured call follows an untimed one (allocator, kernel cache) and runs in its own
//! function, `measured_<k>` for the k-th call printed, whose inclusive count is the call's cost.

use bst_attn::LayerConfig;
use bst_model::speed::{Direction, LayerSpeed};
use bst_model::LayerKind;
use bst_ssm::SsmKind;
use tch::{Device, Tensor};

/// Distinct functions (callgrind tells calls apart by function), `measured_<k>` for slot k.
macro_rules! slots {
    ($($k:literal $name:ident),*) => {
        $(#[inline(never)]
        fn $name(layer: &LayerSpeed, xs: &Tensor, direction: Direction) -> f64 {
            std::hint::black_box($k); // distinct bodies: the linker must not fold them into one
            layer.call(xs, direction)
        })*
        const SLOTS: &[fn(&LayerSpeed, &Tensor, Direction) -> f64] = &[$($name),*];
    };
}
slots!(0 measured_0, 1 measured_1, 2 measured_2, 3 measured_3, 4 measured_4, 5 measured_5, 6 measured_6, 7 measured_7, 8 measured_8, 9 measured_9, 10 measured_10, 11 measured_11, 12 measured_12, 13 measured_13, 14 measured_14, 15 measured_15);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seq: i64 = args.get(1).map_or(2048, |s| s.parse().expect("L"));
    let batch: i64 = std::env::var("BATCH").map_or(1, |b| b.parse().expect("BATCH"));
    tch::set_num_threads(1);
    let mut cfg = LayerConfig::small(128, 4, 32);
    (cfg.context_states, cfg.max_len) = (16, seq as usize);
    let mut slot = 0;
    for arch in &args[2..] {
        tch::manual_seed(0);
        let layer = if arch == "SSM" {
            LayerSpeed::ssm_sublayer(SsmKind::S4d, &cfg, Device::Cpu)
        } else {
            LayerSpeed::new(LayerKind::of(arch.parse().unwrap()), &cfg, Device::Cpu)
        };
        let xs = layer.input(batch, seq);
        for direction in [Direction::Forward, Direction::ForwardBackward] {
            layer.call(&xs, direction);
            let seconds = SLOTS[slot](&layer, &xs, direction);
            println!("measured_{slot} {arch} {seq} {direction} {:.2}", seconds * 1e3);
            slot += 1;
        }
    }
}
