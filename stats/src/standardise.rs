//! Crude rates per person-time, indirect standardisation (the standardised mortality/incidence ratio
//! O/E with its exact Poisson interval) and direct standardisation (a rate
//! weighted to a standard population, with the Fay–Feuer gamma interval).

use crate::intervals::{poisson_exact, valid_level};
use crate::special::gamma_quantile;

/// A point estimate with a confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Lower confidence limit.
    pub lower: f64,
    /// Upper confidence limit.
    pub upper: f64,
}

/// The standardised ratio O/E of `observed` events to `expected` events
/// (the sum over strata of the unit's person-time times the reference
/// rates), with the exact Poisson interval at confidence `level`, identical
/// to R's `poisson.test(O, T = E, conf.level = level)`: the limits of
/// [`poisson_exact`]`(O)` divided by E. A non-integer (perturbed) O is used
/// as it is (gamma form). `None` when O < 0, E ≤ 0, `level` is not in (0, 1)
/// or an argument is not finite.
pub fn smr(observed: f64, expected: f64, level: f64) -> Option<Estimate> {
    if !(expected.is_finite() && expected > 0.0) {
        return None;
    }
    let ci = poisson_exact(observed, level)?;
    Some(Estimate { value: observed / expected, lower: ci.lower / expected, upper: ci.upper / expected })
}

/// A crude rate: `events` per `person_time`, scaled by `per` (e.g. 1000.0
/// for a rate per 1,000 person-years), with the exact Poisson interval at
/// confidence `level`, identical to R's
/// `poisson.test(events, T = person_time / per, conf.level = level)`: the
/// limits of [`poisson_exact`]`(events)` times per/person-time. A
/// non-integer (perturbed) count is used as it is. `None` when events < 0,
/// person-time ≤ 0, per ≤ 0, `level` is not in (0, 1) or an argument is not
/// finite.
pub fn rate(events: f64, person_time: f64, per: f64, level: f64) -> Option<Estimate> {
    if !(person_time.is_finite() && person_time > 0.0 && per.is_finite() && per > 0.0) {
        return None;
    }
    let ci = poisson_exact(events, level)?;
    let scale = per / person_time;
    Some(Estimate { value: events * scale, lower: ci.lower * scale, upper: ci.upper * scale })
}

/// One stratum (e.g. an age band × sex) of a directly standardised rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stratum {
    /// Events observed in the stratum (may be a perturbed non-integer).
    pub events: f64,
    /// Persons or person-time at risk in the stratum.
    pub persons: f64,
    /// The stratum's size in the standard population (any scale: the
    /// weights are normalised to sum to 1).
    pub weight: f64,
}

/// A directly standardised rate with its standard error and interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dsr {
    /// The standardised rate, events per unit of `persons` (multiply by
    /// 1,000 or 100,000 for a rate per 1,000/100,000).
    pub rate: f64,
    /// Its standard error √(Σ wᵢ² dᵢ/nᵢ²) (Poisson variance of each stratum).
    pub se: f64,
    /// Lower limit of the Fay–Feuer gamma interval.
    pub lower: f64,
    /// Upper limit of the Fay–Feuer gamma interval.
    pub upper: f64,
}

/// Directly standardised rate over `strata` at confidence `level`, as R's
/// `epitools::ageadjust.direct(count, pop, stdpop = weight, conf.level)` and
/// `dsrTest(..., method = "gamma")`:
///
/// ```text
/// wᵢ = weightᵢ / Σ weight
/// y  = Σ wᵢ dᵢ/nᵢ                 v = Σ wᵢ² dᵢ/nᵢ²        wₘ = maxᵢ wᵢ/nᵢ
/// lower = G⁻¹(α/2;     shape y²/v,                 scale v/y)        (0 when y = 0)
/// upper = G⁻¹(1 − α/2; shape (y + wₘ)²/(v + wₘ²),  scale (v + wₘ²)/(y + wₘ))
/// ```
///
/// (Fay & Feuer, "Confidence intervals for directly standardized rates: a
/// method based on the gamma distribution", *Statistics in Medicine* 16
/// (1997) 791–801.) A stratum with no persons and weight 0 contributes
/// nothing and is skipped; one with no persons but a positive weight makes
/// the rate undefined (`None`). Also `None` for no strata, a negative or
/// non-finite field, a total weight of 0, or a `level` outside (0, 1).
pub fn direct(strata: &[Stratum], level: f64) -> Option<Dsr> {
    if !valid_level(level) || strata.is_empty() {
        return None;
    }
    let mut total_weight = 0.0;
    for s in strata {
        let fields = [s.events, s.persons, s.weight];
        if fields.iter().any(|v| !v.is_finite() || *v < 0.0) || (s.persons == 0.0 && s.weight > 0.0) {
            return None;
        }
        total_weight += s.weight;
    }
    if total_weight <= 0.0 {
        return None;
    }
    let (mut rate, mut var, mut wm) = (0.0, 0.0, 0.0f64);
    for s in strata.iter().filter(|s| s.persons > 0.0) {
        let w = s.weight / total_weight;
        rate += w * s.events / s.persons;
        var += w * w * s.events / (s.persons * s.persons);
        wm = wm.max(w / s.persons);
    }
    let alpha = 1.0 - level;
    let lower = if rate == 0.0 { 0.0 } else { var / rate * gamma_quantile(rate * rate / var, alpha / 2.0) };
    let (yu, vu) = (rate + wm, var + wm * wm);
    let upper = vu / yu * gamma_quantile(yu * yu / vu, 1.0 - alpha / 2.0);
    Some(Dsr { rate, se: var.sqrt(), lower, upper })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smr_is_poisson_test_scaled() {
        // poisson.test(10, T = 8)$conf.int = 4.795389/8 18.390356/8
        let e = smr(10.0, 8.0, 0.95).expect("valid");
        assert_eq!(e.value, 1.25);
        assert!((e.lower - 4.795389 / 8.0).abs() < 1e-6);
        assert!((e.upper - 18.390356 / 8.0).abs() < 1e-6);
        let zero = smr(0.0, 2.0, 0.95).expect("valid");
        assert_eq!((zero.value, zero.lower), (0.0, 0.0));
        assert!(smr(3.0, 0.0, 0.95).is_none());
        assert!(smr(-1.0, 2.0, 0.95).is_none());
    }

    #[test]
    fn rate_per_thousand_person_years() {
        // poisson.test(10, T = 2500/1000)$conf.int = 4.795389/2.5 18.390356/2.5
        let r = rate(10.0, 2500.0, 1000.0, 0.95).expect("valid");
        assert!((r.value - 4.0).abs() < 1e-12);
        assert!((r.lower - 4.795389 / 2.5).abs() < 1e-6);
        assert!((r.upper - 18.390356 / 2.5).abs() < 1e-6);
        assert!(rate(10.0, 0.0, 1000.0, 0.95).is_none());
        assert!(rate(10.0, 100.0, 0.0, 0.95).is_none());
    }

    #[test]
    fn single_stratum_is_the_crude_rate_with_gamma_limits() {
        // One stratum: w = 1, y = d/n, v = d/n², wm = 1/n, so the limits are
        // the exact Poisson limits of d (lower) and d + 1 (upper) over n:
        // the Fay–Feuer interval reduces to the Garwood interval.
        let d = direct(&[Stratum { events: 10.0, persons: 1000.0, weight: 3.0 }], 0.95).expect("valid");
        assert!((d.rate - 0.01).abs() < 1e-15);
        assert!((d.se - 10f64.sqrt() / 1000.0).abs() < 1e-15);
        assert!((d.lower - 4.795389e-3).abs() < 1e-9, "{d:?}");
        assert!((d.upper - 18.390356e-3).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn weights_are_normalised_and_empty_strata_handled() {
        let a = [
            Stratum { events: 5.0, persons: 100.0, weight: 1.0 },
            Stratum { events: 30.0, persons: 200.0, weight: 3.0 },
        ];
        let b = [
            Stratum { events: 5.0, persons: 100.0, weight: 10.0 },
            Stratum { events: 30.0, persons: 200.0, weight: 30.0 },
            Stratum { events: 0.0, persons: 0.0, weight: 0.0 },
        ];
        let (da, db) = (direct(&a, 0.95).expect("valid"), direct(&b, 0.95).expect("valid"));
        assert_eq!(da, db);
        assert!((da.rate - (0.25 * 0.05 + 0.75 * 0.15)).abs() < 1e-15);
        let missing = [Stratum { events: 0.0, persons: 0.0, weight: 1.0 }, a[0]];
        assert!(direct(&missing, 0.95).is_none());
        assert!(direct(&[], 0.95).is_none());
        assert!(direct(&[Stratum { events: -1.0, persons: 10.0, weight: 1.0 }], 0.95).is_none());
        let none = direct(&[Stratum { events: 0.0, persons: 50.0, weight: 1.0 }], 0.95).expect("valid");
        assert_eq!((none.rate, none.lower), (0.0, 0.0));
        // Upper limit with no events: G⁻¹(0.975; 1)·(1/50) = −ln(0.025)/50.
        assert!((none.upper - (-(0.025f64).ln() / 50.0)).abs() < 1e-12, "{none:?}");
    }
}
