//! Control limits for funnel plots (Spiegelhalter 2005): for each unit's
//! denominator, the range in which its indicator falls with probability
//! `coverage` if the unit performs exactly at the target.
//!
//! Reference: D. J. Spiegelhalter, "Funnel plots for comparing institutional
//! performance", *Statistics in Medicine* 24 (2005) 1185–1202, appendix A.1
//! ("exact" limits for discrete data, with interpolation). For a discrete
//! indicator R with distribution function F and a tail probability p, let
//! r_p be the p-quantile (smallest r with F(r) ≥ p) and
//!
//! ```text
//! α   = (F(r_p) − p) / (F(r_p) − F(r_p − 1))
//! limit = (r_p − α) / d
//! ```
//!
//! where d is the denominator (n for a proportion, E for O/E). The
//! interpolation makes the limit a smooth function of d instead of a
//! staircase. Limits for `coverage` c use p = (1 − c)/2 (lower) and
//! p = (1 + c)/2 (upper): c = 0.95 gives the 2.5 % / 97.5 % ("2 SD") limits,
//! c = 0.998 the 0.1 % / 99.9 % ("3 SD") limits. At very small d the
//! interpolated lower limit can fall below 0; it is clamped to 0 (and a
//! proportion's upper limit to 1).

use crate::intervals::{Interval, valid_level};
use crate::special::{binomial_cdf, poisson_cdf};

/// The interpolated limit `(r_p − α)/d` for a discrete distribution function
/// `cdf` on 0..=`max`, tail probability p.
fn interpolated(cdf: impl Fn(i64) -> f64, max: i64, p: f64, d: f64) -> f64 {
    // Smallest r in 0..=max with cdf(r) >= p, by bisection: cdf(lo) < p <= cdf(hi).
    let (mut lo, mut hi) = (-1i64, max);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if cdf(mid) >= p { hi = mid } else { lo = mid }
    }
    let (f_r, f_below) = (cdf(hi), cdf(hi - 1));
    let alpha = (f_r - p) / (f_r - f_below);
    (hi as f64 - alpha) / d
}

/// Funnel-plot control limits for a proportion around the target `p0` at
/// denominator `n` with probability `coverage` (0.95 and 0.998 in practice),
/// from the Binomial(n, p0) distribution with Spiegelhalter's interpolation
/// (module documentation). The limits are proportions, clamped to [0, 1].
///
/// `n` is rounded to the nearest whole number (a released denominator may be
/// perturbed; the binomial needs whole trials). `None` when `p0` is not
/// strictly between 0 and 1, the rounded `n` is below 1, `coverage` is not
/// in (0, 1), or an argument is not finite.
pub fn proportion_limits(p0: f64, n: f64, coverage: f64) -> Option<Interval> {
    if !(p0.is_finite() && p0 > 0.0 && p0 < 1.0 && n.is_finite() && n.round() >= 1.0 && valid_level(coverage)) {
        return None;
    }
    let trials = n.round() as u64;
    let d = trials as f64;
    let cdf = |r: i64| binomial_cdf(r, trials, p0);
    let tail = (1.0 - coverage) / 2.0;
    let lower = interpolated(cdf, trials as i64, tail, d).clamp(0.0, 1.0);
    let upper = interpolated(cdf, trials as i64, 1.0 - tail, d).clamp(0.0, 1.0);
    Some(Interval { lower, upper })
}

/// Funnel-plot control limits for a standardised ratio O/E around 1 at
/// expected count `expected` with probability `coverage`, from the
/// Poisson(E) distribution of O with Spiegelhalter's interpolation (module
/// documentation). The limits are ratios (divide-by-E already done); the
/// lower one is clamped to 0.
///
/// `None` when `expected` is not a finite number > 0 or `coverage` is not in
/// (0, 1).
pub fn smr_limits(expected: f64, coverage: f64) -> Option<Interval> {
    if !(expected.is_finite() && expected > 0.0 && valid_level(coverage)) {
        return None;
    }
    let cdf = |r: i64| poisson_cdf(r, expected);
    let tail = (1.0 - coverage) / 2.0;
    // An upper bound for the upper quantile: the mean plus 40 standard
    // deviations (and 50 for tiny means) has tail probability far below any
    // coverage that a level can express.
    let max = (expected + 40.0 * expected.sqrt() + 50.0).ceil() as i64;
    let lower = interpolated(cdf, max, tail, expected).max(0.0);
    let upper = interpolated(cdf, max, 1.0 - tail, expected);
    Some(Interval { lower, upper })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_contain_target_and_shrink_with_denominator() {
        for p0 in [0.02, 0.1, 0.5, 0.9] {
            let mut last: Option<Interval> = None;
            for n in [20.0, 50.0, 100.0, 400.0, 1000.0, 10_000.0, 200_000.0] {
                let l95 = proportion_limits(p0, n, 0.95).expect("valid");
                let l998 = proportion_limits(p0, n, 0.998).expect("valid");
                assert!(l95.lower <= p0 && p0 <= l95.upper, "p0 {p0} n {n} {l95:?}");
                assert!(l998.lower <= l95.lower && l95.upper <= l998.upper, "p0 {p0} n {n}");
                if let Some(prev) = last {
                    assert!(l95.upper - l95.lower < prev.upper - prev.lower, "p0 {p0} n {n}");
                }
                last = Some(l95);
            }
        }
        let mut last: Option<Interval> = None;
        for e in [0.5, 2.0, 10.0, 50.0, 300.0, 5000.0, 1e6] {
            let l95 = smr_limits(e, 0.95).expect("valid");
            let l998 = smr_limits(e, 0.998).expect("valid");
            assert!(l95.lower <= 1.0 && 1.0 <= l95.upper, "E {e} {l95:?}");
            assert!(l998.lower <= l95.lower && l95.upper <= l998.upper, "E {e}");
            if let Some(prev) = last {
                assert!(l95.upper - l95.lower < prev.upper - prev.lower, "E {e}");
            }
            last = Some(l95);
        }
    }

    #[test]
    fn large_denominators_approach_the_normal_limits() {
        // At n = 1e6 the binomial limits are p0 ± z·√(p0(1−p0)/n) to within
        // the skewness correction, far below the 1e-4 relative slack here.
        let (p0, n) = (0.1, 1e6);
        let l = proportion_limits(p0, n, 0.95).expect("valid");
        let half = 1.959963984540054 * (p0 * (1.0 - p0) / n).sqrt();
        assert!(((l.upper - p0) / half - 1.0).abs() < 1e-2, "{l:?}");
        assert!(((p0 - l.lower) / half - 1.0).abs() < 1e-2, "{l:?}");
        let e = 1e6;
        let l = smr_limits(e, 0.998).expect("valid");
        let half = 3.090232306167813 / e.sqrt();
        assert!(((l.upper - 1.0) / half - 1.0).abs() < 1e-2, "{l:?}");
    }

    #[test]
    fn interpolation_is_continuous_in_the_denominator() {
        // Without interpolation the limit jumps by 1/n at the steps of the
        // binomial quantile; with it, neighbouring n differ by far less.
        for n in 100..400 {
            let a = proportion_limits(0.2, n as f64, 0.95).expect("valid");
            let b = proportion_limits(0.2, (n + 1) as f64, 0.95).expect("valid");
            assert!((a.upper - b.upper).abs() < 0.25 / n as f64, "n {n}: {a:?} {b:?}");
            assert!((a.lower - b.lower).abs() < 0.25 / n as f64, "n {n}: {a:?} {b:?}");
        }
    }

    #[test]
    fn small_denominators_clamp_at_zero() {
        let l = proportion_limits(0.05, 10.0, 0.95).expect("valid");
        assert_eq!(l.lower, 0.0);
        let l = smr_limits(0.5, 0.95).expect("valid");
        assert_eq!(l.lower, 0.0);
    }

    #[test]
    fn invalid_inputs_are_none() {
        assert!(proportion_limits(0.0, 100.0, 0.95).is_none());
        assert!(proportion_limits(1.0, 100.0, 0.95).is_none());
        assert!(proportion_limits(0.3, 0.4, 0.95).is_none());
        assert!(proportion_limits(0.3, 100.0, 1.0).is_none());
        assert!(proportion_limits(0.3, f64::NAN, 0.95).is_none());
        assert!(smr_limits(0.0, 0.95).is_none());
        assert!(smr_limits(10.0, 0.0).is_none());
        assert!(smr_limits(f64::INFINITY, 0.95).is_none());
    }
}
