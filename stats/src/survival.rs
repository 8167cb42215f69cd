//! Kaplan–Meier survival over time bands, with Greenwood standard errors and
//! log(−log) or log confidence intervals.
//!
//! The input is what disclosure control releases: the number at risk at the
//! start and, per band (in increasing time), the events and censorings in
//! it. Within a band, as the Kaplan–Meier estimator treats ties, events come
//! before censorings: everyone censored in a band is at risk for its events.
//! With bands of one time unit over whole-unit times this is exactly the
//! estimator over individual times (R `survfit`, lifelines
//! `KaplanMeierFitter`) evaluated at the band ends.
//!
//! ```text
//! nⱼ = n₀ − Σ_{i<j} (dᵢ + cᵢ)          at risk in band j
//! S(tⱼ) = Π_{i≤j} (1 − dᵢ/nᵢ)
//! V(tⱼ) = Σ_{i≤j} dᵢ / (nᵢ (nᵢ − dᵢ))   Greenwood, variance of ln S
//! se(S) = S·√V
//! ```

use std::fmt;

use crate::intervals::valid_level;
use crate::special::normal_quantile;

/// One time band: the events and censorings between the previous band's
/// end (or time 0) and `end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    /// The band's end time; band ends must increase strictly.
    pub end: f64,
    /// Events in the band.
    pub events: f64,
    /// Censorings in the band (at risk for the band's events).
    pub censored: f64,
}

/// The estimate at the end of one band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The band's end time.
    pub time: f64,
    /// Number at risk during the band.
    pub at_risk: f64,
    /// Events in the band.
    pub events: f64,
    /// Censorings in the band.
    pub censored: f64,
    /// Kaplan–Meier survival S(time).
    pub survival: f64,
    /// Greenwood standard error of S (S·√V); 0 once S = 0.
    pub se: f64,
    /// Lower confidence limit of S.
    pub lower: f64,
    /// Upper confidence limit of S.
    pub upper: f64,
}

/// The form of the pointwise confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmInterval {
    /// The log(−log) ("exponential Greenwood") interval, exactly as
    /// lifelines' `KaplanMeierFitter.confidence_interval_` (and R
    /// `survfit(conf.type = "log-log")`):
    /// `exp(−exp(ln(−ln S) ∓ z·√V / ln S))`; (1, 1) while S = 1 (as
    /// lifelines) and (0, 0) once S = 0. Always within [0, 1].
    LogLog,
    /// The log interval, R `survfit`'s default `conf.type = "log"`:
    /// `S·exp(∓ z·√V)`, upper limit capped at 1; (0, 0) once S = 0 (where R
    /// gives NA).
    Log,
}

/// Why a Kaplan–Meier table could not be computed. Bands are numbered from
/// 0; no message quotes a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmError {
    /// The confidence level is not strictly between 0 and 1.
    InvalidLevel,
    /// The number at risk at the start is negative or not finite.
    InvalidStart,
    /// A band's end, events or censorings is negative or not finite.
    InvalidBand {
        /// The band's index.
        band: usize,
    },
    /// A band does not end after the previous one.
    TimesNotIncreasing {
        /// The band's index.
        band: usize,
    },
    /// More events and censorings in a band than persons at risk in it.
    MoreLeavingThanAtRisk {
        /// The band's index.
        band: usize,
    },
}

impl fmt::Display for KmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidLevel => write!(f, "the confidence level must be strictly between 0 and 1"),
            Self::InvalidStart => write!(f, "the number at risk at the start must be a finite number of at least 0"),
            Self::InvalidBand { band } => write!(
                f,
                "time band {band} has a negative or non-finite end, event count or censoring count; \
                 give each band's end time and non-negative counts"
            ),
            Self::TimesNotIncreasing { band } => {
                write!(f, "time band {band} does not end after the previous band; order the bands by time")
            }
            Self::MoreLeavingThanAtRisk { band } => write!(
                f,
                "time band {band} has more events and censorings than persons still at risk; \
                 check the number at risk at the start and the bands' counts"
            ),
        }
    }
}

impl std::error::Error for KmError {}

/// The Kaplan–Meier table over `bands` starting from `at_risk_start`
/// persons, with pointwise intervals of the given form at confidence
/// `level`. One [`Step`] per band, in the bands' order.
///
/// Counts may be perturbed non-integers; the formulas are used as they are
/// (lifelines casts the number at risk to an integer in its variance term,
/// so it agrees only for whole counts).
pub fn kaplan_meier(
    at_risk_start: f64,
    bands: &[Band],
    level: f64,
    interval: KmInterval,
) -> Result<Vec<Step>, KmError> {
    if !valid_level(level) {
        return Err(KmError::InvalidLevel);
    }
    if !(at_risk_start.is_finite() && at_risk_start >= 0.0) {
        return Err(KmError::InvalidStart);
    }
    let z = normal_quantile(0.5 * (1.0 + level));
    let mut steps = Vec::with_capacity(bands.len());
    let (mut at_risk, mut survival, mut greenwood) = (at_risk_start, 1.0f64, 0.0f64);
    let mut previous_end = f64::NEG_INFINITY;
    for (i, band) in bands.iter().enumerate() {
        let fields = [band.end, band.events, band.censored];
        if fields.iter().any(|v| !v.is_finite()) || band.events < 0.0 || band.censored < 0.0 {
            return Err(KmError::InvalidBand { band: i });
        }
        if band.end <= previous_end {
            return Err(KmError::TimesNotIncreasing { band: i });
        }
        if band.events + band.censored > at_risk {
            return Err(KmError::MoreLeavingThanAtRisk { band: i });
        }
        previous_end = band.end;
        let d = band.events;
        if d > 0.0 {
            survival *= 1.0 - d / at_risk;
            if d < at_risk {
                greenwood += d / (at_risk * (at_risk - d));
            } else {
                survival = 0.0;
            }
        }
        let (se, lower, upper) = bounds(survival, greenwood, z, interval);
        steps.push(Step {
            time: band.end,
            at_risk,
            events: band.events,
            censored: band.censored,
            survival,
            se,
            lower,
            upper,
        });
        at_risk -= band.events + band.censored;
    }
    Ok(steps)
}

/// (se, lower, upper) of S with Greenwood sum `v`.
fn bounds(s: f64, v: f64, z: f64, interval: KmInterval) -> (f64, f64, f64) {
    if s <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let sd = v.sqrt();
    let se = s * sd;
    match interval {
        KmInterval::LogLog => {
            if s >= 1.0 {
                return (se, 1.0, 1.0);
            }
            let ln_s = s.ln();
            let centre = (-ln_s).ln();
            let lower = (-(centre - z * sd / ln_s).exp()).exp();
            let upper = (-(centre + z * sd / ln_s).exp()).exp();
            (se, lower, upper)
        }
        KmInterval::Log => (se, s * (-z * sd).exp(), (s * (z * sd).exp()).min(1.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(end: f64, events: f64, censored: f64) -> Band {
        Band { end, events, censored }
    }

    #[test]
    fn textbook_example() {
        // 10 persons: 2 events in band 1, 1 censored in band 2, 1 event in
        // band 3, 2 events and 1 censoring in band 4 (at risk 6), 3 left.
        let bands = [band(1.0, 2.0, 0.0), band(2.0, 0.0, 1.0), band(3.0, 1.0, 0.0), band(4.0, 2.0, 1.0)];
        let km = kaplan_meier(10.0, &bands, 0.95, KmInterval::Log).expect("valid");
        let at_risk: Vec<f64> = km.iter().map(|s| s.at_risk).collect();
        assert_eq!(at_risk, [10.0, 8.0, 7.0, 6.0]);
        let s3 = 0.8 * (1.0 - 1.0 / 7.0);
        let s4 = s3 * (1.0 - 2.0 / 6.0);
        assert!((km[0].survival - 0.8).abs() < 1e-15);
        assert_eq!(km[1].survival, km[0].survival);
        assert!((km[2].survival - s3).abs() < 1e-15);
        assert!((km[3].survival - s4).abs() < 1e-15);
        let v4: f64 = 2.0 / (10.0 * 8.0) + 1.0 / (7.0 * 6.0) + 2.0 / (6.0 * 4.0);
        assert!((km[3].se - s4 * v4.sqrt()).abs() < 1e-15);
        let z = 1.959963984540054;
        assert!((km[3].lower - s4 * (-z * v4.sqrt()).exp()).abs() < 1e-14);
        assert!((km[3].upper - s4 * (z * v4.sqrt()).exp()).abs() < 1e-14);
    }

    #[test]
    fn loglog_limits_bracket_the_estimate_within_unit_interval() {
        let bands = [band(1.0, 3.0, 1.0), band(2.0, 0.0, 0.0), band(3.0, 5.0, 2.0), band(4.0, 1.0, 0.0)];
        for kind in [KmInterval::LogLog, KmInterval::Log] {
            let km = kaplan_meier(20.0, &bands, 0.95, kind).expect("valid");
            for s in &km {
                assert!(0.0 <= s.lower && s.lower < s.survival && s.survival < s.upper && s.upper <= 1.0, "{s:?}");
            }
        }
    }

    #[test]
    fn before_first_event_and_after_last_person() {
        let bands = [band(1.0, 0.0, 2.0), band(2.0, 3.0, 0.0), band(3.0, 0.0, 0.0)];
        for kind in [KmInterval::LogLog, KmInterval::Log] {
            let km = kaplan_meier(5.0, &bands, 0.95, kind).expect("valid");
            assert_eq!((km[0].survival, km[0].lower, km[0].upper), (1.0, 1.0, 1.0));
            assert_eq!((km[1].survival, km[1].se, km[1].lower, km[1].upper), (0.0, 0.0, 0.0, 0.0));
            assert_eq!((km[2].at_risk, km[2].survival), (0.0, 0.0));
        }
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let ok = band(1.0, 1.0, 0.0);
        assert_eq!(kaplan_meier(10.0, &[ok], 1.0, KmInterval::Log), Err(KmError::InvalidLevel));
        assert_eq!(kaplan_meier(-1.0, &[ok], 0.95, KmInterval::Log), Err(KmError::InvalidStart));
        assert_eq!(
            kaplan_meier(10.0, &[ok, band(2.0, -1.0, 0.0)], 0.95, KmInterval::Log),
            Err(KmError::InvalidBand { band: 1 })
        );
        assert_eq!(
            kaplan_meier(10.0, &[ok, band(1.0, 1.0, 0.0)], 0.95, KmInterval::Log),
            Err(KmError::TimesNotIncreasing { band: 1 })
        );
        assert_eq!(
            kaplan_meier(10.0, &[ok, band(2.0, 6.0, 4.0)], 0.95, KmInterval::Log),
            Err(KmError::MoreLeavingThanAtRisk { band: 1 })
        );
        assert!(KmError::MoreLeavingThanAtRisk { band: 1 }.to_string().contains("band 1"));
    }
}
