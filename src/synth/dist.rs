//! Random streams and the few distributions the generator needs, by hand (no extra crates).
//!
//! Every task gets its own `Pcg64Mcg`, seeded from the user's seed, a stream number and a
//! chunk number through SplitMix64, so the output does not depend on thread scheduling.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// The generator type used throughout.
pub(crate) type SynthRng = Pcg64Mcg;

/// SplitMix64 finaliser: a good 64-bit mixer for deriving seeds.
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// An independent stream for (`seed`, `stream`, `chunk`).
pub(crate) fn stream_rng(seed: u64, stream: u64, chunk: u64) -> SynthRng {
    let s = splitmix(splitmix(seed) ^ splitmix(stream.wrapping_mul(0x1_0000_0001) ^ (chunk << 20)));
    Pcg64Mcg::seed_from_u64(s)
}

/// Uniform in [0, 1).
pub(crate) fn unif(r: &mut SynthRng) -> f64 {
    r.random::<f64>()
}

/// Bernoulli(p).
pub(crate) fn chance(r: &mut SynthRng, p: f64) -> bool {
    unif(r) < p
}

/// Uniform integer in [lo, hi] (inclusive); `lo` if the range is empty.
pub(crate) fn int_in(r: &mut SynthRng, lo: i32, hi: i32) -> i32 {
    if hi <= lo { lo } else { r.random_range(lo..=hi) }
}

/// Uniform index in [0, n); n must be > 0.
pub(crate) fn index(r: &mut SynthRng, n: usize) -> usize {
    r.random_range(0..n)
}

/// Normal(mean, sd) by Box–Muller (one of the pair is discarded; simplicity over speed).
pub(crate) fn normal(r: &mut SynthRng, mean: f64, sd: f64) -> f64 {
    let u1 = 1.0 - unif(r); // (0, 1]
    let u2 = unif(r);
    mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Poisson(lambda) by inversion (Knuth); meant for small lambda (< 30).
pub(crate) fn poisson(r: &mut SynthRng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    let l = (-lambda).exp();
    let mut k = 0u32;
    let mut p = unif(r);
    while p > l && k < 200 {
        k += 1;
        p *= unif(r);
    }
    k
}

/// Index drawn with probability proportional to `weights` (linear scan; short lists only).
pub(crate) fn weighted(r: &mut SynthRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = unif(r) * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Index drawn from a cumulative weight table (`cum` ascending, last = total); binary search.
pub(crate) fn from_cumulative(r: &mut SynthRng, cum: &[f64]) -> usize {
    let total = cum.last().copied().unwrap_or(0.0);
    let x = unif(r) * total;
    cum.partition_point(|c| *c <= x).min(cum.len().saturating_sub(1))
}

/// Cumulative sums of `weights`.
pub(crate) fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .into_iter()
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}
