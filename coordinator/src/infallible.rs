//! Errors that do not depend on data.
//!
//! Whether a query succeeds, and the error it returns, may depend only on the
//! query text, the schema and the approval, never on the values in the
//! registers. Otherwise a fallible expression reached only by one person's row
//! (`CASE WHEN <isolates one person> THEN CAST('x' AS INT) ELSE 0 END`) makes
//! the query fail exactly when that person exists: an oracle.
//!
//! [`make_infallible`] rewrites the approved, optimized plan (subqueries
//! included) before disclosure control, so that no expression can fail on a
//! row:
//!
//! ```text
//!  constant sub-expression (no column, not volatile), in every CASE branch
//!      ─▶ evaluated now; if that fails the query is refused ─ disclosure.fallible_expression
//!  CAST(data AS t) that can fail       ─▶ TRY_CAST(data AS t)       (NULL where it does not convert)
//!  integer a / b, a % b over data      ─▶ a / nullif(b, 0)          (and b = -1 without overflow)
//!  abs(integer data)                   ─▶ abs(nullif(x, MIN))
//!  sqrt(data)                          ─▶ sqrt(CASE WHEN x < 0 THEN NULL ELSE x END)
//!  date as text (CAST, concat, to_char) ─▶ NULL outside the years 1 to 9999
//!  date ± constant interval ≤ 1000 y   ─▶ NULL outside the years 1 to 9999; otherwise refused
//!  DECIMAL + - * / % over data         ─▶ refused                   ─ disclosure.fallible_arithmetic
//!  function of data                    ─▶ allowed only if in ALLOWED ─ disclosure.fallible_function
//!    its constant arguments (regex patterns, units, lengths) are tried now ─ disclosure.invalid_argument
//!  LIKE / SIMILAR TO / ~               ─▶ constant pattern only, tried now
//! ```
//!
//! Expressions are type-coerced first (rules such as the approval's
//! generalisations add uncoerced ones; the node's planner would otherwise add
//! plain CASTs to them).
//!
//! Integer `+ - *`, unary minus, `sum` and `avg` of integers wrap on overflow
//! in DataFusion 55 (no error; the tests below pin that), so they need no
//! rewrite. The NULLs produced here are ordinary NULLs: disclosure control
//! counts them like any other value.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::new_null_array;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRewriter};
use datafusion::common::{DFSchema, DFSchemaRef, Result, ScalarValue, internal_datafusion_err};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, Volatility, lit, when,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::create_physical_expr;

use crate::policy::{Refusal, policy_error};

/// Why a query is refused because an expression in it could fail on data.
/// The display is the message after "refused by rule …:"; it names the
/// query's own expressions and functions, never a data value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fallible {
    #[error(
        "the constant expression {expr} cannot be evaluated ({reason}); \
         fix or remove it: constant parts of a query are evaluated when it is planned, in every CASE branch"
    )]
    Expression { expr: String, reason: String },
    #[error(
        "{function}() can fail on some values and is not applied to data; {advice} \
         (the functions allowed on data are listed in docs/disclosure.md)"
    )]
    Function { function: String, advice: String },
    #[error("argument {position} of {function}() must be a constant{}", if *data_pattern { " (a pattern or a unit from data could fail on some rows)" } else { "" })]
    ConstantArgument { function: String, position: usize, data_pattern: bool },
    #[error("{function}() fails with its constant arguments ({reason}); fix the pattern, unit or position")]
    Argument { function: String, reason: String },
    #[error(
        "{op} on DECIMAL values can overflow on some values; cast the operands to DOUBLE \
         (e.g. CAST(x AS DOUBLE)) before computing with them"
    )]
    Arithmetic { op: String },
    #[error(
        "date arithmetic over data takes a constant interval of at most 1000 years and a DATE \
         (not a TIMESTAMP: cast it to DATE first); {what}"
    )]
    DateArithmetic { what: String },
}

impl Fallible {
    /// The stable rule name, as written in the audit log.
    pub fn rule(&self) -> &'static str {
        match self {
            Fallible::Expression { .. } => "disclosure.fallible_expression",
            Fallible::Function { .. } | Fallible::ConstantArgument { .. } => "disclosure.fallible_function",
            Fallible::Argument { .. } => "disclosure.invalid_argument",
            Fallible::Arithmetic { .. } | Fallible::DateArithmetic { .. } => "disclosure.fallible_arithmetic",
        }
    }

    /// Every rule this module can refuse by (documented in docs/disclosure.md).
    pub const RULES: &'static [&'static str] = &[
        "disclosure.fallible_expression",
        "disclosure.fallible_function",
        "disclosure.invalid_argument",
        "disclosure.fallible_arithmetic",
    ];
}

impl From<Fallible> for Refusal {
    fn from(f: Fallible) -> Refusal {
        Refusal { rule: f.rule(), message: f.to_string() }
    }
}

fn refuse(f: Fallible) -> datafusion::common::DataFusionError {
    policy_error(f.into())
}

/// Which arguments of an allowed function may come from data.
#[derive(Debug, Clone, Copy)]
enum DataArgs {
    /// Any argument: the function returns a value (or NULL) for every input.
    All,
    /// Only these positions (0-based); the others must be constants, and the
    /// function is tried with them at planning (on a neutral value in place
    /// of the data) so that a bad pattern, unit or length fails every query.
    Only(&'static [usize]),
}

/// Scalar functions that may be applied to data: checked not to fail on any
/// value (`every_allowed_function_is_total` below runs each on extreme
/// values: empty and non-ASCII strings, 0, ±1, integer MIN/MAX, NaN, ±∞,
/// the extreme dates).
const ALLOWED: &[(&str, DataArgs)] = &[
    // Strings.
    ("ascii", DataArgs::All),
    ("bit_length", DataArgs::All),
    ("btrim", DataArgs::All),
    ("character_length", DataArgs::All),
    ("concat", DataArgs::All),
    ("concat_ws", DataArgs::All),
    ("contains", DataArgs::All),
    ("ends_with", DataArgs::All),
    ("find_in_set", DataArgs::All),
    ("initcap", DataArgs::All),
    ("left", DataArgs::All),
    ("levenshtein", DataArgs::All),
    ("lower", DataArgs::All),
    ("ltrim", DataArgs::All),
    ("octet_length", DataArgs::All),
    ("replace", DataArgs::All),
    ("reverse", DataArgs::All),
    ("right", DataArgs::All),
    ("rtrim", DataArgs::All),
    ("split_part", DataArgs::Only(&[0, 1])),
    ("starts_with", DataArgs::All),
    ("strpos", DataArgs::All),
    ("substr", DataArgs::Only(&[0])),
    ("to_hex", DataArgs::All),
    ("translate", DataArgs::All),
    ("upper", DataArgs::All),
    // Regular expressions: the pattern and flags are constants, compiled at planning.
    ("regexp_count", DataArgs::Only(&[0])),
    ("regexp_instr", DataArgs::Only(&[0])),
    ("regexp_like", DataArgs::Only(&[0])),
    ("regexp_match", DataArgs::Only(&[0])),
    ("regexp_replace", DataArgs::Only(&[0])),
    // Conditionals.
    ("coalesce", DataArgs::All),
    ("greatest", DataArgs::All),
    ("least", DataArgs::All),
    ("nullif", DataArgs::All),
    ("nvl", DataArgs::All),
    ("nvl2", DataArgs::All),
    // Numbers (floating point: out-of-domain values give NaN or ±∞, not errors).
    ("abs", DataArgs::All),
    ("acos", DataArgs::All),
    ("acosh", DataArgs::All),
    ("asin", DataArgs::All),
    ("asinh", DataArgs::All),
    ("atan", DataArgs::All),
    ("atan2", DataArgs::All),
    ("atanh", DataArgs::All),
    ("cbrt", DataArgs::All),
    ("ceil", DataArgs::All),
    ("cos", DataArgs::All),
    ("cosh", DataArgs::All),
    ("cot", DataArgs::All),
    ("degrees", DataArgs::All),
    ("exp", DataArgs::All),
    ("floor", DataArgs::All),
    ("isnan", DataArgs::All),
    ("iszero", DataArgs::All),
    ("ln", DataArgs::All),
    ("log", DataArgs::All),
    ("log10", DataArgs::All),
    ("log2", DataArgs::All),
    ("nanvl", DataArgs::All),
    ("radians", DataArgs::All),
    ("round", DataArgs::Only(&[0])),
    ("signum", DataArgs::All),
    ("sin", DataArgs::All),
    ("sinh", DataArgs::All),
    ("sqrt", DataArgs::All),
    ("tan", DataArgs::All),
    ("tanh", DataArgs::All),
    ("trunc", DataArgs::Only(&[0])),
    // Dates: the unit is a constant.
    ("date_part", DataArgs::Only(&[1])),
    ("date_trunc", DataArgs::Only(&[1])),
    ("to_char", DataArgs::Only(&[0])),
    // Types.
    ("arrow_typeof", DataArgs::All),
    // samkor's own (samkor_functions): generalisations of a birth date, person-time.
    ("age_years", DataArgs::All),
    ("age_band", DataArgs::All),
    ("birth_year", DataArgs::All),
    ("birth_decade", DataArgs::All),
    ("years_between", DataArgs::All),
    ("days_between", DataArgs::All),
    ("wilson_lower", DataArgs::All),
    ("wilson_upper", DataArgs::All),
    ("clopper_pearson_lower", DataArgs::All),
    ("clopper_pearson_upper", DataArgs::All),
    ("poisson_lower", DataArgs::All),
    ("poisson_upper", DataArgs::All),
];

/// What to use instead of a function that is not allowed on data.
fn advice(function: &str) -> &'static str {
    match function {
        "to_date"
        | "to_timestamp"
        | "to_timestamp_seconds"
        | "to_timestamp_millis"
        | "to_timestamp_micros"
        | "to_timestamp_nanos"
        | "to_time"
        | "make_date"
        | "make_time"
        | "to_unixtime"
        | "from_unixtime" => {
            "use TRY_CAST(x AS DATE) or TRY_CAST(x AS TIMESTAMP), which give NULL where a value does not convert"
        }
        "arrow_cast" | "cast_to_type" => "use TRY_CAST, which gives NULL where a value does not convert",
        "chr" | "repeat" | "lpad" | "rpad" | "overlay" | "substr_index" | "decode" => {
            "compute it from the released answer instead, or use substr/concat"
        }
        "factorial" | "gcd" | "lcm" => "cast to DOUBLE and compute it from the released answer",
        "power" | "pow" => "use exp(ln(x) * y), which gives NaN instead of failing on 0 to a negative power",
        _ => "use an allowed function, or compute it from the released answer",
    }
}

fn allowed(name: &str) -> Option<DataArgs> {
    ALLOWED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// Rewrites `plan` (and every subquery in it) so that no expression can fail
/// on a data value; refuses, with a typed [`Fallible`] as a
/// [`Refusal`], what cannot be made so. Run on the approved, optimized plan.
pub fn make_infallible(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|p| {
        let t = rewrite_node(p)?;
        // Nullability may change above a TRY_CAST or a nullif.
        t.map_data(|p| p.recompute_schema())
    })
    .map(|t| t.data)
}

/// The schema the expressions of `plan` are typed in.
fn expr_schema(plan: &LogicalPlan) -> Result<DFSchemaRef> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            Ok(Arc::new(DFSchema::try_from_qualified_schema(scan.table_name.clone(), &scan.source.schema())?))
        }
        _ => {
            let inputs = plan.inputs();
            if inputs.is_empty() { Ok(plan.schema().clone()) } else { Ok(Arc::new(merge_schema(&inputs))) }
        }
    }
}

fn rewrite_node(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if let LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) = plan {
        // Their plans are inputs, rewritten like any other.
        return Ok(Transformed::no(plan));
    }
    let schema = expr_schema(&plan)?;
    let names = NamePreserver::new(&plan);
    let context = SimplifyContext::builder().with_schema(schema.clone()).build();
    let coercer = ExprSimplifier::new(context);
    plan.map_expressions(|e| {
        let saved = names.save(&e);
        // Expressions added by optimizer rules (the approval's generalisations)
        // are not coerced yet: the node's planner would add plain CASTs to
        // them, so make those explicit here, where they become TRY_CASTs.
        let coerced = coercer.coerce(e.clone(), &schema).unwrap_or_else(|_| e.clone());
        let changed = coerced != e;
        let mut rw = Rewriter { schema: &schema, evaluable: Vec::new() };
        let t = coerced.rewrite(&mut rw)?;
        let t = if changed { Transformed::yes(t.data) } else { t };
        Ok(t.update_data(|e| saved.restore(e)))
    })
}

/// One expression tree, bottom-up: constant parts folded, data parts guarded.
struct Rewriter<'a> {
    schema: &'a DFSchema,
    /// Per open node: whether it (so far) has no column, subquery or volatile part.
    evaluable: Vec<bool>,
}

impl TreeNodeRewriter for Rewriter<'_> {
    type Node = Expr;

    fn f_down(&mut self, e: Expr) -> Result<Transformed<Expr>> {
        self.evaluable.push(true);
        if !evaluable_node(&e) {
            for p in self.evaluable.iter_mut().rev() {
                if !*p {
                    break;
                }
                *p = false;
            }
        }
        Ok(Transformed::no(e))
    }

    fn f_up(&mut self, e: Expr) -> Result<Transformed<Expr>> {
        let evaluable = self.evaluable.pop().ok_or_else(|| internal_datafusion_err!("unbalanced expression walk"))?;
        if evaluable { fold(e) } else { self.guard(e) }
    }
}

/// Whether this node, given constant children, can be evaluated at planning
/// (DataFusion's `ConstEvaluator` makes the same choice).
fn evaluable_node(e: &Expr) -> bool {
    match e {
        Expr::ScalarFunction(f) => f.func.signature().volatility != Volatility::Volatile,
        Expr::HigherOrderFunction(f) => f.func.signature().volatility != Volatility::Volatile,
        Expr::Literal(..)
        | Expr::Alias(..)
        | Expr::BinaryExpr(_)
        | Expr::Not(_)
        | Expr::IsNotNull(_)
        | Expr::IsNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Negative(_)
        | Expr::Between(_)
        | Expr::Like(_)
        | Expr::SimilarTo(_)
        | Expr::Case(_)
        | Expr::Cast(_)
        | Expr::TryCast(_)
        | Expr::InList(_) => true,
        _ => false,
    }
}

/// A one-row batch to evaluate constants on (as DataFusion's simplifier does).
static ONE_ROW: LazyLock<(DFSchema, RecordBatch)> = LazyLock::new(|| {
    let schema = Arc::new(Schema::new(vec![Field::new(".", DataType::Null, true)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![new_null_array(&DataType::Null, 1)]).expect("one-row batch");
    (DFSchema::try_from(schema).expect("one-column schema"), batch)
});

enum Evaluated {
    Value(ScalarValue),
    /// Not something the physical planner takes on its own (it is planned,
    /// and any planning error raised, the same way whatever the data).
    NotPlannable,
    Failed(String),
}

fn evaluate(e: &Expr) -> Evaluated {
    let (schema, batch) = &*ONE_ROW;
    evaluate_in(e, schema, batch)
}

fn evaluate_in(e: &Expr, schema: &DFSchema, batch: &RecordBatch) -> Evaluated {
    // Expressions built by our own rules (the approval's generalisations) are
    // not coerced yet; the node's planner coerces them, so do the same here.
    let context = SimplifyContext::builder().with_schema(Arc::new(schema.clone())).build();
    let Ok(e) = ExprSimplifier::new(context).coerce(e.clone(), schema) else {
        return Evaluated::NotPlannable;
    };
    let props = ExecutionProps::new();
    let Ok(physical) = create_physical_expr(&e, schema, &props, &PhysicalPlanningContext::default()) else {
        return Evaluated::NotPlannable;
    };
    let value = match physical.evaluate(batch) {
        Ok(ColumnarValue::Scalar(s)) => Ok(s),
        Ok(ColumnarValue::Array(a)) if a.len() == 1 => ScalarValue::try_from_array(&a, 0),
        Ok(ColumnarValue::Array(_)) => return Evaluated::NotPlannable,
        Err(err) => Err(err),
    };
    match value {
        Ok(v) => Evaluated::Value(v),
        Err(err) => Evaluated::Failed(first_line(&err)),
    }
}

/// A one-row batch standing in for the data in a trial evaluation of a
/// function's constant arguments: each data argument becomes a column holding
/// a neutral value of its type (an array, as at run time).
#[derive(Default)]
struct Probe {
    fields: Vec<Field>,
    arrays: Vec<datafusion::arrow::array::ArrayRef>,
}

impl Probe {
    fn data(&mut self, t: DataType) -> Result<Expr> {
        let name = format!("__samkor_probe{}", self.fields.len());
        let v = ScalarValue::new_default(&t).or_else(|_| ScalarValue::try_from(&t))?;
        self.arrays.push(v.to_array_of_size(1)?);
        self.fields.push(Field::new(&name, t, true));
        Ok(Expr::Column(datafusion::common::Column::from_name(name)))
    }

    fn run(self, e: &Expr) -> Result<Evaluated> {
        if self.fields.is_empty() {
            return Ok(evaluate(e));
        }
        let schema = Arc::new(Schema::new(self.fields));
        let batch = RecordBatch::try_new(schema.clone(), self.arrays)?;
        Ok(evaluate_in(e, &DFSchema::try_from(schema)?, &batch))
    }
}

fn first_line(err: &datafusion::common::DataFusionError) -> String {
    err.find_root().message().lines().next().unwrap_or_default().trim().to_owned()
}

/// Folds a constant sub-expression into its value, or refuses the query if it fails.
fn fold(e: Expr) -> Result<Transformed<Expr>> {
    if matches!(e, Expr::Literal(..) | Expr::Alias(..)) {
        return Ok(Transformed::no(e));
    }
    match evaluate(&e) {
        Evaluated::Value(v) => Ok(Transformed::yes(Expr::Literal(v, None))),
        Evaluated::NotPlannable => Ok(Transformed::no(e)),
        Evaluated::Failed(reason) => Err(refuse(Fallible::Expression { expr: e.to_string(), reason })),
    }
}

fn is_signed_int(t: &DataType) -> bool {
    matches!(t, DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64)
}

fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..))
}

fn min_of(t: &DataType) -> Option<ScalarValue> {
    Some(match t {
        DataType::Int8 => ScalarValue::Int8(Some(i8::MIN)),
        DataType::Int16 => ScalarValue::Int16(Some(i16::MIN)),
        DataType::Int32 => ScalarValue::Int32(Some(i32::MIN)),
        DataType::Int64 => ScalarValue::Int64(Some(i64::MIN)),
        _ => return None,
    })
}

/// Casts that succeed for every value of `from` (widening, to text, from booleans).
fn cast_never_fails(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || matches!(from, Null) {
        return true;
    }
    let int = |t: &DataType| t.is_integer();
    match (from, to) {
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (UInt8, UInt16 | UInt32 | UInt64 | Int16 | Int32 | Int64) | (UInt16, UInt32 | UInt64 | Int32 | Int64) => true,
        (UInt32, UInt64 | Int64) => true,
        (f, Float32 | Float64) if int(f) || matches!(f, Float32 | Boolean) => true,
        (Boolean, t) if int(t) => true,
        (f, Utf8 | LargeUtf8 | Utf8View)
            if int(f) || matches!(f, Float32 | Float64 | Boolean | Utf8 | LargeUtf8 | Utf8View) =>
        {
            true
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        _ => false,
    }
}

/// The dates arrow can format (chrono's range, conservatively the years 1 to 9999).
fn date_bounds(t: &DataType) -> Option<(ScalarValue, ScalarValue)> {
    const FIRST: i32 = -719_162; // 0001-01-01
    const LAST: i32 = 2_932_896; // 9999-12-31
    match t {
        DataType::Date32 => Some((ScalarValue::Date32(Some(FIRST)), ScalarValue::Date32(Some(LAST)))),
        DataType::Date64 => {
            let ms = 86_400_000i64;
            Some((ScalarValue::Date64(Some(FIRST as i64 * ms)), ScalarValue::Date64(Some(LAST as i64 * ms))))
        }
        _ => None,
    }
}

/// The length of a constant interval (or a number of days) in days, roughly.
fn interval_days(v: &ScalarValue) -> Option<f64> {
    Some(match v {
        ScalarValue::IntervalYearMonth(Some(m)) => *m as f64 * 31.0,
        ScalarValue::IntervalDayTime(Some(x)) => x.days as f64 + x.milliseconds as f64 / 86_400_000.0,
        ScalarValue::IntervalMonthDayNano(Some(x)) => {
            x.months as f64 * 31.0 + x.days as f64 + x.nanoseconds as f64 / 86_400e9
        }
        ScalarValue::DurationSecond(Some(x)) => *x as f64 / 86_400.0,
        ScalarValue::DurationMillisecond(Some(x)) => *x as f64 / 86_400e3,
        ScalarValue::DurationMicrosecond(Some(x)) => *x as f64 / 86_400e6,
        ScalarValue::DurationNanosecond(Some(x)) => *x as f64 / 86_400e9,
        v if v.is_null() => 0.0,
        v => v.cast_to(&DataType::Float64).ok().and_then(|f| match f {
            ScalarValue::Float64(Some(f)) => Some(f),
            _ => None,
        })?,
    })
}

/// Dates as text: arrow cannot format a date outside chrono's range (TRY_CAST
/// fails too), so dates outside the years 1 to 9999 give NULL.
fn date_text(e: &Expr, from: &DataType, to: &DataType) -> Option<Result<Expr>> {
    if !matches!(to, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return None;
    }
    let (lo, hi) = date_bounds(from)?;
    let text = Expr::TryCast(TryCast::new(Box::new(e.clone()), to.clone()));
    Some(when(e.clone().between(lit(lo), lit(hi)), text).end())
}

impl Rewriter<'_> {
    fn data_type(&self, e: &Expr) -> Option<DataType> {
        e.get_type(self.schema).ok()
    }

    /// Guards a node that depends on data (its children are already done).
    fn guard(&self, e: Expr) -> Result<Transformed<Expr>> {
        match e {
            Expr::Cast(c) => {
                let from = self.data_type(&c.expr);
                if from.as_ref().is_some_and(|f| cast_never_fails(f, c.field.data_type())) {
                    return Ok(Transformed::no(Expr::Cast(c)));
                }
                if let Some(text) = from.as_ref().and_then(|f| date_text(&c.expr, f, c.field.data_type())) {
                    return Ok(Transformed::yes(text?));
                }
                Ok(Transformed::yes(Expr::TryCast(TryCast {
                    expr: c.expr,
                    field: c.field.as_ref().clone().with_nullable(true).into(),
                })))
            }
            Expr::TryCast(c) => {
                match self.data_type(&c.expr).and_then(|f| date_text(&c.expr, &f, c.field.data_type())) {
                    Some(text) => Ok(Transformed::yes(text?)),
                    None => Ok(Transformed::no(Expr::TryCast(c))),
                }
            }
            Expr::BinaryExpr(b) => self.guard_binary(b),
            Expr::ScalarFunction(f) => self.guard_function(f),
            Expr::HigherOrderFunction(f) => Err(refuse(Fallible::Function {
                function: f.func.name().to_owned(),
                advice: advice(f.func.name()).to_owned(),
            })),
            Expr::Like(like) => {
                let function = if like.case_insensitive { "ILIKE" } else { "LIKE" };
                self.check_pattern(function, &like.pattern)?;
                let mut probe = Probe::default();
                let trial = Expr::Like(datafusion::logical_expr::Like {
                    expr: Box::new(probe.data(like.expr.get_type(self.schema)?)?),
                    ..like.clone()
                });
                self.try_constants(function, probe, &trial)?;
                Ok(Transformed::no(Expr::Like(like)))
            }
            Expr::SimilarTo(like) => {
                self.check_pattern("SIMILAR TO", &like.pattern)?;
                let mut probe = Probe::default();
                let trial = Expr::SimilarTo(datafusion::logical_expr::Like {
                    expr: Box::new(probe.data(like.expr.get_type(self.schema)?)?),
                    ..like.clone()
                });
                self.try_constants("SIMILAR TO", probe, &trial)?;
                Ok(Transformed::no(Expr::SimilarTo(like)))
            }
            other => Ok(Transformed::no(other)),
        }
    }

    fn check_pattern(&self, function: &str, pattern: &Expr) -> Result<()> {
        if matches!(pattern, Expr::Literal(..)) {
            return Ok(());
        }
        Err(refuse(Fallible::ConstantArgument { function: function.to_owned(), position: 2, data_pattern: true }))
    }

    /// Evaluates `trial` (the data replaced by neutral values): if that
    /// fails, the constant arguments alone make it fail.
    fn try_constants(&self, function: &str, probe: Probe, trial: &Expr) -> Result<()> {
        match probe.run(trial)? {
            Evaluated::Failed(reason) => Err(refuse(Fallible::Argument { function: function.to_owned(), reason })),
            Evaluated::Value(_) | Evaluated::NotPlannable => Ok(()),
        }
    }

    /// `date ± interval`: arrow fails (quoting the date) where the result
    /// leaves chrono's range. Dates outside the years 1 to 9999 become NULL
    /// and the interval must be a constant of at most 1000 years, so the
    /// result always fits. `None`: not date arithmetic (or `date - date`).
    fn guard_date_arithmetic(&self, b: &BinaryExpr) -> Result<Option<Expr>> {
        let (Some(l), Some(r)) = (self.data_type(&b.left), self.data_type(&b.right)) else {
            return Ok(None);
        };
        let temporal = |t: &DataType| matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..));
        if temporal(&l) == temporal(&r) {
            // Neither (numbers) or both (date - date: a number of days, never fails).
            return Ok(None);
        }
        let (date, date_type, other) = if temporal(&l) { (&b.left, &l, &b.right) } else { (&b.right, &r, &b.left) };
        let Some((lo, hi)) = date_bounds(date_type) else {
            return Err(refuse(Fallible::DateArithmetic { what: format!("this one adds to a {date_type}") }));
        };
        let days = match other.as_ref() {
            Expr::Literal(v, _) => interval_days(v),
            _ => {
                return Err(refuse(Fallible::DateArithmetic { what: "this interval comes from data".into() }));
            }
        };
        if !days.is_some_and(|d| d.abs() <= 366_000.0) {
            return Err(refuse(Fallible::DateArithmetic { what: "this interval is longer".into() }));
        }
        let d = date.as_ref().clone();
        let in_range = when(d.clone().between(lit(lo), lit(hi)), d).end()?;
        let (left, right) =
            if temporal(&l) { (Box::new(in_range), b.right.clone()) } else { (b.left.clone(), Box::new(in_range)) };
        Ok(Some(Expr::BinaryExpr(BinaryExpr::new(left, b.op, right))))
    }

    fn guard_binary(&self, b: BinaryExpr) -> Result<Transformed<Expr>> {
        let op = b.op;
        if matches!(
            op,
            Operator::RegexMatch
                | Operator::RegexIMatch
                | Operator::RegexNotMatch
                | Operator::RegexNotIMatch
                | Operator::LikeMatch
                | Operator::ILikeMatch
                | Operator::NotLikeMatch
                | Operator::NotILikeMatch
        ) {
            let function = op.to_string();
            self.check_pattern(&function, &b.right)?;
            let mut probe = Probe::default();
            let trial = Expr::BinaryExpr(BinaryExpr::new(
                Box::new(probe.data(b.left.get_type(self.schema)?)?),
                op,
                b.right.clone(),
            ));
            self.try_constants(&function, probe, &trial)?;
            return Ok(Transformed::no(Expr::BinaryExpr(b)));
        }
        if !matches!(op, Operator::Plus | Operator::Minus | Operator::Multiply | Operator::Divide | Operator::Modulo) {
            return Ok(Transformed::no(Expr::BinaryExpr(b)));
        }
        let Some(t) = self.data_type(&Expr::BinaryExpr(b.clone())) else {
            return Ok(Transformed::no(Expr::BinaryExpr(b)));
        };
        if is_decimal(&t) {
            return Err(refuse(Fallible::Arithmetic { op: format!("'{op}'") }));
        }
        if matches!(op, Operator::Plus | Operator::Minus)
            && let Some(guarded) = self.guard_date_arithmetic(&b)?
        {
            return Ok(Transformed::yes(guarded));
        }
        if !matches!(op, Operator::Divide | Operator::Modulo) || !t.is_integer() {
            // Integer + - * wrap; floating point follows IEEE 754.
            return Ok(Transformed::no(Expr::BinaryExpr(b)));
        }
        let right_type = self.data_type(&b.right).unwrap_or_else(|| t.clone());
        let signed = is_signed_int(&right_type);
        if let Expr::Literal(v, _) = b.right.as_ref()
            && !v.is_null()
        {
            let zero = ScalarValue::new_zero(&right_type).is_ok_and(|z| &z == v);
            let minus_one = signed && ScalarValue::new_negative_one(&right_type).is_ok_and(|m| &m == v);
            if !zero && !minus_one {
                return Ok(Transformed::no(Expr::BinaryExpr(b)));
            }
        }
        let zero = ScalarValue::new_zero(&right_type)?;
        let safe_divisor = datafusion::functions::core::expr_fn::nullif(*b.right.clone(), lit(zero));
        let divided = Expr::BinaryExpr(BinaryExpr::new(b.left.clone(), op, Box::new(safe_divisor)));
        let left_can_be_min = match b.left.as_ref() {
            Expr::Literal(v, _) => min_of(&right_type).is_some_and(|m| &m == v),
            _ => true,
        };
        if !signed || !left_can_be_min {
            return Ok(Transformed::yes(divided));
        }
        // MIN / -1 and MIN % -1 overflow: x / -1 is -x (wrapping, like unary minus), x % -1 is 0.
        let minus_one = ScalarValue::new_negative_one(&right_type)?;
        let by_minus_one = match op {
            Operator::Divide => Expr::Negative(b.left.clone()),
            _ => Expr::BinaryExpr(BinaryExpr::new(
                b.left.clone(),
                Operator::Multiply,
                Box::new(lit(ScalarValue::new_zero(&right_type)?)),
            )),
        };
        let guarded = when(b.right.as_ref().clone().eq(lit(minus_one)), by_minus_one).otherwise(divided)?;
        Ok(Transformed::yes(guarded))
    }

    fn guard_function(&self, f: ScalarFunction) -> Result<Transformed<Expr>> {
        let name = f.func.name().to_owned();
        let data: Vec<usize> =
            f.args.iter().enumerate().filter(|(_, a)| !matches!(a, Expr::Literal(..))).map(|(i, _)| i).collect();
        if data.is_empty() {
            // A volatile function of constants (random()): nothing from data.
            return Ok(Transformed::no(Expr::ScalarFunction(f)));
        }
        let Some(rule) = allowed(&name) else {
            return Err(refuse(Fallible::Function { advice: advice(&name).to_owned(), function: name }));
        };
        if let DataArgs::Only(positions) = rule {
            if let Some(i) = data.iter().find(|i| !positions.contains(i)) {
                let data_pattern = name.starts_with("regexp") || name.starts_with("date_");
                return Err(refuse(Fallible::ConstantArgument { function: name, position: i + 1, data_pattern }));
            }
            let mut probe = Probe::default();
            let args = f
                .args
                .iter()
                .enumerate()
                .map(|(i, a)| if data.contains(&i) { probe.data(a.get_type(self.schema)?) } else { Ok(a.clone()) })
                .collect::<Result<Vec<_>>>()?;
            let trial = Expr::ScalarFunction(ScalarFunction::new_udf(f.func.clone(), args));
            self.try_constants(&name, probe, &trial)?;
        }
        match name.as_str() {
            "concat" | "concat_ws" => {
                // Dates far outside chrono's range do not format: text via TRY_CAST, NULL there.
                let mut changed = false;
                let args = f
                    .args
                    .iter()
                    .map(|a| match self.data_type(a) {
                        Some(t) if !cast_never_fails(&t, &DataType::Utf8) => {
                            changed = true;
                            date_text(a, &t, &DataType::Utf8)
                                .unwrap_or_else(|| Ok(Expr::TryCast(TryCast::new(Box::new(a.clone()), DataType::Utf8))))
                        }
                        _ => Ok(a.clone()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                if changed {
                    return Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(f.func.clone(), args))));
                }
            }
            "to_char" => {
                // Dates outside chrono's range do not format: NULL there.
                let t = self.data_type(&f.args[0]);
                if let Some(bounds) = t.as_ref().and_then(date_bounds) {
                    let d = f.args[0].clone();
                    let (lo, hi) = bounds;
                    let mut args = f.args.clone();
                    args[0] = when(d.clone().between(lit(lo), lit(hi)), d).end()?;
                    return Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(f.func.clone(), args))));
                }
            }
            "sqrt" => {
                // sqrt of a negative number fails in DataFusion 55: NULL instead.
                let x = f.args[0].clone();
                let guarded = when(x.clone().lt(lit(0.0)), lit(ScalarValue::Float64(None))).otherwise(x)?;
                return Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    f.func.clone(),
                    vec![guarded],
                ))));
            }
            "abs" => {
                // abs(MIN) overflows: NULL instead.
                let t = self.data_type(&f.args[0]);
                if let Some(min) = t.as_ref().and_then(min_of) {
                    let arg = datafusion::functions::core::expr_fn::nullif(f.args[0].clone(), lit(min));
                    return Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                        f.func.clone(),
                        vec![arg],
                    ))));
                }
            }
            _ => {}
        }
        Ok(Transformed::no(Expr::ScalarFunction(f)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::logical_expr::LogicalPlan;
    use datafusion::prelude::SessionContext;

    use super::*;

    const ROWS: usize = 11;

    /// One table `x` of extreme values, 11 rows: every column has a NULL.
    fn extremes() -> RecordBatch {
        let long = "x".repeat(1000);
        let s: Vec<Option<&str>> = vec![
            Some(""),
            Some("a"),
            Some("ÅÄÖ é ß"),
            Some("%_\\"),
            Some("("),
            None,
            Some(&long),
            Some("12"),
            Some("-1"),
            Some("NaN"),
            Some("2024-02-30"),
        ];
        let i = vec![
            Some(i64::MIN),
            Some(-1),
            Some(0),
            Some(1),
            Some(i64::MAX),
            None,
            Some(2),
            Some(-2),
            Some(1000),
            Some(i64::MIN + 1),
            Some(-1000),
        ];
        let j = vec![
            Some(i32::MIN),
            Some(-1),
            Some(0),
            Some(1),
            Some(i32::MAX),
            None,
            Some(2),
            Some(-2),
            Some(1000),
            Some(i32::MIN + 1),
            Some(-1000),
        ];
        let f = vec![
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(-0.0),
            Some(0.0),
            None,
            Some(1e308),
            Some(-1e308),
            Some(5e-324),
            Some(-1.0),
            Some(1.5),
        ];
        let d = vec![
            Some(i32::MIN),
            Some(-1),
            Some(0),
            Some(1),
            Some(i32::MAX),
            None,
            Some(19_000),
            Some(-719_528),
            Some(2_932_896),
            Some(-100_000_000),
            Some(100_000_000),
        ];
        let b = vec![
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(false),
            Some(true),
            Some(false),
            Some(true),
        ];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(s)),
            Arc::new(Int64Array::from(i)),
            Arc::new(Int32Array::from(j)),
            Arc::new(Float64Array::from(f)),
            Arc::new(Date32Array::from(d)),
            Arc::new(BooleanArray::from(b)),
        ];
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int64, true),
            Field::new("j", DataType::Int32, true),
            Field::new("f", DataType::Float64, true),
            Field::new("d", DataType::Date32, true),
            Field::new("b", DataType::Boolean, true),
        ]);
        let batch = RecordBatch::try_new(Arc::new(schema), columns).expect("batch");
        assert_eq!(batch.num_rows(), ROWS);
        batch
    }

    /// A session with `x` (extreme values) and `t` (ordinary rows: one person with id 1).
    fn session() -> SessionContext {
        // The optimizer rules the coordinator runs before this rewrite.
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(crate::engine::coordinator_rules())
            .build();
        let ctx = SessionContext::new_with_state(state);
        samkor_functions::register_user_functions(&ctx);
        let x = extremes();
        ctx.register_table("x", Arc::new(MemTable::try_new(x.schema(), vec![vec![x]]).expect("x")))
            .expect("register x");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("age", DataType::Int32, false),
        ]));
        let t = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["x", "20", "30"])),
                Arc::new(Int32Array::from(vec![0, 20, 30])),
            ],
        )
        .expect("t");
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![t]]).expect("t"))).expect("register t");
        ctx
    }

    async fn optimized(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        ctx.state().optimize(df.logical_plan()).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The plan of `sql` after the rewrite, as text.
    async fn rewritten(sql: &str) -> String {
        let ctx = session();
        let plan = make_infallible(optimized(&ctx, sql).await).unwrap_or_else(|e| panic!("{sql}: {e}"));
        plan.display_indent().to_string()
    }

    /// The refusal of `sql`, as "rule: message".
    async fn refused(sql: &str) -> Refusal {
        let ctx = session();
        let plan = optimized(&ctx, sql).await;
        let err = make_infallible(plan).expect_err(sql);
        match err {
            datafusion::common::DataFusionError::External(e) => e.downcast_ref::<Refusal>().expect("a refusal").clone(),
            other => panic!("{sql}: not a refusal: {other}"),
        }
    }

    /// Runs `sql` after the rewrite.
    async fn run(sql: &str) -> Result<Vec<RecordBatch>> {
        let ctx = session();
        let plan = make_infallible(optimized(&ctx, sql).await)?;
        ctx.execute_logical_plan(plan).await?.collect().await
    }

    /// Runs `sql` as DataFusion does, without the rewrite.
    async fn run_plain(sql: &str) -> Result<Vec<RecordBatch>> {
        session().sql(sql).await?.collect().await
    }

    fn text(batches: &[RecordBatch]) -> String {
        datafusion::arrow::util::pretty::pretty_format_batches(batches).expect("format").to_string()
    }

    // ---- plan rewrites -------------------------------------------------------------------

    #[tokio::test]
    async fn cast_over_data_becomes_try_cast() {
        let plan = rewritten("SELECT CAST(name AS INT) AS n FROM t").await;
        assert_eq!(
            plan.trim(),
            "Projection: TRY_CAST(t.name AS Int32) AS n\n  TableScan: t projection=[name]",
            "{plan}"
        );
        // Widening casts cannot fail and stay as they are.
        let plan = rewritten("SELECT CAST(age AS BIGINT) AS a FROM t").await;
        assert_eq!(plan.trim(), "Projection: CAST(t.age AS Int64) AS a\n  TableScan: t projection=[age]", "{plan}");
    }

    #[tokio::test]
    async fn integer_division_gets_a_safe_divisor() {
        let plan = rewritten("SELECT id / age AS q, id % age AS r FROM t").await;
        assert_eq!(
            plan.trim(),
            "Projection: CASE WHEN CAST(t.age AS Int64) = Int64(-1) THEN (- t.id) ELSE t.id / nullif(CAST(t.age AS Int64), Int64(0)) END AS q, \
             CASE WHEN CAST(t.age AS Int64) = Int64(-1) THEN t.id * Int64(0) ELSE t.id % nullif(CAST(t.age AS Int64), Int64(0)) END AS r\
             \n  TableScan: t projection=[id, age]",
            "{plan}"
        );
        // A literal divisor other than 0 and -1 cannot fail.
        let plan = rewritten("SELECT id / 7 AS q FROM t").await;
        assert_eq!(plan.trim(), "Projection: t.id / Int64(7) AS q\n  TableScan: t projection=[id]", "{plan}");
        // Floating point division follows IEEE 754.
        let plan = rewritten("SELECT CAST(id AS DOUBLE) / age AS q FROM t").await;
        assert!(!plan.contains("nullif"), "{plan}");
    }

    #[tokio::test]
    async fn rewrite_reaches_subqueries() {
        let plan =
            rewritten("SELECT id FROM t WHERE id IN (SELECT CAST(name AS BIGINT) FROM t WHERE age / id > 1)").await;
        assert!(plan.contains("TRY_CAST(t.name AS Int64)"), "{plan}");
        assert!(plan.contains("nullif(t.id, Int64(0))"), "{plan}");
    }

    #[tokio::test]
    async fn integer_abs_gets_null_for_min() {
        let plan = rewritten("SELECT abs(id) AS a FROM t").await;
        assert!(plan.contains("abs(nullif(t.id, Int64(-9223372036854775808)))"), "{plan}");
    }

    // ---- refusals ------------------------------------------------------------------------

    #[tokio::test]
    async fn failing_constant_in_a_case_branch_is_refused_whatever_the_data() {
        for condition in ["id = 1", "id = -1"] {
            for fails in ["1 / 0", "CAST(to_date('nope') AS INT)", "5 % 0"] {
                let sql = format!("SELECT count(*) FROM t WHERE CASE WHEN {condition} THEN {fails} ELSE 0 END = 0");
                let r = refused(&sql).await;
                assert_eq!(r.rule, "disclosure.fallible_expression", "{sql}: {r}");
            }
        }
        // DataFusion itself fails at planning on a cast of a literal and on a bad
        // pattern of regexp_like or LIKE: failures that do not depend on data either.
        for sql in [
            "SELECT count(*) FROM t WHERE CASE WHEN id = 1 THEN CAST('x' AS INT) ELSE 0 END = 0",
            "SELECT count(*) FROM t WHERE regexp_like(name, '(')",
        ] {
            let df = session().sql(sql).await.expect("parses");
            assert!(session().state().optimize(df.logical_plan()).is_err(), "{sql}");
        }
    }

    #[tokio::test]
    async fn functions_outside_the_list_are_refused_on_data() {
        let r = refused("SELECT to_date(name) AS d FROM t").await;
        assert_eq!(r.rule, "disclosure.fallible_function");
        assert!(r.message.contains("to_date()") && r.message.contains("TRY_CAST"), "{r}");
        let r = refused("SELECT repeat(name, age) AS d FROM t").await;
        assert_eq!(r.rule, "disclosure.fallible_function");
        // power() fails on 0 to a negative power.
        let r = refused("SELECT power(id, age) AS p FROM t").await;
        assert_eq!(r.rule, "disclosure.fallible_function", "{r}");
        assert!(r.message.contains("exp(ln(x) * y)"), "{r}");
        // The same functions on constants are evaluated at planning.
        rewritten("SELECT id, to_date('2024-01-01') AS d FROM t").await;
    }

    #[tokio::test]
    async fn patterns_and_units_are_constants_checked_at_planning() {
        for sql in [
            "SELECT regexp_count(name, '(') AS n FROM t",
            "SELECT regexp_replace(name, '[', 'x') AS n FROM t",
            "SELECT count(*) FROM t WHERE CASE WHEN id = 1 THEN regexp_count(name, 'a', 0) ELSE 0 END = 0",
            "SELECT date_part('fortnight', d) AS p FROM x",
        ] {
            let r = refused(sql).await;
            assert_eq!(r.rule, "disclosure.invalid_argument", "{sql}: {r}");
        }
        let r = refused("SELECT count(*) FROM t WHERE regexp_like(name, name)").await;
        assert_eq!(r.rule, "disclosure.fallible_function", "{r}");
        for sql in ["SELECT count(*) FROM t WHERE name LIKE name", "SELECT count(*) FROM t WHERE name ~ name"] {
            let r = refused(sql).await;
            assert_eq!(r.rule, "disclosure.fallible_function", "{sql}: {r}");
        }
        let r = refused("SELECT substr(name, 1, -1) AS s FROM t").await;
        assert_eq!(r.rule, "disclosure.invalid_argument", "{r}");
        let r = refused("SELECT substr(name, age) AS s FROM t").await;
        assert_eq!(r.rule, "disclosure.fallible_function", "{r}");
        rewritten("SELECT count(*) FROM t WHERE regexp_like(name, '^[0-9]+$') AND name LIKE 'x%'").await;
    }

    #[tokio::test]
    async fn constants_are_tried_on_arrays_as_at_run_time() {
        // The approval's generalisation builds date_trunc on a DATE column without
        // coercion: it runs on arrays, not on a DATE scalar. The trial must not refuse it.
        use datafusion::functions::datetime::expr_fn::date_trunc;
        use datafusion::logical_expr::{LogicalPlanBuilder, col};
        let ctx = session();
        let scan = ctx.table("x").await.expect("x").into_unoptimized_plan();
        let plan = LogicalPlanBuilder::from(scan)
            .project(vec![date_trunc(lit("year"), col("d")).alias("y")])
            .expect("projection")
            .build()
            .expect("plan");
        let plan = make_infallible(plan).expect("generalised dates are allowed");
        ctx.execute_logical_plan(plan).await.expect("plan").collect().await.expect("runs");
    }

    #[tokio::test]
    async fn date_arithmetic_takes_a_bounded_constant_interval() {
        let plan = rewritten("SELECT d + INTERVAL '1 month' AS m FROM x").await;
        assert!(
            plan.contains("CASE WHEN x.d BETWEEN Date32(\"0001-01-01\") AND Date32(\"9999-12-31\") THEN x.d END"),
            "{plan}"
        );
        for sql in [
            "SELECT d + INTERVAL '2000 years' AS m FROM x",
            "SELECT CAST(d AS TIMESTAMP) + INTERVAL '1 day' AS m FROM x",
            "SELECT d + i AS m FROM x",
        ] {
            let r = refused(sql).await;
            assert_eq!(r.rule, "disclosure.fallible_arithmetic", "{sql}: {r}");
        }
    }

    #[tokio::test]
    async fn decimal_arithmetic_on_data_is_refused() {
        let r = refused("SELECT CAST(id AS DECIMAL(38, 0)) * CAST(id AS DECIMAL(38, 0)) AS sq FROM t").await;
        assert_eq!(r.rule, "disclosure.fallible_arithmetic", "{r}");
    }

    #[test]
    fn every_rule_is_documented() {
        let doc = include_str!("../../docs/disclosure.md");
        for rule in Fallible::RULES {
            assert!(doc.contains(rule), "docs/disclosure.md does not document {rule}");
        }
        for (name, _) in ALLOWED {
            assert!(doc.contains(&format!("`{name}`")), "docs/disclosure.md does not list allowed function {name}");
        }
    }

    // ---- the oracle, before and after ---------------------------------------------------

    #[tokio::test]
    async fn without_the_rewrite_errors_depend_on_data() {
        // Pins DataFusion 55's behaviour, which is why the rewrite exists.
        for (exists, missing) in [
            (
                "SELECT count(*) FROM t WHERE CASE WHEN id = 1 THEN CAST(name AS INT) ELSE 0 END = 0",
                "SELECT count(*) FROM t WHERE CASE WHEN id = 9 THEN CAST(name AS INT) ELSE 0 END = 0",
            ),
            (
                "SELECT sum(CASE WHEN id = 1 THEN 10 / age END) FROM t",
                "SELECT sum(CASE WHEN id = 9 THEN 10 / age END) FROM t",
            ),
            (
                "SELECT count(CASE WHEN id = 1 THEN to_date(name) END) FROM t",
                "SELECT count(CASE WHEN id = 9 THEN to_date(name) END) FROM t",
            ),
            (
                "SELECT count(*) FROM t WHERE CASE WHEN id = 1 THEN 1 / 0 ELSE 0 END = 0",
                "SELECT count(*) FROM t WHERE CASE WHEN id = 9 THEN 1 / 0 ELSE 0 END = 0",
            ),
        ] {
            assert!(run_plain(exists).await.is_err(), "{exists} fails without the rewrite");
            assert!(run_plain(missing).await.is_ok(), "{missing} succeeds without the rewrite");
        }
    }

    #[tokio::test]
    async fn with_the_rewrite_the_same_queries_answer() {
        for sql in [
            "SELECT count(*) AS n, count(CAST(name AS INT)) AS c FROM t WHERE CAST(name AS INT) > 0 OR id = 1",
            "SELECT sum(10 / age) AS s, sum(10 % age) AS m FROM t",
            "SELECT sum(i / CAST(-1 AS BIGINT)) AS s FROM x",
        ] {
            run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let got =
            text(&run("SELECT id, CAST(name AS INT) AS n, 10 / age AS q FROM t ORDER BY id").await.expect("answer"));
        assert!(got.contains("| 1  |    |   |"), "NULL where the value does not convert or divides by zero:\n{got}");
    }

    #[tokio::test]
    async fn integer_overflow_wraps_in_datafusion_55() {
        // + - * and sum() wrap; these need no rewrite. If a DataFusion upgrade makes them
        // checked, this test fails and they need a guard like division's.
        for sql in [
            "SELECT i + i AS a, i - 3 AS b, i * i AS c, - i AS d, j * j AS e FROM x",
            "SELECT sum(i) AS s, avg(i) AS a, sum(j) AS t FROM x",
            "SELECT CAST(f AS BIGINT) AS c FROM x",
        ] {
            run(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert!(run_plain("SELECT i + i AS a, i * i AS c, - i AS d FROM x").await.is_ok());
        assert!(run_plain("SELECT sum(i) AS s FROM x").await.is_ok());
        // Without the rewrite: float → int casts and MIN / -1 fail.
        assert!(run_plain("SELECT CAST(f AS BIGINT) AS c FROM x").await.is_err());
        assert!(run_plain("SELECT i / CAST(-1 AS BIGINT) AS c FROM x").await.is_err());
        let got = text(
            &run(
                "SELECT i / CAST(-1 AS BIGINT) AS q, i % CAST(-1 AS BIGINT) AS r FROM x WHERE i = -9223372036854775808",
            )
            .await
            .expect("answer"),
        );
        assert!(got.contains("-9223372036854775808 | 0"), "MIN / -1 wraps like unary minus, MIN % -1 is 0:\n{got}");
    }

    /// Calls of every allowed function on data, over every pair of extreme values.
    const PROBES: &[&str] = &[
        "age_years(a.d, b.d)",
        "age_band(a.d, b.d, 5)",
        "age_band(a.d, b.d, a.i)",
        "birth_year(a.d)",
        "birth_decade(a.d)",
        "years_between(a.d, b.d)",
        "days_between(a.d, b.d)",
        "wilson_lower(a.i, b.i)",
        "wilson_upper(a.f, b.j, a.f)",
        "clopper_pearson_lower(a.j, b.i)",
        "clopper_pearson_upper(a.f, b.f, 0.9)",
        "poisson_lower(a.f)",
        "poisson_upper(a.j, b.f)",
        "ascii(a.s)",
        "bit_length(a.s)",
        "btrim(a.s, b.s)",
        "character_length(a.s)",
        "concat(a.s, b.i, b.f, b.d)",
        "concat_ws(a.s, b.s, b.i)",
        "contains(a.s, b.s)",
        "ends_with(a.s, b.s)",
        "find_in_set(a.s, b.s)",
        "initcap(a.s)",
        "left(a.s, b.i)",
        "left(a.s, b.j)",
        "levenshtein(a.s, b.s)",
        "lower(a.s)",
        "ltrim(a.s, b.s)",
        "octet_length(a.s)",
        "replace(a.s, b.s, a.s)",
        "reverse(a.s)",
        "right(a.s, b.i)",
        "right(a.s, b.j)",
        "rtrim(a.s, b.s)",
        "split_part(a.s, b.s, 2)",
        "split_part(a.s, b.s, -1)",
        "starts_with(a.s, b.s)",
        "strpos(a.s, b.s)",
        "substr(a.s, 2)",
        "substr(a.s, -3, 3)",
        "to_hex(a.i)",
        "to_hex(a.j)",
        "translate(a.s, b.s, 'xy')",
        "upper(a.s)",
        "regexp_count(a.s, '[a-z]+')",
        "regexp_instr(a.s, '[a-z]')",
        "regexp_like(a.s, '^[0-9]+$', 'i')",
        "regexp_match(a.s, '([0-9]+)')",
        "regexp_replace(a.s, '[0-9]', 'n', 'g')",
        "coalesce(a.i, b.i)",
        "greatest(a.i, b.f)",
        "least(a.d, b.d)",
        "nullif(a.s, b.s)",
        "nvl(a.f, b.f)",
        "nvl2(a.i, b.i, a.i)",
        "abs(a.i)",
        "abs(a.j)",
        "abs(a.f)",
        "acos(a.f)",
        "acosh(a.f)",
        "asin(a.f)",
        "asinh(a.f)",
        "atan(a.f)",
        "atan2(a.f, b.f)",
        "atanh(a.f)",
        "cbrt(a.f)",
        "ceil(a.f)",
        "ceil(a.i)",
        "cos(a.f)",
        "cosh(a.f)",
        "cot(a.f)",
        "degrees(a.f)",
        "exp(a.f)",
        "floor(a.f)",
        "floor(a.j)",
        "isnan(a.f)",
        "iszero(a.f)",
        "ln(a.f)",
        "ln(a.i)",
        "log(a.f)",
        "log(a.f, b.f)",
        "log10(a.f)",
        "log2(a.f)",
        "nanvl(a.f, b.f)",
        "radians(a.f)",
        "round(a.f)",
        "round(a.f, 2)",
        "round(a.i, -2)",
        "round(a.j)",
        "signum(a.f)",
        "sin(a.f)",
        "sinh(a.f)",
        "sqrt(a.f)",
        "sqrt(a.i)",
        "tan(a.f)",
        "tanh(a.f)",
        "trunc(a.f)",
        "trunc(a.f, 3)",
        "trunc(a.i)",
        "date_part('year', a.d)",
        "date_part('doy', a.d)",
        "date_part('epoch', a.d)",
        "extract(month FROM a.d)",
        "date_trunc('month', a.d)",
        "date_trunc('year', a.d)",
        "arrow_typeof(a.s)",
        "concat(a.d)",
        "to_char(a.d, '%Y-%m')",
        "to_char(a.d, '%d')",
        "a.s || b.d",
        "a.s ~ '[a-z]'",
        "a.s !~* '^x'",
        "a.s LIKE 'a%'",
        "a.s ILIKE '%\\%%'",
        "a.s SIMILAR TO '(a|b)%'",
        "CAST(a.s AS INT)",
        "CAST(a.s AS DATE)",
        "CAST(a.f AS INT)",
        "CAST(a.i AS INT)",
        "CAST(a.d AS VARCHAR)",
        "CAST(a.d AS TIMESTAMP)",
        "a.i / b.i",
        "a.i % b.i",
        "a.j / b.j",
        "a.j % b.j",
        "a.i / 0",
        "a.j % -1",
        "a.f / b.f",
        "a.i + b.i",
        "a.i * b.j",
        "- a.i",
        "a.d - b.d",
        "a.d + INTERVAL '1 day'",
        "a.d - INTERVAL '100 years'",
        "a.d + 7",
        "CAST(a.d AS TIMESTAMP) - CAST(b.d AS TIMESTAMP)",
    ];

    /// Aggregates disclosure control releases, over every extreme value.
    const AGGREGATE_PROBES: &[&str] = &[
        "count(a.i)",
        "count(DISTINCT a.s)",
        "sum(a.i)",
        "sum(a.j)",
        "sum(a.f)",
        "avg(a.i)",
        "avg(a.j)",
        "avg(a.f)",
        "median(a.i)",
        "median(a.j)",
        "median(a.f)",
        "stddev(a.f)",
        "stddev(a.i)",
        "stddev_pop(a.f)",
        "var(a.i)",
        "var_pop(a.f)",
        "corr(a.f, b.f)",
        "corr(a.i, b.j)",
        "covar_samp(a.f, b.f)",
        "covar_pop(a.i, b.i)",
        "approx_distinct(a.i)",
        "approx_median(a.f)",
        "approx_median(a.i)",
        "approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY a.f)",
        "approx_percentile_cont(0.1) WITHIN GROUP (ORDER BY a.i)",
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY a.f)",
        "percentile_cont(0.25) WITHIN GROUP (ORDER BY a.i)",
        "bool_and(a.b)",
        "bool_or(a.b)",
        "regr_slope(a.f, b.f)",
        "regr_intercept(a.i, b.i)",
        "regr_count(a.f, b.f)",
        "regr_r2(a.f, b.f)",
        "regr_avgx(a.f, b.i)",
        "regr_sxx(a.f, b.f)",
        "regr_sxy(a.i, b.i)",
        "sum(a.d - b.d)",
        "avg(a.d - b.d)",
    ];

    #[tokio::test]
    async fn released_aggregates_do_not_fail_on_extreme_values() {
        let mut failed = Vec::new();
        for probe in AGGREGATE_PROBES {
            for group in ["", " GROUP BY a.b"] {
                let sql = format!("SELECT {probe} AS v FROM x a CROSS JOIN x b{group}");
                if let Err(e) = run(&sql).await {
                    failed.push(format!("{sql}: {}", first_line(&e)));
                }
            }
        }
        assert!(failed.is_empty(), "aggregates that fail on some value:\n{}", failed.join("\n"));
    }

    #[tokio::test]
    async fn every_allowed_function_is_total() {
        let mut failed = Vec::new();
        for probe in PROBES {
            let sql = format!("SELECT {probe} AS v FROM x a CROSS JOIN x b");
            match run(&sql).await {
                Ok(b) => assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), ROWS * ROWS, "{sql}"),
                Err(e) => failed.push(format!("{probe}: {}", first_line(&e))),
            }
        }
        assert!(failed.is_empty(), "allowed functions that fail on some value:\n{}", failed.join("\n"));
        for (name, _) in ALLOWED {
            assert!(
                PROBES
                    .iter()
                    .any(|p| p.starts_with(&format!("{name}(")) || (*name == "date_part" && p.starts_with("extract("))),
                "allowed function {name} has no probe"
            );
        }
    }
}
