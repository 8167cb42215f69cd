//! The rules disclosure control refuses a query by, one variant a rule.
//!
//! A refusal happens at planning, before any node is asked, and depends only on
//! the query text, the catalogue and the approval: never on data. Every rule is
//! documented in `docs/disclosure.md` (a test keeps the two in step).

use datafusion::common::DataFusionError;

use crate::policy::{Refusal, policy_error};

/// A rule of disclosure control that can refuse a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Rows of individuals when the approval allows aggregates only.
    OutputKind,
    /// Grouping by the pseudonym or an identifying column.
    IdentifyingGroup,
    /// An aggregate that returns one person's value (min, max, first_value, …).
    IdentifyingAggregate,
    /// An aggregate disclosure control does not know how to protect.
    UnknownAggregate,
    /// Several aggregate tables in one answer.
    OneTable,
    /// Window functions over aggregated cells.
    WindowOverAggregate,
    /// HAVING, LIMIT or a filter over grouping-set margins.
    MarginsFiltered,
    /// Dominance cannot be checked over pre-aggregated rows.
    DominanceUntraceable,
    /// A scalar subquery's value cannot be traced to persons.
    Subquery,
    /// Microdata carrying a column computed from an identifying column.
    IdentifyingColumn,
    /// A plan shape whose persons cannot be traced.
    Untraceable,
    /// A quantile too close to the minimum or maximum.
    ExtremeQuantile,
    /// A query naming one of disclosure control's own functions.
    InternalFunction,
    /// A generalisation of a birth date used with arguments that make it identifying.
    Generalisation,
}

impl Rule {
    /// Every rule, for the documentation test.
    pub const ALL: &'static [Rule] = &[
        Rule::OutputKind,
        Rule::IdentifyingGroup,
        Rule::IdentifyingAggregate,
        Rule::UnknownAggregate,
        Rule::OneTable,
        Rule::WindowOverAggregate,
        Rule::MarginsFiltered,
        Rule::DominanceUntraceable,
        Rule::Subquery,
        Rule::IdentifyingColumn,
        Rule::Untraceable,
        Rule::ExtremeQuantile,
        Rule::InternalFunction,
        Rule::Generalisation,
    ];

    /// The stable name, in refusals and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Rule::OutputKind => "approval.output_kind",
            Rule::IdentifyingGroup => "disclosure.identifying_group",
            Rule::IdentifyingAggregate => "disclosure.identifying_aggregate",
            Rule::UnknownAggregate => "disclosure.unknown_aggregate",
            Rule::OneTable => "disclosure.one_table",
            Rule::WindowOverAggregate => "disclosure.window_over_aggregate",
            Rule::MarginsFiltered => "disclosure.margins_filtered",
            Rule::DominanceUntraceable => "disclosure.dominance_untraceable",
            Rule::Subquery => "disclosure.subquery",
            Rule::IdentifyingColumn => "disclosure.identifying_column",
            Rule::Untraceable => "disclosure.untraceable",
            Rule::ExtremeQuantile => "disclosure.extreme_quantile",
            Rule::InternalFunction => "disclosure.internal_function",
            Rule::Generalisation => "disclosure.generalisation",
        }
    }

    /// The refusal, as a DataFusion error carrying the typed [`Refusal`].
    pub fn refuse(self, message: impl Into<String>) -> DataFusionError {
        policy_error(Refusal { rule: self.name(), message: message.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules of disclosure control refused outside this enum: the guards
    /// against errors that depend on data (`crate::infallible`).
    const ELSEWHERE: &[&str] = crate::infallible::Fallible::RULES;

    /// Every rule is explained to reviewers in docs/disclosure.md, and the
    /// document names no disclosure rule the code does not have.
    #[test]
    fn every_rule_is_documented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/disclosure.md");
        let doc = std::fs::read_to_string(path).expect("docs/disclosure.md");
        for rule in Rule::ALL {
            assert!(
                doc.contains(&format!("`{}`", rule.name())),
                "docs/disclosure.md does not explain rule {}",
                rule.name()
            );
        }
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        for word in doc.split('`').filter(|w| w.starts_with("disclosure.") && !w.contains(' ')) {
            let known = names.contains(&word) || ELSEWHERE.contains(&word);
            assert!(known, "docs/disclosure.md names rule {word}, which the code does not have");
        }
    }
}
