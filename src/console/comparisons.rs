//! Open comparisons (öppna jämförelser): an indicator per hospital or region
//! for one year (or a run of years, for small units), computed by ordinary SQL through the coordinator's engine as
//! the console's identity and project, so every number passed the approval
//! and disclosure control exactly as a query's would, and the query is in the
//! coordinator's audit log.
//!
//! One query per page, with `GROUP BY ROLLUP(unit)`: the national value is
//! the margin row of the same answer, so secondary suppression protects it
//! together with the units (a national total asked separately would give a
//! single withheld unit back by subtraction).

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

/// An indicator the console can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indicator {
    pub key: &'static str,
    pub title: &'static str,
    /// What the percentage counts, for the axis and the table.
    pub measure: &'static str,
    /// What the denominator (the `operations` column) counts.
    pub denominator: &'static str,
    /// What the events (the `events` column) are.
    pub events: &'static str,
    /// The SQL for `by` (`hospital` or `region`) and `year`; see [`sql`].
    template: &'static str,
}

/// The indicators, in menu order.
pub const INDICATORS: [Indicator; 3] = [
    Indicator {
        key: "mortality90",
        title: "90-day mortality after hip replacement",
        measure: "90-day mortality (%)",
        denominator: "operations",
        events: "deaths within 90 days",
        template: "SELECT o.{by} AS unit,
       count(*) AS operations,
       sum(CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END) AS events,
       100.0 * sum(CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END) / count(*) AS percent
FROM hip.operations o
LEFT JOIN dors.deaths d ON d.person = o.person
WHERE o.op_date BETWEEN DATE '{from}-01-01' AND DATE '{through}-12-31'
GROUP BY ROLLUP(o.{by})
ORDER BY o.{by} NULLS LAST",
    },
    Indicator {
        key: "reoperation",
        title: "Reoperation after hip replacement",
        measure: "Reoperation (%)",
        denominator: "operations",
        events: "reoperations",
        template: "SELECT o.{by} AS unit,
       count(*) AS operations,
       sum(CASE WHEN o.reoperation THEN 1 ELSE 0 END) AS events,
       100.0 * sum(CASE WHEN o.reoperation THEN 1 ELSE 0 END) / count(*) AS percent
FROM hip.operations o
WHERE o.op_date BETWEEN DATE '{from}-01-01' AND DATE '{through}-12-31'
GROUP BY ROLLUP(o.{by})
ORDER BY o.{by} NULLS LAST",
    },
    Indicator {
        key: "coverage",
        title: "Coverage of the hip register (patient-register hip replacements found in it)",
        measure: "Coverage (%)",
        denominator: "hip replacements in the patient register",
        events: "found in the hip register",
        template: "SELECT n.{by} AS unit,
       count(*) AS operations,
       count(o.op_id) AS events,
       100.0 * count(o.op_id) / count(*) AS percent
FROM npr.inpatient n
LEFT JOIN hip.operations o
  ON o.person = n.person AND o.hospital = n.hospital
 AND o.op_date BETWEEN n.admit_date AND n.admit_date + INTERVAL '1 day'
WHERE n.procedure IN ('NFB29', 'NFB39', 'NFB49', 'NFB59')
  AND n.admit_date BETWEEN DATE '{from}-01-01' AND DATE '{through}-12-31'
GROUP BY ROLLUP(n.{by})
ORDER BY n.{by} NULLS LAST",
    },
];

/// The unit of comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Hospital,
    Region,
}

impl By {
    pub fn parse(s: &str) -> Option<By> {
        match s {
            "hospital" => Some(By::Hospital),
            "region" => Some(By::Region),
            _ => None,
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            By::Hospital => "hospital",
            By::Region => "region",
        }
    }
}

pub fn indicator(key: &str) -> Option<&'static Indicator> {
    INDICATORS.iter().find(|i| i.key == key)
}

/// The SQL the console runs for `indicator` by `by` for the years `from`
/// through `through` (only fixed text and numbers go in: no user text
/// reaches the SQL).
pub fn sql(indicator: &Indicator, by: By, from: i32, through: i32) -> String {
    indicator
        .template
        .replace("{by}", by.column())
        .replace("{from}", &format!("{from:04}"))
        .replace("{through}", &format!("{through:04}"))
}

/// One row of the released answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `None` for the national row.
    pub unit: Option<String>,
    pub operations: Option<u64>,
    pub events: Option<u64>,
    pub percent: Option<f64>,
    /// The columns disclosure control withheld (`* …`: the merged row of small units).
    pub withheld: Vec<String>,
}

impl Row {
    /// The merged row of units below the threshold (keys withheld too).
    pub fn is_merged(&self) -> bool {
        self.withheld.iter().any(|w| w.starts_with('*'))
    }

    /// Plotted only when both coordinates were released.
    pub fn plottable(&self) -> bool {
        self.unit.is_some() && self.operations.is_some() && self.percent.is_some()
    }
}

/// Why an answer could not be read as an indicator table.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer has no column {0:?} (internal error in the console's SQL, please report)")]
    Missing(&'static str),
    #[error("column {column:?} has type {found}, not a number (internal error in the console's SQL, please report)")]
    Type { column: &'static str, found: DataType },
}

fn column<'a>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a arrow::array::ArrayRef, AnswerError> {
    batch.column_by_name(name).ok_or(AnswerError::Missing(name))
}

fn uint(batch: &RecordBatch, name: &'static str, r: usize) -> Result<Option<u64>, AnswerError> {
    let a = column(batch, name)?;
    if a.is_null(r) {
        return Ok(None);
    }
    let c = arrow::compute::cast(a, &DataType::Int64)
        .map_err(|_| AnswerError::Type { column: name, found: a.data_type().clone() })?;
    Ok(Some(c.as_primitive::<arrow::datatypes::Int64Type>().value(r).max(0) as u64))
}

/// Reads the released answer: one row per unit, the national row (unit
/// `None`, not merged) and possibly the merged row of small units.
pub fn rows(batches: &[RecordBatch]) -> Result<Vec<Row>, AnswerError> {
    let mut out = Vec::new();
    for b in batches {
        let unit = column(b, "unit")?;
        let unit = arrow::compute::cast(unit, &DataType::Utf8)
            .map_err(|_| AnswerError::Type { column: "unit", found: unit.data_type().clone() })?;
        let unit = unit.as_string::<i32>();
        let percent = column(b, "percent")?;
        let percent = arrow::compute::cast(percent, &DataType::Float64)
            .map_err(|_| AnswerError::Type { column: "percent", found: percent.data_type().clone() })?;
        let percent = percent.as_primitive::<arrow::datatypes::Float64Type>();
        let withheld = column(b, "withheld")?;
        let withheld = arrow::compute::cast(withheld, &DataType::Utf8)
            .map_err(|_| AnswerError::Type { column: "withheld", found: withheld.data_type().clone() })?;
        let withheld = withheld.as_string::<i32>();
        for r in 0..b.num_rows() {
            out.push(Row {
                unit: (!unit.is_null(r)).then(|| unit.value(r).to_owned()),
                operations: uint(b, "operations", r)?,
                events: uint(b, "events", r)?,
                percent: (!percent.is_null(r)).then(|| percent.value(r)),
                withheld: if withheld.is_null(r) {
                    Vec::new()
                } else {
                    withheld.value(r).split(',').map(str::to_owned).collect()
                },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_has_no_placeholders_left() {
        for i in INDICATORS {
            let s = sql(&i, By::Region, 2019, 2021);
            assert!(!s.contains('{'), "{s}");
            assert!(s.contains(".region)\nORDER BY"), "{s}");
            assert!(s.contains("BETWEEN DATE '2019-01-01' AND DATE '2021-12-31'"), "{s}");
        }
        assert_eq!(By::parse("hospital"), Some(By::Hospital));
        assert_eq!(By::parse("hospital; DROP"), None);
        assert!(indicator("reoperation").is_some() && indicator("x").is_none());
    }
}
