//! The standard jobs' data and weights, drawn exactly as the peer benchmarks (PyTorch
//! and JAX) draw them, so that every program times the same job and gets the same loss
//! (to ~1e-7 relative in f32): SplitMix64 streams, Box–Muller normals in f64.
//!
//! Stream `seed`, draw i: `mix(seed + (i + 1)·GOLDEN)`; uniform `((z >> 11) + 0.5) / 2⁵³`;
//! normal j `√(−2 ln u_{2j}) cos(2π u_{2j+1})`; label j `(z_j >> 33) mod Q`. Seeds and
//! scales: x 11 (1), labels 12; `W_x` (`W_xh`) 1 (1/√D), `W_h` (`W_hh`) 2 (1/√H), `b_h`
//! (RNN), `b_x` (GRU), `b` (LSTM) 3 (0.1), GRU `b_h` 6 (0.1), `W_hq` 4 (1/√H), `b_q` 5
//! (0.1). Gates side by side in PyTorch's order (GRU r z n, LSTM i f g o).
#![allow(dead_code)]

use ndarray::{Array2, Array3};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn draw(seed: u64, i: u64) -> u64 {
    mix(seed.wrapping_add((i + 1).wrapping_mul(GOLDEN)))
}

fn uniform(seed: u64, i: u64) -> f64 {
    ((draw(seed, i) >> 11) as f64 + 0.5) * (1.0 / 9_007_199_254_740_992.0)
}

/// `n` normals of stream `seed` times `scale`, rounded to f32.
fn normals(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|j| {
            let (u1, u2) = (uniform(seed, 2 * j), uniform(seed, 2 * j + 1));
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (scale * z) as f32
        })
        .collect()
}

/// A `rows × cols` matrix of normals (row-major).
pub fn matrix(seed: u64, (rows, cols): (usize, usize), scale: f64) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), normals(seed, rows * cols, scale))
        .unwrap_or_else(|_| Array2::zeros((rows, cols)))
}

/// One of the standard sizes.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// S1–S4 (tanh RNN) or G1–G3 (gated cells).
    pub name: &'static str,
    /// Batch rows B.
    pub b: usize,
    /// Input width D (= the classes Q).
    pub d: usize,
    /// Hidden width H.
    pub h: usize,
    /// Steps T.
    pub t: usize,
}

/// The tanh-RNN sizes.
pub const RNN_SIZES: [Size; 4] = [
    Size {
        name: "S1",
        b: 1,
        d: 32,
        h: 64,
        t: 100,
    },
    Size {
        name: "S2",
        b: 32,
        d: 64,
        h: 256,
        t: 100,
    },
    Size {
        name: "S3",
        b: 64,
        d: 128,
        h: 512,
        t: 50,
    },
    Size {
        name: "S4",
        b: 32,
        d: 64,
        h: 256,
        t: 1000,
    },
];

/// The gated-cell sizes (the dimensions of S1–S3).
pub const GATED_SIZES: [Size; 3] = [
    Size {
        name: "G1",
        b: 1,
        d: 32,
        h: 64,
        t: 100,
    },
    Size {
        name: "G2",
        b: 32,
        d: 64,
        h: 256,
        t: 100,
    },
    Size {
        name: "G3",
        b: 64,
        d: 128,
        h: 512,
        t: 50,
    },
];

impl Size {
    /// Minimal matrix-product FLOPs of forward + backward for `g` gate blocks (1 for
    /// the tanh RNN, 3 GRU, 4 LSTM): `2TB (2gDH + 3gH² + 3HQ)`.
    pub fn flops(&self, g: usize) -> f64 {
        let (b, d, h, t) = (self.b as f64, self.d as f64, self.h as f64, self.t as f64);
        let g = g as f64;
        2.0 * t * b * (2.0 * g * d * h + 3.0 * g * h * h + 3.0 * h * d)
    }

    /// The inputs (T, B, D) and labels (T, B).
    pub fn data(&self) -> (Array3<f32>, Array2<usize>) {
        let (t, b, d) = (self.t, self.b, self.d);
        let xs = Array3::from_shape_vec((t, b, d), normals(11, t * b * d, 1.0))
            .unwrap_or_else(|_| Array3::zeros((t, b, d)));
        let labels = Array2::from_shape_fn((t, b), |(s, r)| {
            ((draw(12, (s * b + r) as u64) >> 33) % d as u64) as usize
        });
        (xs, labels)
    }
}
