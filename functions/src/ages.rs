//! Generalisations of a birth date that disclosure control recognises as
//! non-identifying, and person-time between two dates.
//!
//! | function | value |
//! |---|---|
//! | `age_years(birth_date, at_date)` | completed years at `at_date` (a person born 29 February has the birthday on 1 March in other years) |
//! | `age_band(birth_date, at_date, width)` | the band's lower bound: `width · ⌊age / width⌋`, bands aligned to multiples of `width` |
//! | `birth_year(birth_date)` | the calendar year |
//! | `birth_decade(birth_date)` | the decade's first year (1950 for 1950–1959) |
//! | `years_between(start, end)` | `(end − start)` in days / 365.25, for person-time |
//! | `days_between(start, end)` | `end − start` in whole days |
//!
//! All are total: a NULL argument, or a width that is not positive, gives NULL;
//! they never fail on a value (arguments must be dates, checked at planning).
//! Which uses are non-identifying (constant widths of at least 5 years, the
//! date of an event or a 1 January) is decided by the coordinator's
//! disclosure control, not here.

use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Int64Type};
use datafusion::arrow::temporal_conversions::date32_to_datetime;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// Completed years at a date.
pub const AGE_YEARS_FN: &str = "age_years";
/// An age band of a fixed width.
pub const AGE_BAND_FN: &str = "age_band";
/// The year of birth.
pub const BIRTH_YEAR_FN: &str = "birth_year";
/// The decade of birth.
pub const BIRTH_DECADE_FN: &str = "birth_decade";
/// Years between two dates.
pub const YEARS_BETWEEN_FN: &str = "years_between";
/// Days between two dates.
pub const DAYS_BETWEEN_FN: &str = "days_between";

/// The functions that generalise a birth date (their first argument).
pub const GENERALISING_FUNCTIONS: &[&str] = &[AGE_YEARS_FN, AGE_BAND_FN, BIRTH_YEAR_FN, BIRTH_DECADE_FN];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    AgeYears,
    AgeBand,
    BirthYear,
    BirthDecade,
    YearsBetween,
    DaysBetween,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AgeYears => AGE_YEARS_FN,
            Kind::AgeBand => AGE_BAND_FN,
            Kind::BirthYear => BIRTH_YEAR_FN,
            Kind::BirthDecade => BIRTH_DECADE_FN,
            Kind::YearsBetween => YEARS_BETWEEN_FN,
            Kind::DaysBetween => DAYS_BETWEEN_FN,
        }
    }

    fn arity(self) -> usize {
        match self {
            Kind::BirthYear | Kind::BirthDecade => 1,
            Kind::AgeYears | Kind::YearsBetween | Kind::DaysBetween => 2,
            Kind::AgeBand => 3,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DateFunction {
    kind: Kind,
    signature: Signature,
}

/// The six functions, to register in a session.
pub fn date_udfs() -> Vec<ScalarUDF> {
    [Kind::AgeYears, Kind::AgeBand, Kind::BirthYear, Kind::BirthDecade, Kind::YearsBetween, Kind::DaysBetween]
        .into_iter()
        .map(|kind| {
            ScalarUDF::from(DateFunction { kind, signature: Signature::any(kind.arity(), Volatility::Immutable) })
        })
        .collect()
}

fn is_date(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) | DataType::Null)
}

impl ScalarUDFImpl for DateFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let name = self.kind.name();
        let dates = if self.kind == Kind::AgeBand { &args[..2] } else { args };
        if let Some(t) = dates.iter().find(|t| !is_date(t)) {
            return plan_err!("{name} takes dates, not {t}; cast text with CAST(x AS DATE) in the query");
        }
        if self.kind == Kind::AgeBand && !(args[2].is_integer() || args[2] == DataType::Null) {
            return plan_err!("the width of {name} is a whole number of years, not {}", args[2]);
        }
        Ok(match self.kind {
            Kind::YearsBetween => DataType::Float64,
            Kind::DaysBetween => DataType::Int64,
            _ => DataType::Int32,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        if args.args.len() != self.kind.arity() {
            return exec_err!("{} takes {} arguments", self.kind.name(), self.kind.arity());
        }
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(n)).collect::<Result<_>>()?;
        let date = |i: usize| -> Result<Vec<Option<NaiveDate>>> { dates(&arrays[i]) };
        let out: ArrayRef = match self.kind {
            Kind::BirthYear => Arc::new(date(0)?.into_iter().map(|d| d.map(|d| d.year())).collect::<Int32Array>()),
            Kind::BirthDecade => {
                Arc::new(date(0)?.into_iter().map(|d| d.map(|d| d.year().div_euclid(10) * 10)).collect::<Int32Array>())
            }
            Kind::AgeYears => {
                let (b, a) = (date(0)?, date(1)?);
                Arc::new(b.iter().zip(&a).map(|(b, a)| Some(age(*b.as_ref()?, *a.as_ref()?))).collect::<Int32Array>())
            }
            Kind::AgeBand => {
                let (b, a) = (date(0)?, date(1)?);
                let w = cast(&arrays[2], &DataType::Int64)?;
                let w = w.as_primitive::<Int64Type>();
                Arc::new(
                    (0..n)
                        .map(|r| {
                            let width = (!w.is_null(r)).then(|| w.value(r)).filter(|w| *w > 0 && *w <= 200)? as i32;
                            Some(age(b[r]?, a[r]?).div_euclid(width) * width)
                        })
                        .collect::<Int32Array>(),
                )
            }
            Kind::YearsBetween => {
                let (s, e) = (date(0)?, date(1)?);
                Arc::new(
                    s.iter()
                        .zip(&e)
                        .map(|(s, e)| Some((*e.as_ref()? - *s.as_ref()?).num_days() as f64 / 365.25))
                        .collect::<Float64Array>(),
                )
            }
            Kind::DaysBetween => {
                let (s, e) = (date(0)?, date(1)?);
                Arc::new(
                    s.iter()
                        .zip(&e)
                        .map(|(s, e)| Some((*e.as_ref()? - *s.as_ref()?).num_days()))
                        .collect::<datafusion::arrow::array::Int64Array>(),
                )
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Completed years from `birth` to `at` (negative before birth).
pub fn age(birth: NaiveDate, at: NaiveDate) -> i32 {
    let years = at.year() - birth.year();
    if (at.month(), at.day()) < (birth.month(), birth.day()) { years - 1 } else { years }
}

fn dates(array: &ArrayRef) -> Result<Vec<Option<NaiveDate>>> {
    let days = cast(array, &DataType::Date32)?;
    let days = days.as_primitive::<Date32Type>();
    Ok((0..days.len())
        .map(|r| (!days.is_null(r)).then(|| date32_to_datetime(days.value(r)).map(|t| t.date())).flatten())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Date32Array, Int64Array};
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("a date")
    }

    #[test]
    fn completed_years_count_birthdays() {
        assert_eq!(age(d("1950-06-15"), d("2020-06-14")), 69);
        assert_eq!(age(d("1950-06-15"), d("2020-06-15")), 70);
        // Born 29 February: the birthday is 1 March in other years.
        assert_eq!(age(d("2000-02-29"), d("2023-02-28")), 22);
        assert_eq!(age(d("2000-02-29"), d("2023-03-01")), 23);
        assert_eq!(age(d("2000-02-29"), d("2024-02-29")), 24);
        assert_eq!(age(d("2020-01-02"), d("2020-01-01")), -1);
    }

    fn call(name: &str, args: Vec<ArrayRef>) -> ArrayRef {
        let udf = date_udfs().into_iter().find(|f| f.name() == name).expect("the function");
        let types: Vec<DataType> = args.iter().map(|a| a.data_type().clone()).collect();
        let rt = udf.inner().return_type(&types).expect("types accepted");
        let n = args[0].len();
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                arg_fields: types.iter().map(|t| Arc::new(Field::new("a", t.clone(), true))).collect(),
                args: args.into_iter().map(ColumnarValue::Array).collect(),
                number_rows: n,
                return_field: Arc::new(Field::new("r", rt, true)),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .expect("total");
        out.to_array(n).expect("array")
    }

    fn days(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(v.iter().map(|s| s.map(|s| Date32Type::from_naive_date(d(s)))).collect::<Date32Array>())
    }

    #[test]
    fn bands_are_aligned_and_total() {
        let birth = days(&[Some("1950-06-15"), Some("1950-06-15"), None, Some("1950-06-15"), Some("1950-06-15")]);
        let at = days(&[Some("2020-06-14"), Some("2020-06-15"), Some("2020-01-01"), Some("2020-01-01"), None]);
        let width: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), Some(5), Some(5), Some(0), Some(5)]));
        let out = call(AGE_BAND_FN, vec![birth, at, width]);
        let out = out.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert_eq!(out.iter().collect::<Vec<_>>(), vec![Some(65), Some(70), None, None, None]);
    }

    #[test]
    fn years_and_decades_of_birth() {
        let birth = days(&[Some("1959-12-31"), Some("1960-01-01"), None]);
        let y = call(BIRTH_YEAR_FN, vec![birth.clone()]);
        let dec = call(BIRTH_DECADE_FN, vec![birth]);
        let int = |a: &ArrayRef| a.as_primitive::<datafusion::arrow::datatypes::Int32Type>().iter().collect::<Vec<_>>();
        assert_eq!(int(&y), vec![Some(1959), Some(1960), None]);
        assert_eq!(int(&dec), vec![Some(1950), Some(1960), None]);
        let py = call(YEARS_BETWEEN_FN, vec![days(&[Some("2020-01-01")]), days(&[Some("2021-01-01")])]);
        let py = py.as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(0);
        assert!((py - 366.0 / 365.25).abs() < 1e-12);
    }

    #[test]
    fn text_is_refused_at_planning() {
        let f = date_udfs().into_iter().find(|f| f.name() == AGE_YEARS_FN).expect("the function");
        let e = f.inner().return_type(&[DataType::Utf8, DataType::Date32]).expect_err("text refused");
        assert!(e.to_string().contains("takes dates"), "{e}");
    }
}
