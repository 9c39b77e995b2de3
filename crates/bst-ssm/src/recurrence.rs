//! Recurrent (step) mode: the discretised state-space system advanced one token at a time, for
//! streaming and as the independent check of the convolution mode.
//!
//! Diagonal systems (S4D) keep a complex state per mode and update it elementwise; dense systems
//! (S4, whose A is diagonal plus low rank) keep a complex state vector per channel and multiply it
//! by the N x N discretised matrix.

use tch::{Kind, Tensor};

/// A discretised linear system per channel, ready to step.
#[derive(Debug)]
pub enum Recurrence {
    /// `x' = a ⊙ x + u`, `y = 2 Re sum_n c_n x'_n` (`c` includes B̄); shapes `[channels, modes]`.
    Diagonal { a: Tensor, c: Tensor },
    /// `x' = A x + b u`, `y = Re(c · x')`; `a: [channels, N, N]`, `b, c: [channels, N]`.
    Dense { a: Tensor, b: Tensor, c: Tensor },
}

/// The state of a bank of channels: complex `[batch, channels, modes]`.
#[derive(Debug)]
pub struct SsmState {
    pub x: Tensor,
}

impl Recurrence {
    /// A zero state for `batch` sequences.
    pub fn zero_state(&self, batch: i64) -> SsmState {
        let c = match self {
            Recurrence::Diagonal { c, .. } | Recurrence::Dense { c, .. } => c,
        };
        let (channels, modes) = c.size2().expect("c is [channels, modes]");
        SsmState { x: Tensor::zeros([batch, channels, modes], (Kind::ComplexFloat, c.device())) }
    }

    /// One step: `u: [batch, channels]` (real) -> `y: [batch, channels]` (f32), updating `state`.
    pub fn step(&self, u: &Tensor, state: &mut SsmState) -> Tensor {
        let u = u.to_kind(Kind::Float).unsqueeze(-1); // [b, h, 1]
        match self {
            Recurrence::Diagonal { a, c } => {
                state.x = &state.x * a + u;
                (&state.x * c).sum_dim_intlist(-1, false, None::<Kind>).real() * 2.0
            }
            Recurrence::Dense { a, b, c } => {
                let ax = a.matmul(&state.x.unsqueeze(-1)).squeeze_dim(-1); // [b, h, n]
                state.x = ax + b * u;
                (&state.x * c).sum_dim_intlist(-1, false, None::<Kind>).real()
            }
        }
    }
}
