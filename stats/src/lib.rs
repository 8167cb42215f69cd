//! The statistical mathematics of samkor, free of data access: everything
//! here works on aggregates that disclosure control has already released
//! (counts, person-time, sums), so the coordinator can compute intervals,
//! standardised rates, survival tables and model fits without a row.
//!
//! ```text
//!   released aggregates ──▶ intervals     Wilson, Clopper–Pearson, exact Poisson
//!                       ──▶ funnel        control limits (Spiegelhalter 2005)
//!                       ──▶ standardise   rates per person-time, SMR (indirect),
//!                                         DSR (direct, Fay–Feuer)
//!                       ──▶ survival      Kaplan–Meier over time bands, Greenwood
//!   federated Σ per iteration ⇄ glm      IRLS state machine (Gaussian, logistic, Poisson)
//! ```
//!
//! Every function is checked against R / scipy / statsmodels / lifelines
//! outputs stored in `reference/reference.json` (regenerate with
//! `python3 stats/reference/generate.py`).

#![warn(missing_docs)]

pub mod funnel;
pub mod glm;
pub mod intervals;
mod special;
pub mod standardise;
pub mod survival;

pub use funnel::{proportion_limits, smr_limits};
pub use glm::{
    Coef, DEFAULT_EPSILON, DEFAULT_MAX_ITERATIONS, Family, Fit, GlmError, Irls, Moments, Progress, fit_rows,
    moments_from_rows,
};
pub use intervals::{Interval, clopper_pearson, poisson_exact, wilson};
pub use standardise::{Dsr, Estimate, Stratum, direct, rate, smr};
pub use survival::{Band, KmError, KmInterval, Step, kaplan_meier};
