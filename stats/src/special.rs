//! Quantile functions of the gamma, beta and normal distributions, solved
//! here rather than taken from `statrs`' `inverse_cdf`: statrs' gamma
//! quantile stops on an absolute tolerance (wrong by orders of magnitude for
//! quantiles below 1e-9, e.g. shape 0.5 at p = 1e-6) and its inverse
//! regularised beta is unreliable for tiny p (statrs #435).
//!
//! Both quantiles are found by bisection on ln x against statrs' regularised
//! incomplete gamma and beta functions, comparing the lower tail when
//! p ≤ 0.5 and the upper tail otherwise, so that neither tail loses its
//! relative precision to a subtraction from 1. Bisection stops when the
//! bracket is a few ulps wide.

use statrs::function::{beta, erf, gamma};

/// Smallest and largest ln x that an f64 represents (normal numbers).
const LN_MIN: f64 = -708.0;
const LN_MAX: f64 = 709.0;

/// Solves `increasing(x) = 0` for x > 0 by bisection on ln x within
/// `[exp(lo), exp(hi)]`, where `increasing` is non-decreasing in x.
fn bisect_ln(mut lo: f64, mut hi: f64, increasing: impl Fn(f64) -> f64) -> f64 {
    for _ in 0..400 {
        let mid = 0.5 * (lo + hi);
        let (xl, xh) = (lo.exp(), hi.exp());
        if xh - xl <= 4.0 * f64::EPSILON * xh || mid <= lo || mid >= hi {
            break;
        }
        if increasing(mid.exp()) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// The p-quantile of the gamma distribution with the given shape and scale 1
/// (R's `qgamma(p, shape)`). Requires shape > 0 and 0 < p < 1.
pub(crate) fn gamma_quantile(shape: f64, p: f64) -> f64 {
    debug_assert!(shape > 0.0 && p > 0.0 && p < 1.0);
    if p <= 0.5 {
        bisect_ln(LN_MIN, LN_MAX, |x| gamma::gamma_lr(shape, x) - p)
    } else {
        let q = 1.0 - p;
        bisect_ln(LN_MIN, LN_MAX, |x| q - gamma::gamma_ur(shape, x))
    }
}

/// The p-quantile of the beta distribution Beta(a, b) (R's `qbeta(p, a, b)`).
/// Requires a > 0, b > 0 and 0 < p < 1.
pub(crate) fn beta_quantile(a: f64, b: f64, p: f64) -> f64 {
    debug_assert!(a > 0.0 && b > 0.0 && p > 0.0 && p < 1.0);
    if p <= 0.5 {
        bisect_ln(LN_MIN, 0.0, |x| beta::beta_reg(a, b, x.min(1.0)) - p)
    } else {
        // Upper tail P(X > x) = I_{1-x}(b, a).
        let q = 1.0 - p;
        bisect_ln(LN_MIN, 0.0, |x| q - beta::beta_reg(b, a, (1.0 - x).max(0.0)))
    }
}

/// The p-quantile of the standard normal distribution (R's `qnorm(p)`),
/// 0 < p < 1.
pub(crate) fn normal_quantile(p: f64) -> f64 {
    -std::f64::consts::SQRT_2 * erf::erfc_inv(2.0 * p)
}

/// Upper tail of the standard normal distribution, P(Z > z), accurate far
/// into the tail (R's `pnorm(z, lower.tail = FALSE)`).
pub(crate) fn normal_sf(z: f64) -> f64 {
    0.5 * erf::erfc(z / std::f64::consts::SQRT_2)
}

/// The binomial distribution function P(R ≤ r) for R ~ Binomial(n, p),
/// 0 < p < 1, as the regularised incomplete beta I_{1-p}(n − r, r + 1).
pub(crate) fn binomial_cdf(r: i64, n: u64, p: f64) -> f64 {
    if r < 0 {
        0.0
    } else if r as u64 >= n {
        1.0
    } else {
        beta::beta_reg((n - r as u64) as f64, r as f64 + 1.0, 1.0 - p)
    }
}

/// The Poisson distribution function P(R ≤ r) for R ~ Poisson(mean),
/// mean > 0, as the regularised upper incomplete gamma Q(r + 1, mean).
pub(crate) fn poisson_cdf(r: i64, mean: f64) -> f64 {
    if r < 0 { 0.0 } else { gamma::gamma_ur(r as f64 + 1.0, mean) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn gamma_quantiles_match_r() {
        // qgamma(0.025, 10), qgamma(0.975, 11): poisson.test(10)'s interval.
        assert!(close(gamma_quantile(10.0, 0.025), 4.795388696132433, 1e-12));
        assert!(close(gamma_quantile(11.0, 0.975), 18.39035604201778, 1e-12));
        // qgamma(1e-6, 0.5) = 7.853981633978593e-13 (pi/4 * 1e-12): statrs'
        // own inverse_cdf returns 9.3e-10 here.
        assert!(close(gamma_quantile(0.5, 1e-6), 7.853981633978593e-13, 1e-9));
        assert!(close(gamma_quantile(1e6, 0.999), 1.003093082369854e6, 1e-11));
    }

    #[test]
    fn beta_quantiles_match_r() {
        // binom.test(7, 20): qbeta(0.025, 7, 14), qbeta(0.975, 8, 13).
        assert!(close(beta_quantile(7.0, 14.0, 0.025), 0.1539092047845412, 1e-12));
        assert!(close(beta_quantile(8.0, 13.0, 0.975), 0.5921885345328282, 1e-12));
        assert!(close(beta_quantile(1.0, 1e5, 0.0005), 5.001250404316726e-09, 1e-9));
        assert!(close(beta_quantile(3.0, 1e6, 1e-5), 3.953712460032106e-08, 1e-9));
    }

    #[test]
    fn normal_quantile_and_tail() {
        assert!(close(normal_quantile(0.975), 1.959963984540054, 1e-14));
        assert!(close(normal_quantile(0.0005), -3.2905267314918945, 1e-13));
        // pnorm(-10) = 7.619853024160526e-24; statrs' erfc is good to ~1e-10
        // relative this far out.
        let tail = normal_sf(10.0);
        assert!(close(tail, 7.619853024160526e-24, 1e-9), "{tail:e}");
    }

    #[test]
    fn discrete_distribution_functions() {
        // pbinom(3, 10, 0.3) = 0.6496107184; ppois(3, 2.5) = 0.7575761331
        assert!(close(binomial_cdf(3, 10, 0.3), 0.6496107184, 1e-9));
        assert_eq!(binomial_cdf(-1, 10, 0.3), 0.0);
        assert_eq!(binomial_cdf(10, 10, 0.3), 1.0);
        assert!(close(poisson_cdf(3, 2.5), 0.7575761331330662, 1e-12));
        assert_eq!(poisson_cdf(-1, 2.5), 0.0);
    }
}
