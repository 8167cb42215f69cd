//! Statistical methods as table functions: rates with intervals per unit
//! (funnel plots), standardisation, Kaplan–Meier and generalised linear
//! models, from any Flight SQL client as ordinary queries:
//!
//! ```sql
//! SELECT * FROM glm('SELECT died, sex, age FROM …', 'died ~ sex + age', 'binomial')
//! ```
//!
//! ```text
//!  outer query ─▶ method table (its columns fixed at planning)
//!     scan ─▶ steps, each one federated aggregate in the caller's project session:
//!               released: planned, run and released like any query (approval,
//!                         disclosure control: suppression, perturbation)
//!               internal: numbers that never leave the coordinator (a model's
//!                         X'WX per iteration, exact band counts for merging)
//!          ─▶ the method's numbers, computed only from released numbers or
//!             judged by the method's own rules (rules.rs), withheld ones null
//!             and named in the `withheld` column
//!  outer query over the method's table only (projections, filters, order)
//! ```
//!
//! The query around a method may not read registers (`method.mixed`): what
//! leaves is the method's table and what is computed from it.

mod formula;
mod funnel;
mod glm;
mod output;
mod rules;
mod standardise;
mod steps;
mod survival;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

pub use rules::MethodRule;
pub use steps::MethodEnv;

/// The methods, by SQL name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Funnel,
    Smr,
    Dsr,
    KaplanMeier,
    Glm,
}

impl Method {
    const ALL: [Method; 5] = [Method::Funnel, Method::Smr, Method::Dsr, Method::KaplanMeier, Method::Glm];

    pub fn name(self) -> &'static str {
        match self {
            Method::Funnel => "funnel",
            Method::Smr => "smr",
            Method::Dsr => "dsr",
            Method::KaplanMeier => "kaplan_meier",
            Method::Glm => "glm",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Method::Funnel => "funnel('<query with columns unit, outcome>')",
            Method::Smr => "smr('<query with columns unit, outcome and the strata>')",
            Method::Dsr => {
                "dsr('<query with columns unit, outcome and the strata>' [, '<standard: the strata and weight>'])"
            }
            Method::KaplanMeier => {
                "kaplan_meier('<query with columns start_date, event_date, censor_date [, stratum]>', <band width in days>)"
            }
            Method::Glm => {
                "glm('<query>', '<outcome ~ predictors [+ offset(column)]>', 'binomial' | 'poisson' | 'gaussian')"
            }
        }
    }

    fn schema(self) -> SchemaRef {
        match self {
            Method::Funnel => funnel::schema(),
            Method::Smr => standardise::smr_schema(),
            Method::Dsr => standardise::dsr_schema(),
            Method::KaplanMeier => survival::schema(),
            Method::Glm => glm::schema(),
        }
    }
}

/// Registers every method as a table function of the session.
pub fn register(ctx: &SessionContext, env: MethodEnv) {
    let env = Arc::new(env);
    for method in Method::ALL {
        ctx.register_udtf(method.name(), Arc::new(MethodFunction { method, env: env.clone() }));
    }
}

/// The arguments of a call, as given (constants only).
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Number(f64),
}

/// One method's arguments, checked at planning.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    pub args: Vec<Arg>,
}

impl Call {
    /// The text argument at `i` (queries, formulas, families).
    pub(crate) fn text(&self, i: usize) -> Option<&str> {
        match self.args.get(i) {
            Some(Arg::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn number(&self, i: usize) -> Option<f64> {
        match self.args.get(i) {
            Some(Arg::Number(n)) => Some(*n),
            _ => None,
        }
    }

    /// A mistake in the call: says what the call should look like.
    pub(crate) fn error<T>(&self, what: &str) -> Result<T> {
        plan_err!("{}: {what}; call it as {}", self.method.name(), self.method.usage())
    }
}

#[derive(Debug)]
struct MethodFunction {
    method: Method,
    env: Arc<MethodEnv>,
}

impl TableFunctionImpl for MethodFunction {
    fn call_with_args(&self, args: datafusion::catalog::TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let mut parsed = Vec::new();
        for e in args.exprs() {
            let arg = match e {
                Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => Arg::Text(s.clone()),
                Expr::Literal(v, _) if v.data_type().is_numeric() => {
                    match v.cast_to(&datafusion::arrow::datatypes::DataType::Float64) {
                        Ok(ScalarValue::Float64(Some(x))) => Arg::Number(x),
                        _ => return plan_err!("{}: arguments must be constants", self.method.name()),
                    }
                }
                _ => {
                    return plan_err!(
                        "{}: arguments must be constants (text in single quotes, numbers); call it as {}",
                        self.method.name(),
                        self.method.usage()
                    );
                }
            };
            parsed.push(arg);
        }
        let call = Call { method: self.method, args: parsed };
        // Every query argument parses as one query (planning, before any node is asked).
        let queries = if call.method == Method::Dsr { 2 } else { 1 };
        for i in 0..queries {
            if let Some(q) = call.text(i) {
                derived(&call, q)?;
            }
        }
        match call.method {
            Method::Funnel => funnel::check(&call)?,
            Method::Smr | Method::Dsr => standardise::check(&call)?,
            Method::KaplanMeier => survival::check(&call)?,
            Method::Glm => glm::check(&call)?,
        }
        Ok(Arc::new(MethodTable { schema: self.method.schema(), call, env: self.env.clone() }))
    }
}

/// A method's answer as a table; computed when the query runs.
#[derive(Debug)]
pub struct MethodTable {
    schema: SchemaRef,
    call: Call,
    env: Arc<MethodEnv>,
}

#[async_trait]
impl TableProvider for MethodTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = run(&self.call, self.env.as_ref()).await?;
        let exec = MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}

/// A method's steps on one pooled DataFusion session, without disclosure
/// control: the same code and SQL as in the federation, to measure what
/// federation costs (`benches/`). Never used to answer a query.
pub struct Pooled {
    pub ctx: SessionContext,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").finish_non_exhaustive()
    }
}

impl Pooled {
    async fn run(&self, sql: &str) -> Result<steps::Table> {
        let df = self.ctx.sql(sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        steps::Table::new(&schema, &batches, None)
    }

    /// Runs `name(args…)` (e.g. `glm`) on the pooled session.
    pub async fn call(&self, name: &str, args: &[&str]) -> Result<datafusion::arrow::array::RecordBatch> {
        let Some(method) = Method::ALL.into_iter().find(|m| m.name() == name) else {
            return plan_err!("no method {name}");
        };
        let args = args
            .iter()
            .map(|a| a.parse::<f64>().map(Arg::Number).unwrap_or_else(|_| Arg::Text((*a).to_owned())))
            .collect();
        let call = Call { method, args };
        run(&call, self).await
    }
}

#[async_trait]
impl steps::Steps for Pooled {
    async fn describe(&self, sql: &str) -> Result<SchemaRef> {
        Ok(Arc::new(self.ctx.sql(sql).await?.schema().as_arrow().clone()))
    }

    async fn internal(&self, sql: &str) -> Result<steps::Table> {
        self.run(sql).await
    }

    async fn released(&self, sql: &str) -> Result<steps::Table> {
        self.run(sql).await
    }

    async fn constant(&self, sql: &str) -> Result<steps::Table> {
        self.run(sql).await
    }

    async fn keep_rows(&self, sql: &str) -> Result<Option<String>> {
        let df = self.ctx.sql(sql).await?;
        let joined = datafusion::common::tree_node::TreeNode::exists(df.logical_plan(), |p| {
            Ok(matches!(p, LogicalPlan::Join(_)))
        })?;
        if !joined {
            return Ok(None);
        }
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!("samkor_kept_rows_{}", KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let table = Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![batches])?);
        steps::register_kept(&self.ctx, &name, table)?;
        Ok(Some(name))
    }

    fn k(&self) -> f64 {
        1.0
    }
}

async fn run(call: &Call, steps: &dyn steps::Steps) -> Result<datafusion::arrow::array::RecordBatch> {
    match call.method {
        Method::Funnel => funnel::run(call, steps).await,
        Method::Smr => standardise::run_smr(call, steps).await,
        Method::Dsr => standardise::run_dsr(call, steps).await,
        Method::KaplanMeier => survival::run(call, steps).await,
        Method::Glm => glm::run(call, steps).await,
    }
}

/// How many table scans of a plan are methods' tables and how many read registers.
#[derive(Debug, Default)]
pub struct Scans {
    pub methods: usize,
    pub registers: usize,
}

impl Scans {
    pub fn of(plan: &LogicalPlan) -> Scans {
        let mut scans = Scans::default();
        let _ = plan.apply_with_subqueries(|p| {
            if let LogicalPlan::TableScan(scan) = p {
                let method = datafusion::datasource::source_as_provider(&scan.source)
                    .is_ok_and(|provider| provider.downcast_ref::<MethodTable>().is_some());
                if method {
                    scans.methods += 1;
                } else {
                    scans.registers += 1;
                }
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        scans
    }
}

/// The user's query as a derived table. It is parsed as exactly one query
/// and written back from its syntax tree, so that its text cannot reach
/// outside its parentheses into the SQL a method builds around it (a
/// comment or a closing parenthesis in it would otherwise change what an
/// internal step computes).
pub(crate) fn derived(call: &Call, query: &str) -> Result<String> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let mut statements = match DFParser::parse_sql(query) {
        Ok(s) => s,
        Err(e) => return call.error(&format!("its query does not parse ({e})")),
    };
    match (statements.pop_front(), statements.is_empty()) {
        (Some(Statement::Statement(s)), true) if matches!(s.as_ref(), SqlStatement::Query(_)) => {
            Ok(format!("({s}) AS samkor_input"))
        }
        _ => call.error("the query argument must be one SELECT statement"),
    }
}

/// The columns of the user's query (planned in the caller's session, not
/// run), after checking that it has the columns the method needs.
pub(crate) async fn input_schema(
    call: &Call,
    steps: &dyn steps::Steps,
    query: &str,
    needed: &[&str],
) -> Result<SchemaRef> {
    let schema = steps.describe(&format!("SELECT * FROM {}", derived(call, query)?)).await?;
    for name in needed {
        if schema.field_with_name(name).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return call.error(&format!("the query has no column {name} (it has {})", have.join(", ")));
        }
    }
    Ok(schema)
}

/// How the events of a group of rows are counted from the `outcome` column:
/// rows with it for a boolean (or, with `indicator`, a non-zero number),
/// else the sum of the number of events.
pub(crate) fn events_of(call: &Call, schema: &SchemaRef, indicator: bool) -> Result<String> {
    use datafusion::arrow::datatypes::DataType;
    Ok(match schema.field_with_name("outcome")?.data_type() {
        DataType::Boolean => "count(CASE WHEN outcome THEN 1 END)".to_owned(),
        t if t.is_numeric() && indicator => "count(CASE WHEN outcome <> 0 THEN 1 END)".to_owned(),
        t if t.is_numeric() => "sum(outcome)".to_owned(),
        t => return call.error(&format!("the outcome must be a boolean or a number, not {t}")),
    })
}

/// A SQL text literal.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A float as a SQL literal that reads back as the same f64.
pub(crate) fn float(x: f64) -> String {
    if x.is_finite() { format!("CAST({x:?} AS DOUBLE)") } else { "CAST(NULL AS DOUBLE)".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call { method: Method::Glm, args: vec![] }
    }

    #[test]
    fn a_query_cannot_reach_outside_its_parentheses() {
        let q = derived(&call(), "SELECT a FROM t WHERE b = 'x' -- a comment").expect("one query");
        assert_eq!(q, "(SELECT a FROM t WHERE b = 'x') AS samkor_input");
        let e = derived(&call(), "SELECT 1) AS x, hip.operations h WHERE (1 = 1").expect_err("not one query");
        assert!(e.to_string().contains("does not parse"), "{e}");
        let e = derived(&call(), "SELECT 1; SELECT 2").expect_err("two statements");
        assert!(e.to_string().contains("one SELECT"), "{e}");
        let e = derived(&call(), "DROP TABLE hip.operations").expect_err("not a query");
        assert!(e.to_string().contains("one SELECT"), "{e}");
    }
}
