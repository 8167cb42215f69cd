//! Model formulas as R and statsmodels write them, the subset `glm` takes:
//! `outcome ~ x1 + C(x2) + offset(log_time)`, or `outcome ~ 1`.
//! Text and boolean columns are categorical; `C(x)` makes a numeric column
//! categorical too. The intercept is always in the model.

/// A parsed formula.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Formula {
    pub(super) outcome: String,
    pub(super) terms: Vec<Term>,
    pub(super) offset: Option<String>,
}

/// One predictor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Term {
    pub(super) column: String,
    /// `C(x)`: categorical whatever its type.
    pub(super) categorical: bool,
}

impl Formula {
    /// Parses a formula; the error says what is wrong in it.
    pub(super) fn parse(text: &str) -> Result<Formula, String> {
        let Some((lhs, rhs)) = text.split_once('~') else {
            return Err("a formula has the form outcome ~ x1 + x2".to_owned());
        };
        let outcome = name(lhs.trim()).ok_or_else(|| format!("the outcome {:?} is not a column name", lhs.trim()))?;
        let mut formula = Formula { outcome, terms: Vec::new(), offset: None };
        for raw in rhs.split('+').map(str::trim) {
            if raw == "1" {
                continue;
            }
            if raw.is_empty() {
                return Err("an empty term in the formula (two '+' in a row, or a trailing '+')".to_owned());
            }
            if let Some(inner) = call(raw, "offset") {
                if formula.offset.replace(name(inner).ok_or_else(|| bad(raw))?).is_some() {
                    return Err("a formula may have one offset".to_owned());
                }
                continue;
            }
            let term = match call(raw, "C") {
                Some(inner) => Term { column: name(inner).ok_or_else(|| bad(raw))?, categorical: true },
                None => Term { column: name(raw).ok_or_else(|| bad(raw))?, categorical: false },
            };
            if formula.terms.iter().any(|t| t.column == term.column) || term.column == formula.outcome {
                return Err(format!("column {} appears twice in the formula", term.column));
            }
            formula.terms.push(term);
        }
        Ok(formula)
    }
}

fn bad(term: &str) -> String {
    format!("term {term:?} is not a column, C(column) or offset(column); compute expressions in the query")
}

fn call<'a>(term: &'a str, function: &str) -> Option<&'a str> {
    term.strip_prefix(function)?.trim_start().strip_prefix('(')?.strip_suffix(')').map(str::trim)
}

fn name(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let first = chars.next()?;
    ((first.is_alphabetic() || first == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms_categories_and_offsets() {
        let f = Formula::parse("died ~ age + C(asa) + sex + offset(log_py)").expect("parses");
        assert_eq!(f.outcome, "died");
        assert_eq!(
            f.terms,
            vec![
                Term { column: "age".into(), categorical: false },
                Term { column: "asa".into(), categorical: true },
                Term { column: "sex".into(), categorical: false },
            ]
        );
        assert_eq!(f.offset.as_deref(), Some("log_py"));
        assert!(Formula::parse("died ~ 1").expect("intercept only").terms.is_empty());
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(Formula::parse("died = age").unwrap_err().contains("outcome ~"));
        assert!(Formula::parse("died ~ age + ").unwrap_err().contains("empty term"));
        assert!(Formula::parse("died ~ log(age)").unwrap_err().contains("compute expressions in the query"));
        assert!(Formula::parse("died ~ age + age").unwrap_err().contains("twice"));
        assert!(Formula::parse("died ~ offset(a) + offset(b)").unwrap_err().contains("one offset"));
    }
}
