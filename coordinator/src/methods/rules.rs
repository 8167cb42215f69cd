//! The rules of the statistical methods, one variant a rule: refusals at
//! planning (they depend on the query only) and the reasons a method's
//! output is withheld (they depend on data, so they never fail the query:
//! the numbers are withheld and the `withheld` column names the rule).
//! Every rule is documented in `docs/statistics.md` (a test keeps the two in step).

use crate::policy::Refusal;

/// A rule of the statistical methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodRule {
    /// Refusal: a method's table combined with register tables in one query.
    Mixed,
    /// Refusal: Kaplan–Meier bands narrower than a week (each step would be a few persons' days).
    BandWidth,
    /// Withheld: more parameters than a third of the model's rows.
    Saturated,
    /// Withheld: the model's rows come from fewer than k persons.
    SmallPopulation,
    /// Withheld: a level of a categorical predictor (with each outcome, for a
    /// binary outcome) or an outcome level with fewer than k persons.
    SmallCategory,
    /// Withheld: a survival step whose risk set or counts could not be released.
    RiskSet,
    /// Withheld: a standardised rate needing a stratum the unit has no released cell for.
    Stratum,
    /// Withheld: the model did not converge (often complete separation).
    NotConverged,
    /// Withheld: the model matrix is singular (a constant or collinear predictor).
    Singular,
}

impl MethodRule {
    /// Every rule, for the documentation test.
    pub const ALL: &'static [MethodRule] = &[
        MethodRule::Mixed,
        MethodRule::BandWidth,
        MethodRule::Saturated,
        MethodRule::SmallPopulation,
        MethodRule::SmallCategory,
        MethodRule::RiskSet,
        MethodRule::Stratum,
        MethodRule::NotConverged,
        MethodRule::Singular,
    ];

    /// The stable name, in refusals, the `withheld` column and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            MethodRule::Mixed => "method.mixed",
            MethodRule::BandWidth => "method.band_width",
            MethodRule::Saturated => "model.saturated",
            MethodRule::SmallPopulation => "model.small_population",
            MethodRule::SmallCategory => "model.small_category",
            MethodRule::RiskSet => "survival.risk_set",
            MethodRule::Stratum => "standardisation.stratum",
            MethodRule::NotConverged => "model.not_converged",
            MethodRule::Singular => "model.singular",
        }
    }

    /// The refusal carrying this rule.
    pub fn refusal(self, message: impl Into<String>) -> Refusal {
        Refusal { rule: self.name(), message: message.into() }
    }

    /// The refusal as a DataFusion error (inside a plan).
    pub fn refuse(self, message: impl Into<String>) -> datafusion::common::DataFusionError {
        crate::policy::policy_error(self.refusal(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule is explained in docs/statistics.md, and the document names
    /// no method rule the code does not have.
    #[test]
    fn every_rule_is_documented() {
        let doc = include_str!("../../../docs/statistics.md");
        for rule in MethodRule::ALL {
            assert!(doc.contains(&format!("`{}`", rule.name())), "docs/statistics.md does not explain {}", rule.name());
        }
        let names: Vec<&str> = MethodRule::ALL.iter().map(|r| r.name()).collect();
        for word in doc.split('`').filter(|w| {
            ["method.", "model.", "survival.", "standardisation."].iter().any(|p| w.starts_with(p))
                && !w.contains(' ')
                && !w.ends_with(".rs")
        }) {
            assert!(names.contains(&word), "docs/statistics.md names rule {word}, which the code does not have");
        }
    }
}
