//! Consistent perturbation of released statistics by the cell-key method
//! (ABS, ONS, Statistics Sweden; the construction of the table follows the
//! maximum-entropy approach of Destatis' `ptable` package, generated here,
//! never copied).
//!
//! ```text
//!   person ──▶ record key rk ∈ u32 (uniform; derived at the nodes, the same in every register)
//!   cell   ──▶ cell key  = Σ rk of its distinct persons  (mod 2^32)  ──▶ u = key / 2^32 ∈ [0, 1)
//!
//!   count i, u  ──▶ row min(i, i_max) of the table ──inverse CDF at u──▶ deviation v ∈ [−D, D]
//!                                                                        released i + v
//!   magnitude x, largest contributor m, key
//!               ──▶ u' = splitmix64(key, stream) ──▶ continuous v' ∈ [−D, D] ──▶ x + δ·m·v'
//!   mean, share, variance ──▶ computed from the perturbed parts (helpers below)
//! ```
//!
//! The same set of persons always has the same cell key, so it always gets the
//! same noise, whatever the query text, order or partitioning: repeating or
//! rephrasing a query averages nothing away. Two cells that differ by one
//! person have unrelated keys and get independent draws.
//!
//! # The table
//!
//! For every true count `i` the table holds a distribution over deviations
//! `v ∈ [−D, D]` (`D` = [`PerturbationParams::max_deviation`]). Its support is
//! restricted so that the result `i + v` is never negative and never in
//! `1..k−1` (`k` = [`PerturbationParams::threshold`]): a count of 0 stays 0, a
//! count of at least `k` stays at least `k` (so only an empty cell is released
//! as 0, also when `D ≥ k`). On that support the distribution
//! has mean 0 and variance `V` and, among all such distributions, maximum
//! entropy: `p(v) ∝ exp(λ₁·v + λ₂·v²)`, with `λ` found by Newton's method on the
//! convex dual. Where the support makes variance `V` infeasible the row takes
//! the feasible variance nearest to `V` (the two-point distribution at the ends
//! of the support, the only one with that variance). Rows from `k + D` on are
//! all equal (the *general row*). The exceptions, for counts `1..k−1` (which the
//! threshold rule withholds anyway), are spelt out in [`PTable::build`].
//!
//! For magnitudes the noise is continuous (a discrete deviation would leave a
//! large share of sums exact, and two exact sums that differ by one person
//! give that person's value): the maximum-entropy density on `[−D, D]` with
//! mean 0 and variance `V`, `f(v) ∝ exp(θ·v²)`, tabulated on a fine grid.
//!
//! The reviewer's description, with the measured accuracy, is in
//! `docs/disclosure.md` ("Perturbation (cell-key method)").

use std::fmt;

/// Largest maximum deviation accepted: beyond it the table says little about
/// counts, and a typo (`200` for `2`) should not build a table quietly.
pub const MAX_MAX_DEVIATION: u32 = 100;

/// Grid cells of the tabulated magnitude density on `[0, D]`.
const MAGNITUDE_GRID: usize = 4096;

/// The parameters of a perturbation table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerturbationParams {
    /// `D`: no released count differs from the true one by more than this.
    pub max_deviation: u32,
    /// `V`: the variance of the deviation (where the support allows it).
    pub variance: f64,
    /// `k`: no released count lies in `1..k−1` (the disclosure threshold, `min_cell_persons`).
    pub threshold: u32,
    /// `δ`: magnitudes get noise `δ · largest contributor · v`.
    pub magnitude_noise: f64,
}

impl Default for PerturbationParams {
    fn default() -> Self {
        PerturbationParams { max_deviation: 2, variance: 1.0, threshold: 5, magnitude_noise: 0.05 }
    }
}

/// Why a perturbation table cannot be built: the parameters are not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PerturbationError {
    #[error(
        "perturbation max_deviation = {max_deviation} is out of range: a whole number from 1 to {MAX_MAX_DEVIATION}"
    )]
    MaxDeviation { max_deviation: u32 },
    #[error(
        "perturbation variance = {variance} is out of range: above 0 and below the square of max_deviation ({max}); raise max_deviation or lower the variance"
    )]
    Variance { variance: f64, max: f64 },
    #[error("perturbation threshold = 0 is out of range: the threshold is min_cell_persons, at least 1")]
    Threshold,
    #[error(
        "magnitude_noise = {magnitude_noise} is out of range: a share of the largest contributor above 0 and at most 1"
    )]
    MagnitudeNoise { magnitude_noise: f64 },
    /// Our bug: the solver did not meet the constraints.
    #[error(
        "internal error (a samkor bug): the perturbation row for count {count} does not meet its constraints (mean {mean}, variance {variance})"
    )]
    Unsolved { count: u64, mean: f64, variance: f64 },
}

/// The distribution of the deviation for one true count.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Deviations with positive probability, ascending.
    deviations: Vec<i64>,
    probabilities: Vec<f64>,
    /// Cumulative probabilities; the last is exactly 1.
    cumulative: Vec<f64>,
}

impl Row {
    fn new(pairs: Vec<(i64, f64)>) -> Row {
        let pairs: Vec<(i64, f64)> = pairs.into_iter().filter(|(_, p)| *p > 0.0).collect();
        let total: f64 = pairs.iter().map(|(_, p)| p).sum();
        let deviations: Vec<i64> = pairs.iter().map(|(v, _)| *v).collect();
        let probabilities: Vec<f64> = pairs.iter().map(|(_, p)| p / total).collect();
        let mut cumulative = Vec::with_capacity(probabilities.len());
        let mut acc = 0.0;
        for p in &probabilities {
            acc += p;
            cumulative.push(acc);
        }
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Row { deviations, probabilities, cumulative }
    }

    fn point(v: i64) -> Row {
        Row::new(vec![(v, 1.0)])
    }

    /// Deviations with positive probability, ascending.
    pub fn deviations(&self) -> &[i64] {
        &self.deviations
    }

    /// Their probabilities (summing to 1).
    pub fn probabilities(&self) -> &[f64] {
        &self.probabilities
    }

    /// The deviation at quantile `u ∈ [0, 1)`: the smallest `v` whose
    /// cumulative probability exceeds `u`.
    pub fn quantile(&self, u: f64) -> i64 {
        let j = self.cumulative.partition_point(|&c| c <= u);
        self.deviations[j.min(self.deviations.len() - 1)]
    }

    /// `E[v]`.
    pub fn mean(&self) -> f64 {
        self.deviations.iter().zip(&self.probabilities).map(|(v, p)| *v as f64 * p).sum()
    }

    /// `Var[v]`.
    pub fn variance(&self) -> f64 {
        let m = self.mean();
        self.deviations.iter().zip(&self.probabilities).map(|(v, p)| (*v as f64 - m).powi(2) * p).sum()
    }

    /// `E|v|`: the expected absolute deviation of a released count.
    pub fn mean_abs(&self) -> f64 {
        self.deviations.iter().zip(&self.probabilities).map(|(v, p)| (*v as f64).abs() * p).sum()
    }

    /// `P(v ≠ 0)`: how often a released count differs from the true one.
    pub fn moved(&self) -> f64 {
        self.deviations.iter().zip(&self.probabilities).filter(|(v, _)| **v != 0).fold(0.0, |acc, (_, p)| acc + p)
    }
}

/// The accuracy of one row of a table, for the documentation and the tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowAccuracy {
    /// The true count; for the general row the first count it applies to.
    pub count: u64,
    /// This row applies to every larger count too.
    pub general: bool,
    pub mean: f64,
    pub variance: f64,
    /// `E|v|`.
    pub mean_abs: f64,
    /// `P(v ≠ 0)`.
    pub moved: f64,
}

/// A perturbation table: one row per true count `0..=i_max`, the last row
/// serving every larger count, plus the continuous magnitude distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct PTable {
    params: PerturbationParams,
    rows: Vec<Row>,
    magnitude: MagnitudeNoise,
}

impl PTable {
    /// Builds the table for `params`.
    ///
    /// Row `i` (true count), with `D`, `V`, `k` from `params`:
    /// * `i = 0`: always 0 (nobody stays nobody).
    /// * otherwise the support is every `v` with `|v| ≤ D` and, for `i ≥ k`,
    ///   `i + v ≥ k`; for `i < k`, `i + v = 0` or `i + v ≥ k` (a count of at
    ///   least `k` is never released as 0: a released 0 is an empty cell). When it has deviations on both sides of 0 the row
    ///   has mean 0 and variance `V`, or, where the support cannot carry `V`,
    ///   the feasible variance nearest to `V` (a two-point distribution: at
    ///   the ends of the support when `V` is too large, at the deviations
    ///   nearest to 0 on either side when 0 is excluded and `V` is too
    ///   small); within that, maximum entropy.
    /// * When the support lies on one side of 0 (with or without 0 itself) a
    ///   zero mean forces the deviation nearest to 0: `i = k` is released
    ///   exactly (its support is `0..=D`).
    /// * Counts `1..k−1` whose support is empty (when `k > 2D + 1`) go to
    ///   the nearer of 0 and `k` (ties to `k`), the one place where `|v|`
    ///   may exceed `D`. Such counts have fewer than `k` persons behind them
    ///   whenever they count persons or rows, so the threshold rule withholds
    ///   them before any perturbation.
    pub fn build(params: &PerturbationParams) -> Result<PTable, PerturbationError> {
        let d = params.max_deviation;
        if d == 0 || d > MAX_MAX_DEVIATION {
            return Err(PerturbationError::MaxDeviation { max_deviation: d });
        }
        let max_var = f64::from(d).powi(2);
        if !(params.variance > 0.0 && params.variance < max_var) {
            return Err(PerturbationError::Variance { variance: params.variance, max: max_var });
        }
        if params.threshold == 0 {
            return Err(PerturbationError::Threshold);
        }
        if !(params.magnitude_noise > 0.0 && params.magnitude_noise <= 1.0) {
            return Err(PerturbationError::MagnitudeNoise { magnitude_noise: params.magnitude_noise });
        }
        let i_max = u64::from(params.threshold) + u64::from(d);
        let rows = (0..=i_max).map(|i| row_for(i, params)).collect::<Result<Vec<_>, _>>()?;
        let magnitude = MagnitudeNoise::new(d, params.variance);
        Ok(PTable { params: *params, rows, magnitude })
    }

    pub fn params(&self) -> &PerturbationParams {
        &self.params
    }

    /// The rows, index = true count; the last is the general row.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The row used for `true_count`.
    pub fn row(&self, true_count: u64) -> &Row {
        let last = self.rows.len() - 1;
        &self.rows[usize::try_from(true_count).map_or(last, |i| i.min(last))]
    }

    /// The first count served by the general row.
    pub fn general_from(&self) -> u64 {
        self.rows.len() as u64 - 1
    }

    /// The deviation added to `true_count` in a cell with key `cell_key`.
    pub fn noise(&self, true_count: u64, cell_key: u32) -> i64 {
        self.row(true_count).quantile(key_uniform(cell_key))
    }

    /// The released count: `true_count + noise`, never negative, never in `1..k−1`.
    pub fn perturb_count(&self, true_count: u64, cell_key: u32) -> u64 {
        let v = self.noise(true_count, cell_key);
        // The row's support keeps the result at or above 0.
        true_count.saturating_add_signed(v)
    }

    /// The deviation `v'` in `[−D, D]` of a magnitude of the cell with key
    /// `cell_key`; `stream` tells apart the magnitudes of one cell (see
    /// [`PTable::perturb_magnitude`]).
    pub fn magnitude_deviation(&self, cell_key: u32, stream: u32) -> f64 {
        self.magnitude.quantile(magnitude_uniform(cell_key, stream))
    }

    /// A released magnitude: `value + δ · |largest_contributor| · v'`.
    ///
    /// `largest_contributor` is the largest contribution of one person to
    /// the cell (by absolute value). `stream` must identify *what* is summed,
    /// independently of how the query is written (for instance a hash of the
    /// canonical column name, and a different one for Σx²), so that two sums
    /// in one cell get independent noise while the same sum over the same
    /// persons always gets the same. The draw is independent of the count
    /// noise of the same cell.
    pub fn perturb_magnitude(&self, value: f64, largest_contributor: f64, cell_key: u32, stream: u32) -> f64 {
        value + self.params.magnitude_noise * largest_contributor.abs() * self.magnitude_deviation(cell_key, stream)
    }

    /// The accuracy of every row (the last is the general row).
    pub fn accuracy(&self) -> Vec<RowAccuracy> {
        let last = self.rows.len() - 1;
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| RowAccuracy {
                count: i as u64,
                general: i == last,
                mean: r.mean(),
                variance: r.variance(),
                mean_abs: r.mean_abs(),
                moved: r.moved(),
            })
            .collect()
    }

    /// `E|v|` for a true count, exact from the row.
    pub fn expected_abs_deviation(&self, true_count: u64) -> f64 {
        self.row(true_count).mean_abs()
    }

    /// The variance of the deviation actually achieved for a true count.
    pub fn achieved_variance(&self, true_count: u64) -> f64 {
        self.row(true_count).variance()
    }

    /// The variance of the magnitude deviation `v'` (equal to `V` up to rounding).
    pub fn magnitude_variance(&self) -> f64 {
        self.magnitude.variance()
    }
}

impl fmt::Display for PTable {
    /// The table as text: one line per row, probabilities per deviation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = i64::from(self.params.max_deviation);
        write!(f, "{:>6}", "i")?;
        for v in -d..=d {
            write!(f, " {v:>7}")?;
        }
        writeln!(f, " {:>8} {:>8}", "var", "E|v|")?;
        let last = self.rows.len() - 1;
        for (i, row) in self.rows.iter().enumerate() {
            let label = if i == last { format!("{i}+") } else { i.to_string() };
            write!(f, "{label:>6}")?;
            for v in -d..=d {
                match row.deviations.iter().position(|&x| x == v) {
                    Some(j) => write!(f, " {:>7.4}", row.probabilities[j])?,
                    None => write!(f, " {:>7}", ".")?,
                }
            }
            // Deviations beyond D (empty supports below k) are listed after the grid.
            for (x, p) in row.deviations.iter().zip(&row.probabilities).filter(|(x, _)| x.abs() > d) {
                write!(f, " [{x}: {p:.4}]")?;
            }
            writeln!(f, " {:>8.4} {:>8.4}", row.variance(), row.mean_abs())?;
        }
        Ok(())
    }
}

/// The uniform in `[0, 1)` of a cell key: `key / 2^32`.
pub fn key_uniform(cell_key: u32) -> f64 {
    f64::from(cell_key) / 4_294_967_296.0
}

/// The cell key of a set of record keys: their sum modulo 2^32. Each person
/// must be counted once (distinct persons).
pub fn cell_key(record_keys: impl IntoIterator<Item = u32>) -> u32 {
    record_keys.into_iter().fold(0u32, u32::wrapping_add)
}

/// SplitMix64's finaliser: a bijection of `u64` that mixes every input bit into every output bit.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Tells magnitude draws apart from anything else derived from a cell key.
const MAGNITUDE_DOMAIN: u64 = 0x6D61_676E_0000_0000; // "magn"

/// The uniform in `[0, 1)` for a magnitude of a cell: `splitmix64` of the key
/// and the stream, so it is repeatable and independent of the count draw
/// (which uses the key itself).
pub fn magnitude_uniform(cell_key: u32, stream: u32) -> f64 {
    let x = (u64::from(stream) << 32 | u64::from(cell_key)) ^ MAGNITUDE_DOMAIN;
    (splitmix64(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn row_for(i: u64, params: &PerturbationParams) -> Result<Row, PerturbationError> {
    if i == 0 {
        return Ok(Row::point(0));
    }
    let d = i64::from(params.max_deviation);
    let k = i64::from(params.threshold);
    let n = i as i64;
    // At or above k the result stays at or above k (only an empty cell is
    // released as 0); below k it is 0 or at least k.
    let support: Vec<i64> = (-d..=d).filter(|v| if n >= k { n + v >= k } else { n + v == 0 || n + v >= k }).collect();
    if support.is_empty() {
        // 1 ≤ i < k with the gap to both 0 and k wider than D.
        return Ok(Row::point(if n < k - n { -n } else { k - n }));
    }
    let neg: Vec<i64> = support.iter().copied().filter(|v| *v < 0).collect();
    let pos: Vec<i64> = support.iter().copied().filter(|v| *v > 0).collect();
    let zero = support.contains(&0);
    if neg.is_empty() || pos.is_empty() {
        // A zero mean is possible only at 0, or comes nearest at the smallest |v|.
        let nearest = support.iter().copied().min_by_key(|v| v.abs()).unwrap_or(0);
        return Ok(Row::point(nearest));
    }
    let (a, b) = (neg[0], pos[pos.len() - 1]);
    let max_var = (-a * b) as f64;
    let (a0, b0) = (neg[neg.len() - 1], pos[0]);
    let min_var = if zero { 0.0 } else { (-a0 * b0) as f64 };
    let two_point = |lo: i64, hi: i64| {
        let (lo_f, hi_f) = (lo as f64, hi as f64);
        Row::new(vec![(lo, hi_f / (hi_f - lo_f)), (hi, -lo_f / (hi_f - lo_f))])
    };
    let v = params.variance;
    let row = if v >= max_var {
        two_point(a, b)
    } else if v <= min_var {
        two_point(a0, b0)
    } else {
        Row::new(max_entropy(&support, v))
    };
    let (mean, variance) = (row.mean(), row.variance());
    let target = v.clamp(min_var, max_var);
    if mean.abs() > 1e-12 || (variance - target).abs() > 1e-10 {
        return Err(PerturbationError::Unsolved { count: i, mean, variance });
    }
    Ok(row)
}

/// The distribution on `support` with mean 0, variance `v` and maximum
/// entropy: `p(x) ∝ exp(λ₁x + λ₂x²)`. Newton's method on the dual
/// `F(λ) = log Σ exp(λ₁x + λ₂x²) − λ₂v` (convex; its gradient is
/// `(E[x], E[x²] − v)`, its Hessian the covariance of `(x, x²)`), with
/// backtracking. `v` must lie strictly between the least and the largest
/// variance a zero-mean distribution on `support` can have.
fn max_entropy(support: &[i64], v: f64) -> Vec<(i64, f64)> {
    let xs: Vec<f64> = support.iter().map(|&x| x as f64).collect();
    // log Z and the probabilities at λ.
    let eval = |l1: f64, l2: f64| -> (f64, Vec<f64>) {
        let e: Vec<f64> = xs.iter().map(|x| l1 * x + l2 * x * x).collect();
        let m = e.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = e.iter().map(|t| (t - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (m + z.ln(), w.into_iter().map(|wi| wi / z).collect())
    };
    let dual = |l1: f64, l2: f64| eval(l1, l2).0 - l2 * v;
    let (mut l1, mut l2) = (0.0f64, 0.0f64);
    for _ in 0..500 {
        let (_, p) = eval(l1, l2);
        let m1: f64 = xs.iter().zip(&p).map(|(x, p)| x * p).sum();
        let m2: f64 = xs.iter().zip(&p).map(|(x, p)| x * x * p).sum();
        let m3: f64 = xs.iter().zip(&p).map(|(x, p)| x.powi(3) * p).sum();
        let m4: f64 = xs.iter().zip(&p).map(|(x, p)| x.powi(4) * p).sum();
        let g = [m1, m2 - v];
        if g[0].abs() < 1e-14 && g[1].abs() < 1e-13 {
            break;
        }
        let h11 = m2 - m1 * m1;
        let h12 = m3 - m1 * m2;
        let h22 = m4 - m2 * m2;
        let det = h11 * h22 - h12 * h12;
        // Newton direction; plain gradient descent if the Hessian is (numerically) singular.
        let (s1, s2) = if det > 1e-300 {
            (-(h22 * g[0] - h12 * g[1]) / det, -(h11 * g[1] - h12 * g[0]) / det)
        } else {
            (-g[0], -g[1])
        };
        let f0 = dual(l1, l2);
        let slope = g[0] * s1 + g[1] * s2;
        let mut t = 1.0;
        while t > 1e-12 && dual(l1 + t * s1, l2 + t * s2) > f0 + 1e-4 * t * slope {
            t *= 0.5;
        }
        l1 += t * s1;
        l2 += t * s2;
    }
    let (_, p) = eval(l1, l2);
    support.iter().copied().zip(p).collect()
}

/// The continuous deviation for magnitudes: density `∝ exp(θ·v²)` on
/// `[−D, D]`, mean 0, variance `V`, maximum entropy among piecewise-uniform
/// densities on a grid of `MAGNITUDE_GRID` cells per half (so the variance
/// of the tabulated distribution, which is what is sampled, is `V` itself).
#[derive(Debug, Clone, PartialEq)]
struct MagnitudeNoise {
    /// Cell edges on `[0, D]`.
    edges: Vec<f64>,
    /// Cumulative probability at each edge of the half distribution on `[0, D]`.
    cumulative: Vec<f64>,
}

impl MagnitudeNoise {
    fn new(d: u32, v: f64) -> MagnitudeNoise {
        let d = f64::from(d);
        let n = MAGNITUDE_GRID;
        let edges: Vec<f64> = (0..=n).map(|j| d * j as f64 / n as f64).collect();
        // E[v²] within each cell of a uniform density.
        let c: Vec<f64> = edges.windows(2).map(|w| (w[0] * w[0] + w[0] * w[1] + w[1] * w[1]) / 3.0).collect();
        let (c_min, c_max) = (c[0], c[c.len() - 1]);
        // The largest exponent, for a stable exp: c rises with the cell index.
        let top = |theta: f64| if theta >= 0.0 { theta * c_max } else { theta * c_min };
        // E[v²] and its derivative in θ (the variance of c), one pass.
        let moments = |theta: f64| -> (f64, f64) {
            let m = top(theta);
            let (mut z, mut s1, mut s2) = (0.0, 0.0, 0.0);
            for ci in &c {
                let w = (theta * ci - m).exp();
                z += w;
                s1 += w * ci;
                s2 += w * ci * ci;
            }
            let e = s1 / z;
            (e, (s2 / z - e * e).max(0.0))
        };
        // E[v²] rises with θ: bracket V (θ in units of 1/D²), then Newton
        // steps kept inside the bracket, halving where a step would leave it.
        let scale = 1.0 / (d * d);
        let (mut lo, mut hi) = (-1.0f64, 1.0f64);
        while moments(lo * scale).0 > v && lo > -1e12 {
            lo *= 2.0;
        }
        while moments(hi * scale).0 < v && hi < 1e12 {
            hi *= 2.0;
        }
        let mut theta = 0.5 * (lo + hi);
        for _ in 0..200 {
            let (e, slope) = moments(theta * scale);
            if (e - v).abs() <= 1e-14 * v.max(1.0) {
                break;
            }
            if e < v {
                lo = theta;
            } else {
                hi = theta;
            }
            let newton = theta - (e - v) / (slope * scale);
            theta = if slope > 0.0 && newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
            if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()) {
                break;
            }
        }
        let m = top(theta * scale);
        let w: Vec<f64> = c.iter().map(|ci| (theta * scale * ci - m).exp()).collect();
        let z: f64 = w.iter().sum();
        let m: Vec<f64> = w.into_iter().map(|x| x / z).collect();
        let mut cumulative = Vec::with_capacity(n + 1);
        let mut acc = 0.0;
        cumulative.push(0.0);
        for mi in &m {
            acc += mi;
            cumulative.push(acc);
        }
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        MagnitudeNoise { edges, cumulative }
    }

    /// The deviation at `u ∈ [0, 1)`: below ½ the negative half, above it the
    /// positive half, each by the inverse of the tabulated CDF (linear within a cell).
    fn quantile(&self, u: f64) -> f64 {
        let (sign, w) = if u < 0.5 { (-1.0, 1.0 - 2.0 * u) } else { (1.0, 2.0 * u - 1.0) };
        let j = self.cumulative.partition_point(|&c| c <= w).clamp(1, self.cumulative.len() - 1);
        let (c0, c1) = (self.cumulative[j - 1], self.cumulative[j]);
        let (x0, x1) = (self.edges[j - 1], self.edges[j]);
        let t = if c1 > c0 { ((w - c0) / (c1 - c0)).clamp(0.0, 1.0) } else { 0.0 };
        sign * (x0 + t * (x1 - x0))
    }

    /// `E[v²]` of the tabulated distribution (its mean is 0 by symmetry).
    fn variance(&self) -> f64 {
        self.cumulative
            .windows(2)
            .zip(self.edges.windows(2))
            .map(|(c, x)| (c[1] - c[0]) * (x[0] * x[0] + x[0] * x[1] + x[1] * x[1]) / 3.0)
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Statistics computed from perturbed parts
// ---------------------------------------------------------------------------

/// A mean from a perturbed sum and a perturbed count (never from the true
/// count: an exact denominator next to the released count would give the
/// count's noise back). `None` for a count of 0.
pub fn mean_from_parts(perturbed_sum: f64, perturbed_count: u64) -> Option<f64> {
    (perturbed_count > 0).then(|| perturbed_sum / perturbed_count as f64)
}

/// A share (proportion of an indicator, a percentage / 100) from a perturbed
/// part and a perturbed whole, clamped to `[0, 1]` (the two are perturbed
/// independently, so the part may exceed the whole). `None` for a whole of 0.
pub fn share_from_parts(perturbed_part: u64, perturbed_whole: u64) -> Option<f64> {
    (perturbed_whole > 0).then(|| (perturbed_part as f64 / perturbed_whole as f64).clamp(0.0, 1.0))
}

/// Which variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceKind {
    /// Divides by `n − 1` (`var`, `var_samp`, `stddev`).
    Sample,
    /// Divides by `n` (`var_pop`, `stddev_pop`).
    Population,
}

/// A variance from perturbed `n`, `Σx` and `Σx²`, clamped at 0 (perturbation
/// can make `Σx² − (Σx)²/n` negative). `None` where it is undefined (`n = 0`,
/// or `n = 1` for the sample variance).
pub fn variance_from_parts(
    perturbed_n: u64,
    perturbed_sum: f64,
    perturbed_sum_sq: f64,
    kind: VarianceKind,
) -> Option<f64> {
    let n = perturbed_n as f64;
    let denominator = match kind {
        VarianceKind::Sample if perturbed_n >= 2 => n - 1.0,
        VarianceKind::Population if perturbed_n >= 1 => n,
        _ => return None,
    };
    Some(((perturbed_sum_sq - perturbed_sum * perturbed_sum / n) / denominator).max(0.0))
}

/// The standard deviation from perturbed parts: the square root of [`variance_from_parts`].
pub fn stddev_from_parts(
    perturbed_n: u64,
    perturbed_sum: f64,
    perturbed_sum_sq: f64,
    kind: VarianceKind,
) -> Option<f64> {
    variance_from_parts(perturbed_n, perturbed_sum, perturbed_sum_sq, kind).map(f64::sqrt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(d: u32, v: f64, k: u32) -> PerturbationParams {
        PerturbationParams { max_deviation: d, variance: v, threshold: k, magnitude_noise: 0.05 }
    }

    fn table(d: u32, v: f64, k: u32) -> PTable {
        PTable::build(&params(d, v, k)).expect("valid parameters")
    }

    /// `n` keys spread evenly over `u32` (a stratified sample of u).
    fn spread_keys(n: u64) -> impl Iterator<Item = u32> {
        (0..n).map(move |j| ((j * (1u64 << 32) + (1u64 << 31)) / n) as u32)
    }

    /// `n` pseudo-random keys.
    fn random_keys(n: u64, seed: u64) -> impl Iterator<Item = u32> {
        (0..n).map(move |j| (splitmix64(seed ^ j.wrapping_mul(0xA24B_AED4_963E_E407)) >> 32) as u32)
    }

    const SETTINGS: [(u32, f64, u32); 6] =
        [(2, 1.0, 5), (5, 3.0, 10), (3, 2.0, 5), (1, 0.5, 3), (2, 1.0, 1), (4, 10.0, 5)];

    #[test]
    fn every_row_meets_its_constraints() {
        for (d, v, k) in SETTINGS {
            let t = table(d, v, k);
            assert_eq!(t.general_from(), u64::from(k + d));
            for (i, row) in t.rows().iter().enumerate() {
                let i = i as i64;
                let sum: f64 = row.probabilities().iter().sum();
                assert!((sum - 1.0).abs() < 1e-12, "D={d} V={v} k={k} row {i}: probabilities sum to {sum}");
                for &dev in row.deviations() {
                    let r = i + dev;
                    assert!(r >= 0, "row {i}: negative result");
                    assert!(r == 0 || r >= i64::from(k), "D={d} V={v} k={k} row {i}: result {r} in 1..k-1");
                }
                if i == 0 {
                    assert_eq!(row.deviations(), [0], "zero stays zero");
                }
                if i >= i64::from(k) {
                    assert!(row.deviations().iter().all(|dev| dev.abs() <= i64::from(d)), "row {i}: beyond D");
                    assert!(row.mean().abs() < 1e-9, "D={d} V={v} k={k} row {i}: mean {}", row.mean());
                    // Support max(−D, k−i)..=D: V where it fits, else the largest zero-mean variance.
                    let below = (i - i64::from(k)).min(i64::from(d));
                    let want = v.min((below * i64::from(d)) as f64);
                    assert!(
                        (row.variance() - want).abs() < 1e-9,
                        "D={d} V={v} k={k} row {i}: variance {} instead of {want}",
                        row.variance()
                    );
                }
            }
            // The general row carries exactly V with mean 0 and full support.
            let g = t.row(u64::MAX);
            assert!((g.variance() - v).abs() < 1e-9 && g.mean().abs() < 1e-9);
            assert_eq!(g.deviations().len(), 2 * d as usize + 1);
            assert_eq!(t.row(u64::from(k + d) + 1000), g);
        }
    }

    #[test]
    fn rows_where_v_is_infeasible_take_the_nearest_feasible_variance() {
        // D = 2, V = 3, k = 5: row 6 has support −1..2, largest zero-mean variance 1·2 = 2.
        let t = table(2, 3.0, 5);
        let r6 = t.row(6);
        assert_eq!(r6.deviations(), [-1, 2]);
        assert!((r6.variance() - 2.0).abs() < 1e-12 && r6.mean().abs() < 1e-12);
        // Row k is released exactly: support 0..=D admits only 0 with mean 0.
        assert_eq!(t.row(5).deviations(), [0]);
        // Below k with 0 excluded: row 4 may go to 0 (−4, beyond D) or 5, 6 (+1, +2): support {1, 2}, one side.
        assert_eq!(t.row(4).deviations(), [1]);
        // Row 2 (k = 5, D = 2): 0 by −2; 5 needs +3 > D: goes to 0.
        assert_eq!(t.row(2).deviations(), [-2]);
        // k = 10, D = 2: row 5 cannot reach 0 or 10 within D: nearer of the two, ties to k.
        let t = table(2, 1.0, 10);
        assert_eq!(t.row(5).deviations(), [5]);
        assert_eq!(t.row(4).deviations(), [-4]);
        // Both sides without 0 and V below the least variance: row 3 with k = 5, D = 3:
        // support {−3, 2, 3}, least zero-mean variance 3·2 = 6 > V = 2.
        let t = table(3, 2.0, 5);
        assert_eq!(t.row(3).deviations(), [-3, 2]);
        assert!((t.row(3).variance() - 6.0).abs() < 1e-12);
    }

    #[test]
    fn same_key_same_noise_and_never_beyond_d_or_in_the_forbidden_range() {
        let t = table(2, 1.0, 5);
        for key in random_keys(20_000, 7) {
            for i in [0u64, 5, 6, 7, 8, 9, 50, 1_000_000] {
                let v = t.noise(i, key);
                assert_eq!(v, t.noise(i, key), "repeatable");
                assert!(v.abs() <= 2);
                let r = t.perturb_count(i, key);
                assert_eq!(r as i64, i as i64 + v);
                assert!(r == 0 || r >= 5);
                if i == 0 {
                    assert_eq!(r, 0);
                }
            }
        }
        // The table is a function of its parameters.
        assert_eq!(table(5, 3.0, 10), table(5, 3.0, 10));
    }

    #[test]
    fn noise_over_spread_keys_has_mean_zero_and_variance_v() {
        for (d, v, k) in [(2, 1.0, 5), (5, 3.0, 10)] {
            let t = table(d, v, k);
            for i in [u64::from(k) + 1, u64::from(k + d), 1000] {
                let target = t.achieved_variance(i);
                for (label, keys) in [
                    ("spread", spread_keys(100_000).collect::<Vec<_>>()),
                    ("random", random_keys(400_000, 11).collect::<Vec<_>>()),
                ] {
                    let n = keys.len() as f64;
                    let noise: Vec<f64> = keys.iter().map(|&key| t.noise(i, key) as f64).collect();
                    let mean = noise.iter().sum::<f64>() / n;
                    let var = noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                    let tol = if label == "spread" { 1e-3 } else { 0.02 * v.max(1.0) };
                    assert!(mean.abs() < tol, "{label} D={d} i={i}: mean {mean}");
                    assert!((var - target).abs() < tol * 2.0, "{label} D={d} i={i}: variance {var} vs {target}");
                }
            }
        }
    }

    #[test]
    fn a_person_more_or_less_gives_an_independent_draw() {
        // Cells differing by one record key: the two deviations agree no more
        // often than two independent draws from the general row would.
        let t = table(2, 1.0, 5);
        let g = t.row(1000);
        let p_same: f64 = g.probabilities().iter().map(|p| p * p).sum();
        let mut same = 0u64;
        let n = 200_000u64;
        for (key, rk) in random_keys(n, 3).zip(random_keys(n, 5)) {
            if t.noise(1000, key) == t.noise(999, key.wrapping_sub(rk)) {
                same += 1;
            }
        }
        let observed = same as f64 / n as f64;
        assert!((observed - p_same).abs() < 0.01, "{observed} vs {p_same}");
    }

    #[test]
    fn accuracy_figures() {
        // cargo test -p samkor-policies accuracy_figures -- --nocapture
        for (d, v, k) in [(2, 1.0, 5), (5, 3.0, 10)] {
            let t = table(d, v, k);
            println!("D = {d}, V = {v}, k = {k}\n{t}");
            let acc = t.accuracy();
            let general = acc.last().expect("rows");
            assert!(general.general && (general.variance - v).abs() < 1e-9);
            // E|v| ≤ sqrt(V) (Jensen), and above V / D (|v| ≤ D ⇒ v² ≤ D·|v|).
            assert!(general.mean_abs <= v.sqrt() + 1e-12 && general.mean_abs >= v / f64::from(d) - 1e-12);
            for a in &acc {
                println!(
                    "i = {:>3}{}  mean {:+.2e}  variance {:.4}  E|v| {:.4}  P(moved) {:.4}",
                    a.count,
                    if a.general { "+" } else { " " },
                    a.mean,
                    a.variance,
                    a.mean_abs,
                    a.moved
                );
            }
            assert_eq!(t.expected_abs_deviation(u64::from(k)), 0.0, "k is released exactly");
            assert_eq!(t.expected_abs_deviation(10_000), general.mean_abs);
            println!("magnitude deviation variance {:.9}", t.magnitude_variance());
        }
        // The figures in docs/disclosure.md (rounded to 3 decimals).
        let t = table(2, 1.0, 5);
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        assert_eq!(r3(t.expected_abs_deviation(6)), 0.796);
        assert_eq!(r3(t.expected_abs_deviation(1000)), 0.745);
        let t = table(5, 3.0, 10);
        assert_eq!(r3(t.expected_abs_deviation(1000)), 1.348);
    }

    /// The exact error of an attacker who averages `m` independent pairs of
    /// cells (with and without one person, all in the general row) and
    /// decides "the person is there" when the mean difference exceeds ½.
    fn split_averaging_error(t: &PTable, m: usize) -> f64 {
        let g = t.row(u64::MAX);
        let d = i64::from(t.params().max_deviation);
        // w = v₁ − v₂ on −2D..=2D.
        let mut w = vec![0.0; (4 * d + 1) as usize];
        for (a, pa) in g.deviations().iter().zip(g.probabilities()) {
            for (b, pb) in g.deviations().iter().zip(g.probabilities()) {
                w[(a - b + 2 * d) as usize] += pa * pb;
            }
        }
        // The sum of m copies, offset m·2D.
        let mut sum = vec![1.0];
        for _ in 0..m {
            let mut next = vec![0.0; sum.len() + w.len() - 1];
            for (i, p) in sum.iter().enumerate() {
                for (j, q) in w.iter().enumerate() {
                    next[i + j] += p * q;
                }
            }
            sum = next;
        }
        let offset = m as i64 * 2 * d;
        // Without the person (true difference 0): wrong when Σ > m/2; a tie counts half.
        sum.iter()
            .enumerate()
            .map(|(i, p)| {
                let s2 = 2 * (i as i64 - offset);
                if s2 > m as i64 {
                    *p
                } else if s2 == m as i64 {
                    p / 2.0
                } else {
                    0.0
                }
            })
            .sum()
    }

    #[test]
    fn split_averaging_figures() {
        // cargo test -p samkor-policies split_averaging_figures -- --nocapture
        let pairs_for = |t: &PTable, error: f64| (1..=400).find(|&m| split_averaging_error(t, m) <= error);
        for (d, v, k) in [(2, 1.0, 5), (5, 3.0, 10)] {
            let t = table(d, v, k);
            let one = split_averaging_error(&t, 1);
            let p5 = pairs_for(&t, 0.05).expect("found");
            let p1 = pairs_for(&t, 0.01).expect("found");
            println!("D = {d}, V = {v}: error with 1 pair {one:.3}; pairs for ≤ 5 % error {p5}, for ≤ 1 % {p1}");
            assert!(one > 0.2 && p5 > 5 && p1 > p5);
        }
    }

    #[test]
    fn magnitude_noise_is_continuous_symmetric_with_variance_v_and_independent_of_the_count() {
        for (d, v) in [(2u32, 1.0), (5, 3.0), (3, 8.5), (1, 0.05)] {
            let t = table(d, v, 5);
            assert!((t.magnitude_variance() - v).abs() < 1e-9, "D={d}: {}", t.magnitude_variance());
            let n = 200_000u64;
            let devs: Vec<f64> = spread_keys(n).map(|key| t.magnitude.quantile(key_uniform(key))).collect();
            let mean = devs.iter().sum::<f64>() / n as f64;
            let var = devs.iter().map(|x| x * x).sum::<f64>() / n as f64;
            assert!(mean.abs() < 1e-6, "D={d}: mean {mean}");
            assert!((var - v).abs() < 1e-3 * v.max(1.0), "D={d}: variance {var}");
            assert!(devs.iter().all(|x| x.abs() <= f64::from(d)));
        }
        let t = table(2, 1.0, 5);
        let keys: Vec<u32> = random_keys(200_000, 13).collect();
        let (mut sxy, mut sx, mut sy, mut sxx, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &key in &keys {
            let x = t.noise(1000, key) as f64;
            let y = t.magnitude_deviation(key, 0);
            assert_eq!(y, t.magnitude_deviation(key, 0), "repeatable");
            (sxy, sx, sy, sxx, syy) = (sxy + x * y, sx + x, sy + y, sxx + x * x, syy + y * y);
        }
        let n = keys.len() as f64;
        let corr = (sxy / n - sx / n * sy / n) / ((sxx / n - (sx / n).powi(2)) * (syy / n - (sy / n).powi(2))).sqrt();
        assert!(corr.abs() < 0.01, "count and magnitude noise correlate: {corr}");
        // Another stream of the same cell: a different draw.
        let differ = keys.iter().filter(|&&k| t.magnitude_deviation(k, 0) != t.magnitude_deviation(k, 1)).count();
        assert_eq!(differ, keys.len());
        // Value + δ · largest · v', scaled by the largest contributor's size.
        let key = keys[0];
        let v = t.magnitude_deviation(key, 0);
        assert!((t.perturb_magnitude(1000.0, 200.0, key, 0) - (1000.0 + 0.05 * 200.0 * v)).abs() < 1e-9);
        assert_eq!(t.perturb_magnitude(1000.0, -200.0, key, 0), t.perturb_magnitude(1000.0, 200.0, key, 0));
        assert_eq!(t.perturb_magnitude(0.0, 0.0, key, 0), 0.0);
    }

    #[test]
    fn cell_keys_add_record_keys_in_any_order() {
        let rks = [u32::MAX, 17, 3_000_000_000, 5];
        let mut rev = rks;
        rev.reverse();
        assert_eq!(cell_key(rks), cell_key(rev));
        assert_eq!(cell_key(rks), u32::MAX.wrapping_add(17).wrapping_add(3_000_000_000).wrapping_add(5));
        assert_eq!(cell_key([]), 0);
        assert_eq!(key_uniform(0), 0.0);
        assert!(key_uniform(u32::MAX) < 1.0);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let e = |p: PerturbationParams| PTable::build(&p).expect_err("refused").to_string();
        assert_eq!(
            e(params(0, 1.0, 5)),
            "perturbation max_deviation = 0 is out of range: a whole number from 1 to 100"
        );
        assert_eq!(
            e(params(2, 4.0, 5)),
            "perturbation variance = 4 is out of range: above 0 and below the square of max_deviation (4); raise max_deviation or lower the variance"
        );
        assert!(e(params(2, 0.0, 5)).contains("variance = 0 is out of range"));
        assert!(e(params(2, f64::NAN, 5)).contains("out of range"));
        assert!(e(params(2, 1.0, 0)).contains("threshold = 0"));
        assert!(
            e(PerturbationParams { magnitude_noise: 0.0, ..PerturbationParams::default() })
                .starts_with("magnitude_noise = 0 is out of range")
        );
        assert_eq!(PerturbationParams::default(), params(2, 1.0, 5));
    }

    #[test]
    fn statistics_from_perturbed_parts() {
        assert_eq!(mean_from_parts(50.0, 10), Some(5.0));
        assert_eq!(mean_from_parts(50.0, 0), None);
        assert_eq!(share_from_parts(3, 12), Some(0.25));
        assert_eq!(share_from_parts(13, 12), Some(1.0), "clamped");
        assert_eq!(share_from_parts(0, 0), None);
        // x = 1, 2, 3, 4: n 4, Σx 10, Σx² 30: sample variance 5/3, population 5/4.
        let s = variance_from_parts(4, 10.0, 30.0, VarianceKind::Sample).expect("defined");
        assert!((s - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(variance_from_parts(4, 10.0, 30.0, VarianceKind::Population), Some(1.25));
        assert_eq!(variance_from_parts(4, 10.0, 20.0, VarianceKind::Population), Some(0.0), "clamped at 0");
        assert_eq!(variance_from_parts(1, 3.0, 9.0, VarianceKind::Sample), None);
        assert_eq!(variance_from_parts(1, 3.0, 9.0, VarianceKind::Population), Some(0.0));
        assert_eq!(variance_from_parts(0, 0.0, 0.0, VarianceKind::Population), None);
        assert_eq!(stddev_from_parts(4, 10.0, 30.0, VarianceKind::Population), Some(1.25f64.sqrt()));
    }

    /// `cargo test -p samkor-policies perturbation::tests::build_and_lookup_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, prints the cost of building a table and of one lookup"]
    fn build_and_lookup_cost() {
        let start = std::time::Instant::now();
        let n = 20;
        for _ in 0..n {
            table(2, 1.0, 5);
        }
        println!("build: {:.2} ms per table", start.elapsed().as_secs_f64() * 1e3 / f64::from(n));
        let t = table(2, 1.0, 5);
        let keys: Vec<u32> = random_keys(1_000_000, 1).collect();
        let start = std::time::Instant::now();
        let mut acc = 0i64;
        let mut mag = 0.0;
        for &k in &keys {
            acc += t.noise(1000, k);
            mag += t.magnitude_deviation(k, 0);
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / keys.len() as f64;
        println!("count + magnitude lookup: {ns:.0} ns per cell (checksum {acc} {mag:.3})");
    }
}
