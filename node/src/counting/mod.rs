//! Pseudonymise only what leaves the node.
//!
//! When a sub-query uses the person column only to count persons
//! (`count(DISTINCT person)`, `count(person)`, also as
//! `count(DISTINCT CASE WHEN <condition> THEN person END)`: the hidden
//! companions of disclosure control), the count over identity numbers equals
//! the count over pseudonyms (the pseudonym is injective on identity
//! numbers), and no person value leaves the node. Such a plan's scans emit
//! the identity number as `person` (opt-outs are still removed at the scan),
//! and the node saves the pseudonymisation of every row.
//!
//! The test is deliberately narrow: every other use of `person` (grouping,
//! joining, filtering, any function of it, a column that leaves) keeps the
//! project pseudonym, so any expression over `person` still sees the real
//! pseudonym. The decision shows in the node's `EXPLAIN` as
//! `PseudonymiseExec: … person=identity number (counted only)`.
//!
//! ```text
//!   Aggregate: count(DISTINCT person), count(*) …     ← only use of person
//!     Filter / Projection (bare `person`) / SubqueryAlias / Sort / Limit
//!       TableScan  ─▶ PseudonymiseExec(identity number, opt-outs removed)
//! ```
//!
//! The record keys of disclosure control (`samkor_record_key(person)`, a
//! keyed hash of the pseudonym's 16 bytes) count as such a use: a plan
//! whose every other use of `person` is a count gets them from the identity
//! numbers through [`IDENTITY_RECORD_KEY_FN`], which computes the same
//! pseudonym bytes and hashes them without writing the 32-letter text and
//! reading it back. The keys, and so every cell key, are the same.
//!
//! Narrower still, a plan that uses `person` *only* through its record key
//! (and tests of its presence: the key is null where the identity number is)
//! gets the keys from its scans: `person` becomes the record key itself, an
//! `Int64` ([`derive_at_the_scans`]), computed once a row at the scan, and taken
//! from the node's memory where it holds the file's identity numbers
//! ([`crate::identities`] keeps each row's key once computed). That is the
//! shape of disclosure control's companions of a single-register aggregate.
//! The node's `EXPLAIN` shows `person=record key (at the scan)`. A plan that
//! uses `person` only through its record key and its pseudonym's bytes (a
//! side of a join on the person under disclosure control) gets the bytes
//! from its scans instead, and hashes its record keys from them:
//! `person=pseudonym bytes (at the scan)`.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::expr::{AggregateFunction, Case, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TableScan,
    TableScanBuilder, Volatility,
};
use samkor_functions::{PSEUDONYM_BYTES, PSEUDONYM_BYTES_FN, RECORD_KEY_FN, RecordKeySecret};
use samkor_proto::PERSON_COLUMN;

use crate::pseudonym::ProjectPseudonymiser;
use crate::table::ProjectTable;

/// Whether `e` mentions a column named `person`.
fn mentions_person(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|e| {
        if matches!(e, Expr::Column(c) if c.name == PERSON_COLUMN) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn is_person(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == PERSON_COLUMN)
}

fn is_null_literal(e: &Expr) -> bool {
    matches!(e, Expr::Literal(v, _) if v.is_null())
}

/// `person`, or `CASE WHEN <condition without person> THEN person [ELSE NULL] END`.
fn counted_person(arg: &Expr) -> bool {
    match arg {
        e if is_person(e) => true,
        Expr::Case(Case { expr: None, when_then_expr, else_expr }) => {
            when_then_expr.len() == 1
                && !mentions_person(&when_then_expr[0].0)
                && is_person(&when_then_expr[0].1)
                && else_expr.as_deref().is_none_or(is_null_literal)
        }
        _ => false,
    }
}

/// `count([DISTINCT] <counted person>)` with no filter or ordering on the person.
fn is_person_count(e: &Expr) -> bool {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
        return false;
    };
    func.name() == "count"
        && params.args.len() == 1
        && counted_person(&params.args[0])
        && params.filter.as_deref().is_none_or(|f| !mentions_person(f))
        && params.order_by.iter().all(|s| !mentions_person(&s.expr))
}

/// `samkor_record_key(person)`.
fn is_record_key_of_person(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(ScalarFunction { func, args })
        if func.name() == RECORD_KEY_FN && matches!(args.as_slice(), [a] if is_person(a)))
}

/// `person IS [NOT] NULL`: the same of the identity number and of its
/// pseudonym (a null stays null, a value gets a pseudonym).
fn is_presence_of_person(e: &Expr) -> bool {
    matches!(e, Expr::IsNotNull(p) | Expr::IsNull(p) if is_person(p))
}

/// `samkor_pseudonym_bytes(person)`.
fn is_bytes_of_person(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(ScalarFunction { func, args })
        if func.name() == PSEUDONYM_BYTES_FN && matches!(args.as_slice(), [a] if is_person(a)))
}

/// Whether every mention of `person` in `e` is inside a person count, a
/// record key, the pseudonym's bytes or a test of its presence.
fn only_counts_person(e: &Expr) -> bool {
    if is_person_count(e) || is_record_key_of_person(e) || is_bytes_of_person(e) || is_presence_of_person(e) {
        return true;
    }
    if is_person(e) {
        return false;
    }
    let mut ok = true;
    let _ = e.apply_children(|c| {
        ok = only_counts_person(c);
        Ok(if ok { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    ok
}

/// Whether `plan` uses the person column only to count persons (see the module doc).
pub fn person_only_counted(plan: &LogicalPlan) -> bool {
    if plan.schema().fields().iter().any(|f| f.name() == PERSON_COLUMN) {
        return false;
    }
    let mut ok = true;
    let _ = plan.apply(|node| {
        ok = node_ok(node);
        Ok(if ok { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    ok
}

fn node_ok(node: &LogicalPlan) -> bool {
    let has_subquery = node.expressions().iter().any(|e| {
        let mut found = false;
        let _ = e.apply(|e| {
            found = matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::OuterReferenceColumn(..)
            );
            Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
        });
        found
    });
    if has_subquery {
        return false;
    }
    match node {
        LogicalPlan::TableScan(TableScan { filters, .. }) => filters.iter().all(|f| !mentions_person(f)),
        LogicalPlan::Aggregate(a) => {
            a.group_expr.iter().all(|g| !mentions_person(g)) && a.aggr_expr.iter().all(only_counts_person)
        }
        // A bare `person` passes through under its own name, and its record
        // key may be computed; an alias or any other function of it may not.
        LogicalPlan::Projection(p) => p.expr.iter().all(|e| is_person(e) || only_counts_person(e)),
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::SubqueryAlias(_) => {
            node.expressions().iter().all(|e| !mentions_person(e))
        }
        // Joins, unions, windows, DISTINCT, …: only where no person column reaches them.
        other => {
            other.expressions().iter().all(|e| !mentions_person(e))
                && other.inputs().iter().all(|i| i.schema().fields().iter().all(|f| f.name() != PERSON_COLUMN))
        }
    }
}

/// Whether every mention of `person` in `e` is its record key, a test of
/// its presence (a record key and the pseudonym's bytes are null exactly
/// where the identity number is) or, with `bytes`, the pseudonym's bytes.
fn only_derived(e: &Expr, bytes: bool) -> bool {
    if is_record_key_of_person(e) || is_presence_of_person(e) || (bytes && is_bytes_of_person(e)) {
        return true;
    }
    if is_person(e) {
        return false;
    }
    let mut ok = true;
    let _ = e.apply_children(|c| {
        ok = only_derived(c, bytes);
        Ok(if ok { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    ok
}

/// What the scans of a plan can emit as `person` instead of the identity
/// number ([`derive_at_the_scans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// The record key: the plan uses `person` only through it.
    RecordKey,
    /// The pseudonym's bytes: the plan uses `person` only through them and
    /// its record key (a join's key, and the persons of its rows).
    PseudonymBytes,
}

/// What `plan`'s scans can emit as `person`: `None` unless it only counts
/// persons, uses `person` only through its record key or its pseudonym's
/// bytes (a projection may pass `person` on under its own name), and every
/// scan with a `person` column is of a project table.
pub fn derived_at_the_scans(plan: &LogicalPlan) -> Option<Derived> {
    person_only_counted(plan).then(|| derived_of_counted(plan)).flatten()
}

/// [`derived_at_the_scans`] of a plan that only counts persons.
fn derived_of_counted(plan: &LogicalPlan) -> Option<Derived> {
    let only = |bytes: bool| {
        let mut ok = true;
        let _ = plan.apply(|node| {
            ok = match node {
                LogicalPlan::TableScan(scan) => {
                    scan.source.schema().fields().iter().all(|f| f.name() != PERSON_COLUMN)
                        || source_as_provider(&scan.source).is_ok_and(|p| p.downcast_ref::<ProjectTable>().is_some())
                }
                LogicalPlan::Projection(p) => p.expr.iter().all(|e| is_person(e) || only_derived(e, bytes)),
                other => other.expressions().iter().all(|e| only_derived(e, bytes)),
            };
            Ok(if ok { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
        });
        ok
    };
    match (only(false), only(true)) {
        (true, _) => Some(Derived::RecordKey),
        (false, true) => Some(Derived::PseudonymBytes),
        (false, false) => None,
    }
}

/// What a scan emits as `person`, and how it computes it from identity numbers.
#[derive(Debug, Clone)]
pub enum AtTheScan {
    /// The record key, an `Int64`.
    RecordKey(RecordKeyer),
    /// The pseudonym's 16 bytes, a `FixedSizeBinary(16)`.
    PseudonymBytes(ProjectPseudonymiser),
}

impl AtTheScan {
    pub fn data_type(&self) -> DataType {
        match self {
            AtTheScan::RecordKey(_) => DataType::Int64,
            AtTheScan::PseudonymBytes(_) => DataType::FixedSizeBinary(PSEUDONYM_BYTES),
        }
    }

    /// What the node's `EXPLAIN` calls it.
    pub fn describe(&self) -> &'static str {
        match self {
            AtTheScan::RecordKey(_) => "record key",
            AtTheScan::PseudonymBytes(_) => "pseudonym bytes",
        }
    }

    /// Of a column of identity numbers; nulls stay null.
    pub fn compute(&self, identities: &dyn datafusion::arrow::array::Array) -> Result<ArrayRef> {
        match self {
            AtTheScan::RecordKey(keyer) => keyer.keys(identities),
            AtTheScan::PseudonymBytes(pseudonymiser) => match pseudonymiser.pseudonym_bytes(identities) {
                Ok(bytes) => Ok(Arc::new(bytes)),
                Err(e) => exec_err!("pseudonym bytes: {e}"),
            },
        }
    }
}

/// If `plan` only counts persons, its scans of project tables emit identity
/// numbers instead of pseudonyms and its record keys and pseudonym bytes are
/// computed from them by `on_identity` ([`IdentityFunctions`]); if it uses
/// `person` only through its record key (and its pseudonym's bytes), the
/// scans emit the record keys (or the bytes) themselves
/// ([`derive_at_the_scans`]); otherwise `plan` unchanged.
pub fn count_on_identity_numbers(plan: LogicalPlan, on_identity: &IdentityFunctions) -> Result<LogicalPlan> {
    if !person_only_counted(&plan) {
        return Ok(plan);
    }
    match derived_of_counted(&plan) {
        Some(Derived::RecordKey) => {
            return derive_at_the_scans(plan, AtTheScan::RecordKey(on_identity.keyer.clone()));
        }
        Some(Derived::PseudonymBytes) => {
            let pseudonymiser = on_identity.keyer.pseudonymiser.clone();
            return derive_at_the_scans(plan, AtTheScan::PseudonymBytes(pseudonymiser));
        }
        None => {}
    }
    plan.transform_up(|node| {
        let LogicalPlan::TableScan(scan) = &node else {
            return from_identity_numbers(node, on_identity);
        };
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(Transformed::no(node));
        };
        let Some(table) = provider.downcast_ref::<ProjectTable>() else {
            return Ok(Transformed::no(node));
        };
        let mut scan = scan.clone();
        scan.source = provider_as_source(Arc::new(table.counting_persons_only()));
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    })
    .map(|t| t.data)
}

/// `plan`'s scans of project tables emit `at` as `person`, each output
/// keeping its name (`person IS [NOT] NULL` stays: both are null where the
/// identity number is), for a plan of [`derived_at_the_scans`]:
///
/// * the record key (`Int64`): every `samkor_record_key(person)` becomes
///   `person`. The keys are computed once a row at the scan, and taken from
///   the node's memory where it holds them ([`crate::identities`]);
/// * the pseudonym's bytes (`FixedSizeBinary(16)`): every
///   `samkor_pseudonym_bytes(person)` becomes `person`, and
///   `samkor_record_key(person)` hashes those bytes, the key of the same
///   pseudonym: one encryption a row instead of one for the bytes and one
///   for the key.
///
/// The identity numbers never reach an operator of the plan.
pub fn derive_at_the_scans(plan: LogicalPlan, at: AtTheScan) -> Result<LogicalPlan> {
    let replaced = match at {
        AtTheScan::RecordKey(_) => RECORD_KEY_FN,
        AtTheScan::PseudonymBytes(_) => PSEUDONYM_BYTES_FN,
    };
    plan.transform_up(|node| {
        let node = match node {
            LogicalPlan::TableScan(scan) => {
                let Some(table) = source_as_provider(&scan.source)?.downcast_ref::<ProjectTable>().cloned() else {
                    return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
                };
                let source = provider_as_source(Arc::new(table.deriving_persons(at.clone())));
                LogicalPlan::TableScan(
                    TableScanBuilder::new(scan.table_name, source)
                        .with_projection(scan.projection)
                        .with_filters(scan.filters)
                        .with_fetch(scan.fetch)
                        .with_statistics_requests(scan.statistics_requests)
                        .build()?,
                )
            }
            other => {
                let names = NamePreserver::new(&other);
                other
                    .map_expressions(|e| {
                        let saved = names.save(&e);
                        let rewritten = e.transform_up(|e| match e {
                            Expr::ScalarFunction(ScalarFunction { func, mut args })
                                if func.name() == replaced && matches!(args.as_slice(), [a] if is_person(a)) =>
                            {
                                Ok(Transformed::yes(args.swap_remove(0)))
                            }
                            other => Ok(Transformed::no(other)),
                        })?;
                        Ok(if rewritten.transformed { rewritten.update_data(|e| saved.restore(e)) } else { rewritten })
                    })?
                    .data
            }
        };
        Ok(Transformed::yes(node.recompute_schema()?))
    })
    .map(|t| t.data)
}

/// `samkor_record_key(person)` and `samkor_pseudonym_bytes(person)` in
/// `node`'s expressions replaced by their forms over identity numbers, every
/// output keeping its name.
fn from_identity_numbers(node: LogicalPlan, on_identity: &IdentityFunctions) -> Result<Transformed<LogicalPlan>> {
    let names = NamePreserver::new(&node);
    node.map_expressions(|e| {
        let saved = names.save(&e);
        let rewritten = e.transform_up(|e| {
            let func = if is_record_key_of_person(&e) {
                &on_identity.record_keys
            } else if is_bytes_of_person(&e) {
                &on_identity.pseudonym_bytes
            } else {
                return Ok(Transformed::no(e));
            };
            let Expr::ScalarFunction(ScalarFunction { args, .. }) = e else { unreachable!("checked above") };
            Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction { func: Arc::clone(func), args })))
        })?;
        Ok(if rewritten.transformed { rewritten.update_data(|e| saved.restore(e)) } else { rewritten })
    })
}

/// The record-key function over identity numbers. It exists in no session:
/// only [`count_on_identity_numbers`] puts it into a plan.
pub const IDENTITY_RECORD_KEY_FN: &str = "samkor_record_key_of_identity_number";
/// The pseudonym-bytes function over identity numbers (like [`IDENTITY_RECORD_KEY_FN`]).
pub const IDENTITY_PSEUDONYM_BYTES_FN: &str = "samkor_pseudonym_bytes_of_identity_number";

/// `samkor_record_key` and `samkor_pseudonym_bytes` over the identity
/// numbers of one pseudonym domain.
#[derive(Debug)]
pub struct IdentityFunctions {
    pub record_keys: Arc<ScalarUDF>,
    pub pseudonym_bytes: Arc<ScalarUDF>,
    /// The record keys of the domain, computed by the scans of a plan that
    /// uses `person` only through its record key.
    pub keyer: RecordKeyer,
}

impl IdentityFunctions {
    pub fn new(pseudonymiser: ProjectPseudonymiser, secret: RecordKeySecret) -> IdentityFunctions {
        let udf = |what| {
            Arc::new(ScalarUDF::from(OfIdentity {
                what,
                pseudonymiser: pseudonymiser.clone(),
                secret,
                signature: Signature::any(1, Volatility::Immutable),
            }))
        };
        IdentityFunctions {
            record_keys: udf(Computed::RecordKey),
            pseudonym_bytes: udf(Computed::PseudonymBytes),
            keyer: RecordKeyer { pseudonymiser, secret },
        }
    }
}

/// The record keys of one pseudonym domain from identity numbers: the same
/// keys as `samkor_record_key` of the domain's pseudonyms.
#[derive(Debug, Clone)]
pub struct RecordKeyer {
    pseudonymiser: ProjectPseudonymiser,
    secret: RecordKeySecret,
}

impl RecordKeyer {
    /// The record keys of a column of identity numbers; nulls stay null.
    pub fn keys(&self, identities: &dyn datafusion::arrow::array::Array) -> Result<ArrayRef> {
        match self.pseudonymiser.record_keys(&self.secret, identities) {
            Ok(keys) => Ok(Arc::new(keys)),
            Err(e) => exec_err!("record keys: {e}"),
        }
    }

    /// Whether `other` computes the same keys.
    pub fn same(&self, other: &RecordKeyer) -> bool {
        self.secret == other.secret
            && self.pseudonymiser.project() == other.pseudonymiser.project()
            && self.pseudonymiser.scheme() == other.pseudonymiser.scheme()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Computed {
    RecordKey,
    PseudonymBytes,
}

#[derive(Debug)]
struct OfIdentity {
    what: Computed,
    pseudonymiser: ProjectPseudonymiser,
    secret: RecordKeySecret,
    signature: Signature,
}

impl PartialEq for OfIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what
            && self.secret == other.secret
            && self.pseudonymiser.project() == other.pseudonymiser.project()
            && self.pseudonymiser.scheme() == other.pseudonymiser.scheme()
    }
}

impl Eq for OfIdentity {}

impl std::hash::Hash for OfIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.what.hash(state);
        self.pseudonymiser.project().hash(state);
    }
}

impl ScalarUDFImpl for OfIdentity {
    fn name(&self) -> &str {
        match self.what {
            Computed::RecordKey => IDENTITY_RECORD_KEY_FN,
            Computed::PseudonymBytes => IDENTITY_PSEUDONYM_BYTES_FN,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null] => Ok(match self.what {
                Computed::RecordKey => DataType::Int64,
                Computed::PseudonymBytes => DataType::FixedSizeBinary(PSEUDONYM_BYTES),
            }),
            other => plan_err!("{} takes an identity number, not {other:?}", self.name()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let mut array = arg.to_array(args.number_rows)?;
        if array.data_type() == &DataType::Null {
            array = datafusion::arrow::array::new_null_array(&DataType::Utf8, array.len());
        }
        let computed: std::result::Result<ArrayRef, String> = match self.what {
            Computed::RecordKey => {
                self.pseudonymiser.record_keys(&self.secret, &array).map(|a| Arc::new(a) as ArrayRef)
            }
            Computed::PseudonymBytes => self.pseudonymiser.pseudonym_bytes(&array).map(|a| Arc::new(a) as ArrayRef),
        };
        match computed {
            Ok(values) => Ok(ColumnarValue::Array(values)),
            Err(e) => exec_err!("{}: {e}", self.name()),
        }
    }
}

#[cfg(test)]
mod tests;
