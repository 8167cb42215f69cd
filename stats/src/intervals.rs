//! Confidence intervals for a proportion x/n (Wilson score, exact
//! Clopper–Pearson) and for a Poisson count x (exact, as R's `poisson.test`).
//!
//! Counts are `f64` because released counts may be perturbed and need not be
//! whole. Each function states what a non-integer count means; all return
//! `None` for a non-finite argument, n ≤ 0, x < 0, x > n, or a level outside
//! (0, 1).

use crate::special::{beta_quantile, gamma_quantile, normal_quantile};

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Lower limit.
    pub lower: f64,
    /// Upper limit.
    pub upper: f64,
}

/// True when `level` is a confidence level strictly between 0 and 1.
pub(crate) fn valid_level(level: f64) -> bool {
    level.is_finite() && level > 0.0 && level < 1.0
}

fn valid_proportion(x: f64, n: f64, level: f64) -> bool {
    x.is_finite() && n.is_finite() && n > 0.0 && x >= 0.0 && x <= n && valid_level(level)
}

/// Wilson score interval for the proportion x/n at confidence `level`,
/// exactly R's `prop.test(x, n, conf.level = level, correct = FALSE)$conf.int`
/// (and statsmodels' `proportion_confint(x, n, method = "wilson")`):
///
/// ```text
/// p̂ = x/n,  z = Φ⁻¹((1 + level)/2),  c = z²/(2n)
/// limits = (p̂ + c ∓ z·√(p̂(1 − p̂)/n + c/(2n))) / (1 + 2c)
/// ```
///
/// with the lower limit 0 when x = 0 and the upper limit 1 when x = n (as R).
/// The formula is continuous in x and n, so a non-integer (perturbed) x or n
/// is used as it is.
pub fn wilson(x: f64, n: f64, level: f64) -> Option<Interval> {
    if !valid_proportion(x, n, level) {
        return None;
    }
    let z = normal_quantile(0.5 * (1.0 + level));
    let p = x / n;
    let c = z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + c / (2.0 * n)).sqrt();
    let lower = if x == 0.0 { 0.0 } else { (p + c - half) / (1.0 + 2.0 * c) };
    let upper = if x == n { 1.0 } else { (p + c + half) / (1.0 + 2.0 * c) };
    Some(Interval { lower, upper })
}

/// Exact (Clopper–Pearson) interval for the proportion x/n at confidence
/// `level`, as R's `binom.test(x, n, conf.level = level)$conf.int`:
///
/// ```text
/// α = 1 − level
/// lower = B⁻¹(α/2; x, n − x + 1)        (0 when x = 0)
/// upper = B⁻¹(1 − α/2; x + 1, n − x)    (1 when x = n)
/// ```
///
/// where B⁻¹(p; a, b) is the beta quantile. The beta form is defined for
/// real x and n, so a non-integer (perturbed) x is used as it is: the limits
/// are then those of the same formula, increasing smoothly in x, and agree
/// with `binom.test` at every whole x (which R would refuse otherwise).
pub fn clopper_pearson(x: f64, n: f64, level: f64) -> Option<Interval> {
    if !valid_proportion(x, n, level) {
        return None;
    }
    let alpha = 1.0 - level;
    let lower = if x == 0.0 { 0.0 } else { beta_quantile(x, n - x + 1.0, alpha / 2.0) };
    let upper = if x == n { 1.0 } else { beta_quantile(x + 1.0, n - x, 1.0 - alpha / 2.0) };
    Some(Interval { lower, upper })
}

/// Exact interval for the mean of a Poisson count x at confidence `level`,
/// as R's `poisson.test(x, conf.level = level)$conf.int` (divide both limits
/// by the person-time for a rate; [`crate::standardise::smr`] does so for
/// O/E):
///
/// ```text
/// α = 1 − level
/// lower = G⁻¹(α/2; x)         (0 when x = 0)
/// upper = G⁻¹(1 − α/2; x + 1)
/// ```
///
/// where G⁻¹(p; s) is the quantile of the gamma distribution with shape s
/// and scale 1 — equivalently χ²⁻¹(α/2; 2x)/2 and χ²⁻¹(1 − α/2; 2x + 2)/2.
/// The gamma form is defined for real x, so a non-integer (perturbed) count
/// is used as it is.
pub fn poisson_exact(x: f64, level: f64) -> Option<Interval> {
    if !(x.is_finite() && x >= 0.0 && valid_level(level)) {
        return None;
    }
    let alpha = 1.0 - level;
    let lower = if x == 0.0 { 0.0 } else { gamma_quantile(x, alpha / 2.0) };
    let upper = gamma_quantile(x + 1.0, 1.0 - alpha / 2.0);
    Some(Interval { lower, upper })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn clopper_pearson_matches_binom_test() {
        // binom.test(7, 20)$conf.int = 0.1539092 0.5921885
        let ci = clopper_pearson(7.0, 20.0, 0.95).expect("valid input");
        assert!(close(ci.lower, 0.1539092, 1e-6), "{ci:?}");
        assert!(close(ci.upper, 0.5921885, 1e-6), "{ci:?}");
    }

    #[test]
    fn poisson_matches_poisson_test() {
        // poisson.test(10)$conf.int = 4.795389 18.390356
        let ci = poisson_exact(10.0, 0.95).expect("valid input");
        assert!(close(ci.lower, 4.795389, 1e-6), "{ci:?}");
        assert!(close(ci.upper, 18.390356, 1e-6), "{ci:?}");
        // poisson.test(0)$conf.int = 0 3.688879
        let ci = poisson_exact(0.0, 0.95).expect("valid input");
        assert_eq!(ci.lower, 0.0);
        assert!(close(ci.upper, 3.688879, 1e-6), "{ci:?}");
    }

    #[test]
    fn wilson_matches_prop_test() {
        // prop.test(7, 20, correct = FALSE)$conf.int = 0.1811918 0.5671457
        let ci = wilson(7.0, 20.0, 0.95).expect("valid input");
        assert!(close(ci.lower, 0.1811918, 1e-6), "{ci:?}");
        assert!(close(ci.upper, 0.5671457, 1e-6), "{ci:?}");
    }

    #[test]
    fn edges_are_exactly_zero_and_one() {
        for f in [wilson, clopper_pearson] {
            let zero = f(0.0, 15.0, 0.95).expect("x = 0 is valid");
            assert_eq!(zero.lower, 0.0);
            assert!(zero.upper > 0.0 && zero.upper < 1.0);
            let all = f(15.0, 15.0, 0.95).expect("x = n is valid");
            assert_eq!(all.upper, 1.0);
            assert!(all.lower > 0.0 && all.lower < 1.0);
        }
        // binom.test(0, 15): upper = 1 - 0.025^(1/15)
        let ci = clopper_pearson(0.0, 15.0, 0.95).expect("valid");
        assert!(close(ci.upper, 1.0 - 0.025f64.powf(1.0 / 15.0), 1e-12));
    }

    #[test]
    fn invalid_inputs_are_none() {
        for f in [wilson, clopper_pearson] {
            assert!(f(1.0, 0.0, 0.95).is_none());
            assert!(f(-1.0, 10.0, 0.95).is_none());
            assert!(f(11.0, 10.0, 0.95).is_none());
            assert!(f(1.0, 10.0, 1.0).is_none());
            assert!(f(1.0, 10.0, 0.0).is_none());
            assert!(f(f64::NAN, 10.0, 0.95).is_none());
            assert!(f(1.0, f64::INFINITY, 0.95).is_none());
        }
        assert!(poisson_exact(-0.5, 0.95).is_none());
        assert!(poisson_exact(3.0, 1.5).is_none());
        assert!(poisson_exact(f64::NAN, 0.95).is_none());
    }

    #[test]
    fn non_integer_counts_lie_between_their_neighbours() {
        let (a, b, c) = (
            clopper_pearson(7.0, 20.0, 0.95).expect("valid"),
            clopper_pearson(7.4, 20.0, 0.95).expect("valid"),
            clopper_pearson(8.0, 20.0, 0.95).expect("valid"),
        );
        assert!(a.lower < b.lower && b.lower < c.lower);
        assert!(a.upper < b.upper && b.upper < c.upper);
        let (a, b, c) = (
            poisson_exact(0.0, 0.95).expect("valid"),
            poisson_exact(0.3, 0.95).expect("valid"),
            poisson_exact(1.0, 0.95).expect("valid"),
        );
        assert!(a.lower < b.lower && b.lower < c.lower);
        assert!(a.upper < b.upper && b.upper < c.upper);
    }

    #[test]
    fn wider_level_gives_wider_interval() {
        let narrow = wilson(30.0, 100.0, 0.9).expect("valid");
        let wide = wilson(30.0, 100.0, 0.99).expect("valid");
        assert!(wide.lower < narrow.lower && wide.upper > narrow.upper);
    }
}
