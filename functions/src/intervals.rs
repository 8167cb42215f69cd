//! Confidence intervals of counts as SQL functions, for released aggregates:
//! `wilson_lower(x, n [, level])`, `clopper_pearson_upper(x, n [, level])`,
//! `poisson_lower(x [, level])`, … (level 0.95 by default). The mathematics is
//! `samkor_stats`'. Total: invalid input (n ≤ 0, x > n, a level outside
//! (0, 1), NULL) gives NULL, never an error.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Wilson,
    ClopperPearson,
    Poisson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Lower,
    Upper,
}

/// The interval functions' names.
pub const INTERVAL_FUNCTIONS: &[&str] = &[
    "wilson_lower",
    "wilson_upper",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "poisson_lower",
    "poisson_upper",
];

#[derive(Debug, PartialEq, Eq, Hash)]
struct IntervalFunction {
    name: &'static str,
    kind: Kind,
    side: Side,
    signature: Signature,
}

/// The six functions, to register in a session.
pub fn interval_udfs() -> Vec<ScalarUDF> {
    let kinds = [Kind::Wilson, Kind::Wilson, Kind::ClopperPearson, Kind::ClopperPearson, Kind::Poisson, Kind::Poisson];
    INTERVAL_FUNCTIONS
        .iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (name, kind))| {
            let side = if i % 2 == 0 { Side::Lower } else { Side::Upper };
            ScalarUDF::from(IntervalFunction {
                name,
                kind,
                side,
                signature: Signature::variadic_any(Volatility::Immutable),
            })
        })
        .collect()
}

impl IntervalFunction {
    fn counts(&self) -> usize {
        if self.kind == Kind::Poisson { 1 } else { 2 }
    }

    fn interval(&self, x: f64, n: f64, level: f64) -> Option<f64> {
        let i = match self.kind {
            Kind::Wilson => samkor_stats::wilson(x, n, level),
            Kind::ClopperPearson => samkor_stats::clopper_pearson(x, n, level),
            Kind::Poisson => samkor_stats::poisson_exact(x, level),
        }?;
        Some(if self.side == Side::Lower { i.lower } else { i.upper })
    }
}

impl ScalarUDFImpl for IntervalFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let counts = self.counts();
        if args.len() != counts && args.len() != counts + 1 {
            let what = if counts == 1 { "a count" } else { "a count x and a total n" };
            return plan_err!("{} takes {what}, and optionally a confidence level (0.95 by default)", self.name);
        }
        if let Some(t) = args.iter().find(|t| !(t.is_numeric() || **t == DataType::Null)) {
            return plan_err!("{} takes numbers, not {t}", self.name);
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows).and_then(|a| Ok(cast(&a, &DataType::Float64)?)))
            .collect::<Result<_>>()?;
        let value = |c: usize, r: usize| -> Option<f64> {
            let a = columns.get(c)?.as_primitive::<Float64Type>();
            (!a.is_null(r)).then(|| a.value(r))
        };
        let counts = self.counts();
        let out: Float64Array = (0..rows)
            .map(|r| {
                let x = value(0, r)?;
                let n = if counts == 2 { value(1, r)? } else { 0.0 };
                let level = if columns.len() > counts { value(counts, r)? } else { 0.95 };
                self.interval(x, n, level).filter(|v| v.is_finite())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn intervals_in_sql_match_r() {
        let ctx = SessionContext::new();
        for f in interval_udfs() {
            ctx.register_udf(f);
        }
        let sql = "SELECT clopper_pearson_lower(7, 20), clopper_pearson_upper(7, 20), poisson_lower(10), \
                   poisson_upper(10, 0.95), wilson_lower(7, 20), wilson_upper(CAST(NULL AS INT), 20), \
                   wilson_lower(21, 20), poisson_upper(3, 1.5)";
        let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
        let b = &batches[0];
        let v = |i: usize| {
            let a = b.column(i).as_primitive::<Float64Type>();
            (!a.is_null(0)).then(|| a.value(0))
        };
        // R: binom.test(7, 20)$conf.int, poisson.test(10)$conf.int, prop.test(7, 20, correct = FALSE)$conf.int
        assert!((v(0).unwrap() - 0.1539092).abs() < 1e-7);
        assert!((v(1).unwrap() - 0.5921885).abs() < 1e-7);
        assert!((v(2).unwrap() - 4.795389).abs() < 1e-6);
        assert!((v(3).unwrap() - 18.390356).abs() < 1e-6);
        assert!((v(4).unwrap() - 0.1811918).abs() < 1e-6);
        assert_eq!((v(5), v(6), v(7)), (None, None, None), "invalid input gives NULL");
    }
}
