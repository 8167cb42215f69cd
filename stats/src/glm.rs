//! Generalised linear models fitted by iteratively reweighted least squares
//! (IRLS) as a state machine that never sees a row.
//!
//! Each iteration the caller evaluates, at the current coefficients
//! [`Irls::beta`], the sums over all rows described at [`Moments`] (in
//! samkor: one federated aggregate, summed at the nodes) and hands them to
//! [`Irls::update`], which either asks for another round with new
//! coefficients or returns the fit.
//!
//! ```text
//!   β₀ ──▶ caller: Moments(β_k) = Σ rows ──▶ Irls::update ──▶ Continue: β_{k+1} = (X'WX)⁻¹ X'Wz
//!                       ▲                                  └─▶ Converged(Fit at β_k)
//!                       └──────────────── β_{k+1} ◀──────────────┘
//! ```
//!
//! The protocol, here with rows in memory split between two "nodes" whose
//! sums are added as the coordinator would:
//!
//! ```
//! use samkor_stats::{Family, Irls, Moments, Progress, moments_from_rows};
//!
//! let x: Vec<Vec<f64>> = (0..40).map(|i| vec![1.0, f64::from(i % 7)]).collect();
//! let y: Vec<f64> = (0..40).map(|i| f64::from(u8::from(i % 3 == 0 || i % 7 > 4))).collect();
//! let mut irls = Irls::new(Family::Binomial, 2, vec![0.0; 2]).expect("p = 2");
//! let fit = loop {
//!     let mut m = Moments::zeros(2);
//!     for (xs, ys) in [(&x[..25], &y[..25]), (&x[25..], &y[25..])] {
//!         m.add(&moments_from_rows(Family::Binomial, xs, ys, &[], irls.beta()));
//!     }
//!     match irls.update(m).expect("the model fits") {
//!         Progress::Continue => continue,
//!         Progress::Converged(fit) => break fit,
//!     }
//! };
//! assert!(fit.coefficients[1].estimate > 0.0 && fit.iterations < 10);
//! ```
//!
//! Convergence is R `glm`'s criterion |D_k − D_{k−1}| / (|D_k| + 0.1) < ε on
//! the deviance D (ε = 1e-10 by default, at most 25 least-squares steps).
//! The fit reports β_k with the covariance (X'WX)⁻¹·φ evaluated at β_k
//! itself (R and statsmodels use the weights of the step before; at
//! convergence the difference is below the reported precision), φ = 1 for
//! binomial and Poisson and the Pearson χ²/(n − p) = RSS/(n − p) for the
//! Gaussian family (statsmodels `GLM`, R `summary.glm`). Standard errors,
//! z, two-sided normal p-values and 95 % Wald intervals are statsmodels'
//! `GLMResults` `bse`, `tvalues`, `pvalues` and `conf_int()`; the AIC is
//! statsmodels' `aic`, −2·ℓ + 2p (the scale is not counted as a parameter;
//! R's Gaussian AIC adds 2).

use std::fmt;

use nalgebra::{DMatrix, DVector};
use statrs::function::gamma::ln_gamma;

use crate::special::{normal_quantile, normal_sf};

/// Exponential family with its canonical link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Normal errors, identity link: μ = η (linear regression).
    Gaussian,
    /// Binomial (y in [0, 1], usually 0/1), logit link: μ = 1/(1 + e^−η).
    Binomial,
    /// Poisson counts, log link: μ = e^η (rates with offset ln person-time).
    Poisson,
}

/// Sums over all rows, evaluated at the current coefficients β, that one
/// IRLS iteration needs. For each row with covariates x (length p, including
/// the intercept's 1 and dummy columns), outcome y and offset o (0 when
/// there is none):
///
/// ```text
/// η = x·β + o
/// Gaussian:  μ = η              w = 1
/// Binomial:  μ = 1/(1 + e^−η)   w = μ(1 − μ)
/// Poisson:   μ = e^η            w = μ
///
/// xtwx += w · x xᵀ                         (p × p, row-major)
/// xtwz += x · (w·(η − o) + (y − μ))        (= x·w·z with the working response
///                                           z = η − o + (y − μ)/w, no division)
/// n    += 1
/// deviance += Gaussian: (y − μ)²
///             Binomial: 2·[y·ln(y/μ) + (1 − y)·ln((1 − y)/(1 − μ))]   (0·ln 0 = 0)
///             Poisson:  2·[y·ln(y/μ) − (y − μ)]                       (0·ln 0 = 0)
/// loglik   += Gaussian: ignored (computed from the deviance and n)
///             Binomial: y·ln μ + (1 − y)·ln(1 − μ)
///             Poisson:  y·η − μ − ln Γ(y + 1)
/// ```
///
/// [`moments_from_rows`] is the reference definition of these sums.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// X'WX, p × p, row-major.
    pub xtwx: Vec<f64>,
    /// X'Wz, length p.
    pub xtwz: Vec<f64>,
    /// Deviance at β.
    pub deviance: f64,
    /// Log-likelihood at β (binomial, Poisson; ignored for Gaussian).
    pub loglik: f64,
    /// Number of rows.
    pub n: f64,
}

impl Moments {
    /// Sums over no rows for a model with `p` parameters (start of a sum).
    pub fn zeros(p: usize) -> Self {
        Self { xtwx: vec![0.0; p * p], xtwz: vec![0.0; p], deviance: 0.0, loglik: 0.0, n: 0.0 }
    }

    /// Adds another part's sums (e.g. one node's) to these. Panics when the
    /// two have different numbers of parameters.
    pub fn add(&mut self, other: &Moments) {
        assert_eq!(self.xtwz.len(), other.xtwz.len(), "sums of models with the same parameters");
        assert_eq!(self.xtwx.len(), other.xtwx.len(), "sums of models with the same parameters");
        self.xtwx.iter_mut().zip(&other.xtwx).for_each(|(a, b)| *a += b);
        self.xtwz.iter_mut().zip(&other.xtwz).for_each(|(a, b)| *a += b);
        self.deviance += other.deviance;
        self.loglik += other.loglik;
        self.n += other.n;
    }
}

/// One coefficient of a fitted model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coef {
    /// The estimate β̂ⱼ.
    pub estimate: f64,
    /// Standard error √(φ·[(X'WX)⁻¹]ⱼⱼ).
    pub se: f64,
    /// Wald statistic β̂ⱼ / se.
    pub z: f64,
    /// Two-sided p-value 2·P(Z > |z|) under the standard normal.
    pub p: f64,
    /// Lower limit of the 95 % Wald interval β̂ⱼ − 1.959964·se.
    pub lower: f64,
    /// Upper limit of the 95 % Wald interval β̂ⱼ + 1.959964·se.
    pub upper: f64,
}

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// One entry per column of X, in the columns' order.
    pub coefficients: Vec<Coef>,
    /// Number of rows.
    pub n: f64,
    /// Residual deviance.
    pub deviance: f64,
    /// Log-likelihood (Gaussian: −n/2·(ln(2π·RSS/n) + 1), as statsmodels).
    pub loglik: f64,
    /// Akaike information criterion −2ℓ + 2p, as statsmodels' `GLMResults.aic`.
    pub aic: f64,
    /// Least-squares steps taken (R's `iter`); the caller evaluated
    /// [`Moments`] one more time than this.
    pub iterations: usize,
    /// Dispersion φ: 1 for binomial and Poisson, RSS/(n − p) for Gaussian.
    pub scale: f64,
}

/// What [`Irls::update`] asks for next.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Evaluate [`Moments`] again at the new [`Irls::beta`].
    Continue,
    /// The fit has converged; the state machine is finished.
    Converged(Fit),
}

/// Why a model could not be fitted. No message quotes a data value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlmError {
    /// The model has no parameters, or the start vector or a [`Moments`]
    /// field has the wrong length for p parameters.
    Shape {
        /// Parameters in the model.
        p: usize,
    },
    /// X'WX is not positive definite: a predictor is constant, a linear
    /// combination of others, or a category has no rows (or, for
    /// binomial/Poisson, the fit runs off to infinity).
    Singular,
    /// The deviance or the sums are not finite at the start, or stayed
    /// non-finite after halving the step.
    NonFinite,
    /// No convergence within the iteration limit (e.g. complete separation
    /// in a logistic model).
    NotConverged {
        /// The limit that was reached.
        iterations: usize,
    },
    /// Gaussian model with no more rows than parameters: no residual
    /// degrees of freedom for the scale.
    NoResidualDf,
    /// `update` was called after the fit converged or failed.
    Finished,
}

impl fmt::Display for GlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape { p } => write!(
                f,
                "the model's sums do not match its {p} parameter(s); X'WX must have p·p entries and \
                 X'Wz and the start coefficients p entries, with p ≥ 1"
            ),
            Self::Singular => write!(
                f,
                "the model matrix is singular (X'WX is not positive definite): remove predictors that \
                 are constant or combinations of others, and categories without rows"
            ),
            Self::NonFinite => write!(
                f,
                "the model's deviance is not finite at the current coefficients: check the outcome's \
                 range for the family and the start coefficients"
            ),
            Self::NotConverged { iterations } => write!(
                f,
                "the model did not converge in {iterations} iterations (for a logistic model often \
                 complete separation): simplify the model or merge sparse categories"
            ),
            Self::NoResidualDf => {
                write!(f, "a Gaussian model needs more rows than parameters to estimate its scale")
            }
            Self::Finished => write!(f, "the fit has already finished; start a new one"),
        }
    }
}

impl std::error::Error for GlmError {}

/// Default convergence tolerance ε on the relative deviance change.
pub const DEFAULT_EPSILON: f64 = 1e-10;
/// Default limit on least-squares steps (R `glm.control(maxit = 25)`).
pub const DEFAULT_MAX_ITERATIONS: usize = 25;
/// Limit on step halvings while the deviance is not finite (as R `glm.fit`).
const MAX_HALVINGS: usize = 30;

/// IRLS state: the current coefficients and the previous deviance.
#[derive(Debug, Clone)]
pub struct Irls {
    family: Family,
    p: usize,
    beta: Vec<f64>,
    previous: Option<(Vec<f64>, f64)>,
    iterations: usize,
    halvings: usize,
    epsilon: f64,
    max_iterations: usize,
    finished: bool,
}

impl Irls {
    /// A new fit of a `family` model with `p` parameters starting from
    /// `start_beta` (length p). Zeros work for most models; a start with the
    /// intercept at the overall log-rate (Poisson) or log-odds (binomial)
    /// saves an iteration or two.
    pub fn new(family: Family, p: usize, start_beta: Vec<f64>) -> Result<Self, GlmError> {
        if p == 0 || start_beta.len() != p {
            return Err(GlmError::Shape { p });
        }
        if start_beta.iter().any(|b| !b.is_finite()) {
            return Err(GlmError::NonFinite);
        }
        Ok(Self {
            family,
            p,
            beta: start_beta,
            previous: None,
            iterations: 0,
            halvings: 0,
            epsilon: DEFAULT_EPSILON,
            max_iterations: DEFAULT_MAX_ITERATIONS,
            finished: false,
        })
    }

    /// Sets the convergence tolerance ε (default [`DEFAULT_EPSILON`]).
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Sets the limit on least-squares steps (default [`DEFAULT_MAX_ITERATIONS`]).
    pub fn with_max_iterations(mut self, max_iterations: usize) -> Self {
        self.max_iterations = max_iterations;
        self
    }

    /// The coefficients at which the caller must evaluate the next [`Moments`].
    pub fn beta(&self) -> &[f64] {
        &self.beta
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Number of parameters p.
    pub fn p(&self) -> usize {
        self.p
    }

    /// Least-squares steps taken so far.
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// Takes the sums evaluated at [`Irls::beta`] and either moves to new
    /// coefficients ([`Progress::Continue`]) or finishes
    /// ([`Progress::Converged`]). Any error, and convergence, finish the
    /// state machine: later calls return [`GlmError::Finished`].
    pub fn update(&mut self, m: Moments) -> Result<Progress, GlmError> {
        if self.finished {
            return Err(GlmError::Finished);
        }
        let result = self.step(m);
        if !matches!(result, Ok(Progress::Continue)) {
            self.finished = true;
        }
        result
    }

    fn step(&mut self, m: Moments) -> Result<Progress, GlmError> {
        let p = self.p;
        if m.xtwx.len() != p * p || m.xtwz.len() != p {
            return Err(GlmError::Shape { p });
        }
        let finite = m.deviance.is_finite()
            && m.n.is_finite()
            && (self.family == Family::Gaussian || m.loglik.is_finite())
            && m.xtwx.iter().chain(&m.xtwz).all(|v| v.is_finite());
        if !finite {
            // As R's glm.fit: halve the step towards the last good
            // coefficients while the deviance is not finite.
            let Some((good, _)) = &self.previous else { return Err(GlmError::NonFinite) };
            if self.halvings == MAX_HALVINGS {
                return Err(GlmError::NonFinite);
            }
            self.halvings += 1;
            self.beta = self.beta.iter().zip(good).map(|(b, g)| 0.5 * (b + g)).collect();
            return Ok(Progress::Continue);
        }
        self.halvings = 0;
        let xtwx = DMatrix::from_row_slice(p, p, &m.xtwx);
        let cholesky = xtwx.cholesky().ok_or(GlmError::Singular)?;
        if let Some((_, dev_old)) = self.previous {
            // The identity link's weights do not depend on β: one
            // least-squares step is the exact solution.
            let converged = self.family == Family::Gaussian
                || (m.deviance - dev_old).abs() / (m.deviance.abs() + 0.1) < self.epsilon;
            if converged {
                return self.fit(&m, &cholesky.inverse()).map(Progress::Converged);
            }
        }
        if self.iterations == self.max_iterations {
            return Err(GlmError::NotConverged { iterations: self.iterations });
        }
        let next = cholesky.solve(&DVector::from_column_slice(&m.xtwz));
        if next.iter().any(|b| !b.is_finite()) {
            return Err(GlmError::Singular);
        }
        let current = std::mem::replace(&mut self.beta, next.iter().copied().collect());
        self.previous = Some((current, m.deviance));
        self.iterations += 1;
        Ok(Progress::Continue)
    }

    fn fit(&self, m: &Moments, inverse: &DMatrix<f64>) -> Result<Fit, GlmError> {
        let p = self.p as f64;
        let (scale, loglik) = match self.family {
            Family::Gaussian => {
                if m.n <= p {
                    return Err(GlmError::NoResidualDf);
                }
                let ll = -0.5 * m.n * ((2.0 * std::f64::consts::PI * m.deviance / m.n).ln() + 1.0);
                (m.deviance / (m.n - p), ll)
            }
            Family::Binomial | Family::Poisson => (1.0, m.loglik),
        };
        let z975 = normal_quantile(0.975);
        let coefficients = self
            .beta
            .iter()
            .enumerate()
            .map(|(j, &estimate)| {
                let se = (inverse[(j, j)] * scale).sqrt();
                let z = estimate / se;
                Coef {
                    estimate,
                    se,
                    z,
                    p: 2.0 * normal_sf(z.abs()),
                    lower: estimate - z975 * se,
                    upper: estimate + z975 * se,
                }
            })
            .collect();
        Ok(Fit {
            coefficients,
            n: m.n,
            deviance: m.deviance,
            loglik,
            aic: -2.0 * loglik + 2.0 * p,
            iterations: self.iterations,
            scale,
        })
    }
}

/// ln(1 + e^x) without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() }
}

/// y·ln(y/μ) with 0·ln 0 = 0.
fn ylogy(y: f64, mu: f64) -> f64 {
    if y == 0.0 { 0.0 } else { y * (y / mu).ln() }
}

/// The [`Moments`] of rows `x` (each of length p), outcomes `y` and offsets
/// `offset` (empty for none) at coefficients `beta`: the reference
/// definition of the sums, for tests and pooled benchmarks. Panics when the
/// lengths disagree.
pub fn moments_from_rows(family: Family, x: &[Vec<f64>], y: &[f64], offset: &[f64], beta: &[f64]) -> Moments {
    let p = beta.len();
    assert_eq!(x.len(), y.len(), "one outcome per row");
    assert!(offset.is_empty() || offset.len() == y.len(), "one offset per row, or none");
    let mut m = Moments::zeros(p);
    for (i, (row, &yi)) in x.iter().zip(y).enumerate() {
        assert_eq!(row.len(), p, "every row has p covariates");
        let o = offset.get(i).copied().unwrap_or(0.0);
        let eta = row.iter().zip(beta).map(|(a, b)| a * b).sum::<f64>() + o;
        let (mu, w, dev, ll) = match family {
            Family::Gaussian => (eta, 1.0, (yi - eta) * (yi - eta), 0.0),
            Family::Binomial => {
                let mu = 1.0 / (1.0 + (-eta).exp());
                let (ln_mu, ln_1mu) = (-softplus(-eta), -softplus(eta));
                let dev = 2.0
                    * (if yi == 0.0 { 0.0 } else { yi * (yi.ln() - ln_mu) }
                        + if yi == 1.0 { 0.0 } else { (1.0 - yi) * ((1.0 - yi).ln() - ln_1mu) });
                (mu, mu * (1.0 - mu), dev, yi * ln_mu + (1.0 - yi) * ln_1mu)
            }
            Family::Poisson => {
                let mu = eta.exp();
                (mu, mu, 2.0 * (ylogy(yi, mu) - (yi - mu)), yi * eta - mu - ln_gamma(yi + 1.0))
            }
        };
        let wz = w * (eta - o) + (yi - mu);
        for j in 0..p {
            m.xtwz[j] += row[j] * wz;
            for k in 0..p {
                m.xtwx[j * p + k] += w * row[j] * row[k];
            }
        }
        m.deviance += dev;
        m.loglik += ll;
        m.n += 1.0;
    }
    m
}

/// Runs [`Irls`] to the end over in-memory rows with [`moments_from_rows`]
/// (tests and the pooled benchmark), starting from β = 0.
pub fn fit_rows(family: Family, x: &[Vec<f64>], y: &[f64], offset: &[f64]) -> Result<Fit, GlmError> {
    let p = x.first().map_or(0, Vec::len);
    let mut irls = Irls::new(family, p, vec![0.0; p])?;
    loop {
        let m = moments_from_rows(family, x, y, offset, irls.beta());
        if let Progress::Converged(fit) = irls.update(m)? {
            return Ok(fit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn straight_line_through_known_points() {
        // y = 1 + 2x + e with e = (+1, −1, −1, +1) at x = 0..3; x̄ = 1.5, ȳ = 4.
        let x: Vec<Vec<f64>> = (0..4).map(|i| vec![1.0, i as f64]).collect();
        let y = [2.0, 2.0, 4.0, 8.0];
        let fit = fit_rows(Family::Gaussian, &x, &y, &[]).expect("fits");
        // Sxx = 5, Sxy = (−1.5)(−2) + (−0.5)(−2) + 0.5·0 + 1.5·4 = 10 → slope 2,
        // intercept 4 − 2·1.5 = 1; residuals 1, −1, −1, 1: RSS 4, scale 2.
        assert!(close(fit.coefficients[1].estimate, 2.0, 1e-12));
        assert!(close(fit.coefficients[0].estimate, 1.0, 1e-12));
        assert!(close(fit.deviance, 4.0, 1e-12));
        assert!(close(fit.scale, 2.0, 1e-12));
        // se(slope) = √(scale/Sxx) = √0.4
        assert!(close(fit.coefficients[1].se, 0.4f64.sqrt(), 1e-12));
        assert_eq!(fit.iterations, 1);
    }

    #[test]
    fn poisson_with_only_an_intercept_is_the_log_rate() {
        // Counts with person-time offsets: the MLE intercept is
        // ln(Σy / Σt) and its se 1/√Σy.
        let t = [10.0, 20.0, 5.0, 40.0];
        let y = [1.0, 4.0, 0.0, 7.0];
        let x = vec![vec![1.0]; 4];
        let offset: Vec<f64> = t.iter().map(|v: &f64| v.ln()).collect();
        let fit = fit_rows(Family::Poisson, &x, &y, &offset).expect("fits");
        assert!(close(fit.coefficients[0].estimate, (12.0f64 / 75.0).ln(), 1e-10));
        assert!(close(fit.coefficients[0].se, 1.0 / 12f64.sqrt(), 1e-8));
        assert_eq!(fit.scale, 1.0);
    }

    #[test]
    fn collinear_columns_are_singular() {
        let x: Vec<Vec<f64>> = (0..6).map(|i| vec![1.0, i as f64, 2.0 * i as f64]).collect();
        let y = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        assert_eq!(fit_rows(Family::Binomial, &x, &y, &[]), Err(GlmError::Singular));
    }

    #[test]
    fn separation_does_not_converge() {
        let x: Vec<Vec<f64>> = (0..8).map(|i| vec![1.0, i as f64]).collect();
        let y = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        assert!(matches!(fit_rows(Family::Binomial, &x, &y, &[]), Err(GlmError::NotConverged { .. })));
    }

    #[test]
    fn state_machine_checks_shapes_and_finishes() {
        assert_eq!(Irls::new(Family::Poisson, 2, vec![0.0]).err(), Some(GlmError::Shape { p: 2 }));
        assert_eq!(Irls::new(Family::Poisson, 0, vec![]).err(), Some(GlmError::Shape { p: 0 }));
        let mut irls = Irls::new(Family::Poisson, 2, vec![0.0, 0.0]).expect("valid");
        let bad = Moments { xtwx: vec![1.0; 3], xtwz: vec![0.0; 2], deviance: 1.0, loglik: 0.0, n: 3.0 };
        assert_eq!(irls.update(bad), Err(GlmError::Shape { p: 2 }));
        let ok = Moments { xtwx: vec![1.0, 0.0, 0.0, 1.0], xtwz: vec![0.0; 2], deviance: 1.0, loglik: 0.0, n: 3.0 };
        assert_eq!(irls.update(ok), Err(GlmError::Finished));
    }

    #[test]
    fn non_finite_deviance_halves_the_step() {
        let mut irls = Irls::new(Family::Poisson, 1, vec![0.0]).expect("valid");
        let first = Moments { xtwx: vec![1.0], xtwz: vec![4.0], deviance: 10.0, loglik: -5.0, n: 1.0 };
        assert_eq!(irls.update(first), Ok(Progress::Continue));
        assert_eq!(irls.beta(), [4.0]);
        let overflow =
            Moments { xtwx: vec![f64::INFINITY], xtwz: vec![1.0], deviance: f64::INFINITY, loglik: 0.0, n: 1.0 };
        assert_eq!(irls.update(overflow), Ok(Progress::Continue));
        assert_eq!(irls.beta(), [2.0]);
        assert_eq!(irls.iterations(), 1);
        let mut fresh = Irls::new(Family::Poisson, 1, vec![0.0]).expect("valid");
        let nan = Moments { xtwx: vec![1.0], xtwz: vec![1.0], deviance: f64::NAN, loglik: 0.0, n: 1.0 };
        assert_eq!(fresh.update(nan), Err(GlmError::NonFinite));
    }
}
