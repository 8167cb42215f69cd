//! Project approvals: one TOML document per research project, readable by an
//! ethics reviewer, stating who may ask what of which tables, for how long,
//! and under which disclosure settings (DOMAIN.md rules 1, 7 and 8).
//!
//! ```text
//!   approvals/*.toml ──parse──▶ Approval ──▶ decisions made at every query:
//!        │                 ▲                 is_member, validity, grant, allows
//!        │                 │
//!        │     CatalogueView (tables and columns the nodes serve; optional)
//!        ▼
//!   ApprovalStore: reloads the directory when a file is added, removed or changed
//! ```
//!
//! Parsing checks the structure (unknown fields, types), the values (project
//! id, dates, output kinds, disclosure settings that may only be stricter than
//! the federation defaults) and, when a catalogue is given, every register,
//! table and column named. Errors name the file and, where known, the line.
//! The format is documented for reviewers in `docs/approvals.md`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

use crate::perturbation::{MAX_MAX_DEVIATION, PerturbationParams};

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The federation's disclosure settings; an approval may only make them stricter.
#[derive(Debug, Clone, PartialEq)]
pub struct DisclosureDefaults {
    /// A released cell must count at least this many distinct persons.
    pub min_cell_persons: u32,
    /// Dominance rule: the `dominance_n` largest persons of a cell ...
    pub dominance_n: u32,
    /// ... may together contribute at most this share of the cell's sum.
    pub dominance_share: f64,
    /// Released aggregates are perturbed by the cell-key method (docs/disclosure.md).
    pub perturbation: bool,
    /// `D`: the largest deviation of a released count.
    pub perturbation_max_deviation: u32,
    /// `V`: the variance of the deviation of a released count.
    pub perturbation_variance: f64,
    /// `δ`: magnitudes get noise of this share of their largest contributor (times the deviation).
    pub magnitude_noise: f64,
}

impl Default for DisclosureDefaults {
    fn default() -> Self {
        DisclosureDefaults {
            min_cell_persons: 5,
            dominance_n: 2,
            dominance_share: 0.85,
            perturbation: true,
            perturbation_max_deviation: 2,
            perturbation_variance: 1.0,
            magnitude_noise: 0.05,
        }
    }
}

/// What a project may take out of the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputKind {
    /// Counts and statistics over cells that pass disclosure control.
    Aggregate,
    /// Rows keyed by the project pseudonym, without identifying columns.
    PseudonymisedMicrodata,
}

impl OutputKind {
    /// The name used in approval documents.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Aggregate => "aggregate",
            OutputKind::PseudonymisedMicrodata => "pseudonymised_microdata",
        }
    }

    fn from_name(s: &str) -> Option<OutputKind> {
        [OutputKind::Aggregate, OutputKind::PseudonymisedMicrodata].into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The disclosure settings in force for a project: the federation defaults,
/// tightened by the approval's `[disclosure]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Disclosure {
    pub min_cell_persons: u32,
    /// Released counts are rounded to a multiple of this; 1 means no rounding.
    pub round_counts_to: u32,
    pub dominance_n: u32,
    pub dominance_share: f64,
    /// Columns (`register.table.column`) on which MIN and MAX may be released.
    pub allow_min_max: BTreeSet<String>,
    /// Released aggregates are perturbed by the cell-key method.
    pub perturbation: bool,
    /// `D`: the largest deviation of a released count.
    pub perturbation_max_deviation: u32,
    /// `V`: the variance of the deviation of a released count.
    pub perturbation_variance: f64,
    /// `δ`: the share of a magnitude's largest contributor that scales its noise.
    pub magnitude_noise: f64,
}

impl Disclosure {
    /// The federation defaults, unchanged (no rounding, no MIN/MAX columns).
    pub fn from_defaults(d: &DisclosureDefaults) -> Disclosure {
        Disclosure {
            min_cell_persons: d.min_cell_persons,
            round_counts_to: 1,
            dominance_n: d.dominance_n,
            dominance_share: d.dominance_share,
            allow_min_max: BTreeSet::new(),
            perturbation: d.perturbation,
            perturbation_max_deviation: d.perturbation_max_deviation,
            perturbation_variance: d.perturbation_variance,
            magnitude_noise: d.magnitude_noise,
        }
    }

    /// The parameters of the perturbation table for this project (threshold
    /// `k` = `min_cell_persons`); `None` when perturbation is off.
    pub fn perturbation_params(&self) -> Option<PerturbationParams> {
        self.perturbation.then_some(PerturbationParams {
            max_deviation: self.perturbation_max_deviation,
            variance: self.perturbation_variance,
            threshold: self.min_cell_persons,
            magnitude_noise: self.magnitude_noise,
        })
    }

    /// Whether MIN/MAX may be released on `column` of `register_table` (`"hip.operations"`).
    pub fn allows_min_max(&self, register_table: &str, column: &str) -> bool {
        self.allow_min_max.contains(&format!("{register_table}.{column}"))
    }
}

/// Access granted to one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableGrant {
    pub register: String,
    pub table: String,
    /// Columns as the federation names them (the person column is `person`).
    pub columns: BTreeSet<String>,
    /// Row restrictions; a row is visible only if it satisfies all of them.
    pub rows: Vec<RowRestriction>,
    /// Columns released only in a coarser form (column → how).
    pub generalise: BTreeMap<String, Generalisation>,
}

/// How a column is coarsened before it leaves its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalisation {
    /// A date becomes the first day of its year.
    Year,
    /// A date becomes the first day of its month.
    Month,
    /// A code (ICD-10, ATC) becomes its first three characters.
    Code3,
}

impl Generalisation {
    /// The name used in approval documents.
    pub fn name(self) -> &'static str {
        match self {
            Generalisation::Year => "year",
            Generalisation::Month => "month",
            Generalisation::Code3 => "code3",
        }
    }

    fn from_name(s: &str) -> Option<Generalisation> {
        [Generalisation::Year, Generalisation::Month, Generalisation::Code3].into_iter().find(|g| g.name() == s)
    }

    /// The column type it applies to, as written in node configs.
    pub fn column_type(self) -> &'static str {
        match self {
            Generalisation::Year | Generalisation::Month => "date32",
            Generalisation::Code3 => "utf8",
        }
    }
}

impl TableGrant {
    /// `register.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.register, self.table)
    }

    pub fn has_column(&self, column: &str) -> bool {
        self.columns.contains(column)
    }

    /// Whether `column` leaves only generalised.
    pub fn generalises(&self, column: &str) -> bool {
        self.generalise.contains_key(column)
    }
}

/// A condition on the rows of a granted table.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRestriction {
    pub column: String,
    pub kind: RestrictionKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RestrictionKind {
    /// `from <= value <= until`; a missing end is `Unbounded`, a given end `Included`.
    Range { from: Bound<Value>, until: Bound<Value> },
    /// The value is one of these.
    In(Vec<Value>),
}

impl RowRestriction {
    /// Whether a row whose `column` holds `value` satisfies this restriction.
    /// A value of another kind than the restriction's (or null, which callers
    /// should not pass) never does.
    pub fn admits(&self, value: &Value) -> bool {
        match &self.kind {
            RestrictionKind::Range { from, until } => {
                let lower = match from {
                    Bound::Included(f) => matches!(value.compare(f), Some(Ordering::Greater | Ordering::Equal)),
                    Bound::Excluded(f) => matches!(value.compare(f), Some(Ordering::Greater)),
                    Bound::Unbounded => true,
                };
                let upper = match until {
                    Bound::Included(u) => matches!(value.compare(u), Some(Ordering::Less | Ordering::Equal)),
                    Bound::Excluded(u) => matches!(value.compare(u), Some(Ordering::Less)),
                    Bound::Unbounded => true,
                };
                lower && upper
            }
            RestrictionKind::In(values) => values.iter().any(|v| value.compare(v) == Some(Ordering::Equal)),
        }
    }
}

/// A value in a row restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Date(NaiveDate),
    Int(i64),
    Str(String),
}

impl Value {
    /// Ordering between values of the same kind; `None` across kinds.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Date(_) => "a date",
            Value::Int(_) => "an integer",
            Value::Str(_) => "a string",
        }
    }

    /// Whether this value can be compared with a column of catalogue type `data_type`.
    fn fits(&self, data_type: &str) -> bool {
        match self {
            Value::Date(_) => data_type == "date32",
            Value::Int(_) => matches!(data_type, "int32" | "int64"),
            Value::Str(_) => data_type == "utf8",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Date(d) => write!(f, "{d}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A checked approval document.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// The file it was read from.
    pub file: PathBuf,
    pub project: String,
    pub title: String,
    pub ethics_reference: String,
    pub ethics_authority: String,
    pub principal_investigator: String,
    /// All members, the principal investigator included.
    pub members: BTreeSet<String>,
    pub purpose: String,
    pub valid_from: NaiveDate,
    /// Inclusive: the approval holds through this day.
    pub valid_until: NaiveDate,
    pub outputs: BTreeSet<OutputKind>,
    pub disclosure: Disclosure,
    pub tables: Vec<TableGrant>,
}

/// Where an approval stands on a given day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid { from: NaiveDate },
    Valid,
    Expired { until: NaiveDate },
}

impl Approval {
    /// Whether `identity` (a certificate common name) is the PI or a member.
    pub fn is_member(&self, identity: &str) -> bool {
        self.members.contains(identity)
    }

    /// Where the approval stands on `today`; both ends of the period are inclusive.
    pub fn validity(&self, today: NaiveDate) -> Validity {
        if today < self.valid_from {
            Validity::NotYetValid { from: self.valid_from }
        } else if today > self.valid_until {
            Validity::Expired { until: self.valid_until }
        } else {
            Validity::Valid
        }
    }

    /// The grant for `register_table` (`"hip.operations"`), if the project has one.
    pub fn grant(&self, register_table: &str) -> Option<&TableGrant> {
        self.tables.iter().find(|g| {
            register_table
                .strip_prefix(g.register.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|t| t == g.table)
        })
    }

    pub fn allows(&self, kind: OutputKind) -> bool {
        self.outputs.contains(&kind)
    }

    /// Whether the approval is valid on `today` and its last day falls within
    /// the next `days` days (today counted as the first): time to renew.
    pub fn expires_within(&self, today: NaiveDate, days: u32) -> bool {
        self.validity(today) == Validity::Valid && (self.valid_until - today).num_days() < i64::from(days)
    }
}

/// One column of the federation's catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// `utf8`, `int32`, `int64`, `float64`, `boolean` or `date32`.
    pub data_type: String,
    pub identifying: bool,
}

/// The tables and columns the federation serves, as approvals are checked against them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogueView {
    /// `"hip.operations"` → column name → column.
    pub tables: BTreeMap<String, BTreeMap<String, ColumnInfo>>,
}

impl CatalogueView {
    fn registers(&self) -> BTreeSet<&str> {
        self.tables.keys().filter_map(|k| k.split_once('.').map(|(r, _)| r)).collect()
    }

    fn tables_of(&self, register: &str) -> Vec<&str> {
        self.tables.keys().filter_map(|k| k.split_once('.')).filter(|(r, _)| *r == register).map(|(_, t)| t).collect()
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why an approval document was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("cannot read approval directory {}: {source}", dir.display())]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("{}: cannot read: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// Not TOML, an unknown field or a value of the wrong type; `message` is
    /// `line L, column C: problem`.
    #[error("{}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    /// Well-formed but not acceptable.
    #[error("{}: {}{problem}", file.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid { file: PathBuf, line: Option<usize>, problem: Box<Problem> },
}

impl ApprovalError {
    /// The file (or directory) concerned.
    pub fn file(&self) -> &Path {
        match self {
            ApprovalError::ReadDir { dir, .. } => dir,
            ApprovalError::Read { file, .. }
            | ApprovalError::Syntax { file, .. }
            | ApprovalError::Invalid { file, .. } => file,
        }
    }

    /// The problem, for errors about the content of a well-formed document.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ApprovalError::Invalid { problem, .. } => Some(problem),
            ApprovalError::ReadDir { .. } | ApprovalError::Read { .. } | ApprovalError::Syntax { .. } => None,
        }
    }
}

/// What is wrong with a well-formed approval document; one variant per cause.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error(
        "project id {id:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    BadProjectId { id: String },
    #[error("project id {id:?} is reserved for care providers' direct access to their own data; choose another id")]
    ReservedProjectId { id: String },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} must be a date such as 2024-01-01, not {found}")]
    NotADate { field: &'static str, found: String },
    #[error("dates reversed: valid_until {until} is before valid_from {from}")]
    DatesReversed { from: NaiveDate, until: NaiveDate },
    #[error("principal_investigator is empty: name the principal investigator as in their certificate")]
    NoInvestigator,
    #[error("members: entry {index} is empty")]
    EmptyMember { index: usize },
    #[error("outputs is empty: list at least one of \"aggregate\", \"pseudonymised_microdata\"")]
    NoOutputs,
    #[error("unknown output kind {found:?}: expected \"aggregate\" or \"pseudonymised_microdata\"")]
    UnknownOutput { found: String },
    #[error(
        "disclosure.{setting} = {value} is looser than the federation default {default}; an approval may only be stricter ({requirement})"
    )]
    LooserThanDefault { setting: &'static str, value: String, default: String, requirement: String },
    #[error("disclosure.{setting} = {value} is out of range: {requirement}")]
    OutOfRange { setting: &'static str, value: String, requirement: &'static str },
    #[error(
        "disclosure.perturbation_variance = {variance} is out of range: it must be below the square of perturbation_max_deviation = {max_deviation}, i.e. below {square}; raise perturbation_max_deviation as well"
    )]
    PerturbationVariance { variance: String, max_deviation: u32, square: u64 },
    #[error("no [[tables]]: an approval must grant at least one table")]
    NoTables,
    #[error("table {name:?} must be written register.table, e.g. \"hip.operations\"")]
    BadTableName { name: String },
    #[error("unknown register {register:?} in {name:?} (registers in the federation: {known})")]
    UnknownRegister { register: String, name: String, known: String },
    #[error("register {register} has no table {table:?} (its tables: {known})")]
    UnknownTable { register: String, table: String, known: String },
    #[error("table {table} is granted twice; merge the two [[tables]] entries")]
    TableTwice { table: String },
    #[error("table {table}: no columns granted")]
    NoColumns { table: String },
    #[error("table {table} has no column {column:?}")]
    UnknownColumn { table: String, column: String },
    #[error("table {table}: column {column:?} is listed twice")]
    ColumnTwice { table: String, column: String },
    #[error("table {table}: row restriction on {column:?}, which is not among the columns granted in that table")]
    RowColumnNotGranted { table: String, column: String },
    #[error("table {table}: row restriction on {column}: {detail}")]
    RowShape { table: String, column: String, detail: &'static str },
    #[error("table {table}: row restriction on {column}: from {from} is after until {until}")]
    RowReversed { table: String, column: String, from: Value, until: Value },
    #[error("table {table}: row restriction on {column}: {value_kind} does not match the column type {column_type}")]
    RowTypeMismatch { table: String, column: String, value_kind: &'static str, column_type: String },
    #[error("table {table}: generalise names {column:?}, which is not among the columns granted in that table")]
    GeneraliseNotGranted { table: String, column: String },
    #[error(
        "table {table}: unknown generalisation {found:?} for {column}: expected \"year\", \"month\" (dates) or \"code3\" (codes)"
    )]
    UnknownGeneralisation { table: String, column: String, found: String },
    #[error("table {table}: generalisation {kind} of {column} needs a {needs} column, not {column_type}")]
    GeneraliseTypeMismatch {
        table: String,
        column: String,
        kind: &'static str,
        needs: &'static str,
        column_type: String,
    },
    #[error("allow_min_max entry {entry:?} must be written register.table.column")]
    MinMaxMalformed { entry: String },
    #[error("allow_min_max names {entry}, which is not a granted column")]
    MinMaxNotGranted { entry: String },
    #[error("project {project:?} is also declared in {}; neither file is used until one is changed", other.display())]
    DuplicateProject { project: String, other: PathBuf },
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    project: Spanned<String>,
    title: Spanned<String>,
    ethics_reference: Spanned<String>,
    ethics_authority: Spanned<String>,
    principal_investigator: Spanned<String>,
    #[serde(default)]
    members: Vec<Spanned<String>>,
    purpose: Spanned<String>,
    valid_from: Spanned<Datetime>,
    valid_until: Spanned<Datetime>,
    outputs: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    disclosure: Option<RawDisclosure>,
    #[serde(default)]
    tables: Vec<RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisclosure {
    min_cell_persons: Option<Spanned<i64>>,
    round_counts_to: Option<Spanned<i64>>,
    dominance_n: Option<Spanned<i64>>,
    dominance_share: Option<Spanned<f64>>,
    #[serde(default)]
    allow_min_max: Vec<Spanned<String>>,
    perturbation: Option<Spanned<bool>>,
    perturbation_max_deviation: Option<Spanned<i64>>,
    perturbation_variance: Option<Spanned<f64>>,
    magnitude_noise: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    table: Spanned<String>,
    columns: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    rows: Vec<RawRow>,
    /// Column → generalisation name.
    #[serde(default)]
    generalise: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    column: Spanned<String>,
    from: Option<Spanned<toml::Value>>,
    until: Option<Spanned<toml::Value>>,
    #[serde(rename = "in")]
    in_list: Option<Spanned<Vec<Spanned<toml::Value>>>>,
}

/// Builds errors that point into one document.
struct Doc<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    fn at<T>(&self, spanned: &Spanned<T>, problem: Problem) -> ApprovalError {
        let line = crate::toml_error::line_at(self.text, spanned.span().start);
        ApprovalError::Invalid { file: self.path.to_owned(), line: Some(line), problem: Box::new(problem) }
    }

    fn whole(&self, problem: Problem) -> ApprovalError {
        ApprovalError::Invalid { file: self.path.to_owned(), line: None, problem: Box::new(problem) }
    }
}

fn is_project_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn toml_date(d: &Datetime) -> Option<NaiveDate> {
    match (d.date, d.time, d.offset) {
        (Some(date), None, None) => {
            NaiveDate::from_ymd_opt(i32::from(date.year), u32::from(date.month), u32::from(date.day))
        }
        _ => None,
    }
}

fn toml_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::Str(s.clone())),
        toml::Value::Integer(i) => Some(Value::Int(*i)),
        toml::Value::Datetime(d) => toml_date(d).map(Value::Date),
        _ => None,
    }
}

/// Parses and checks one approval document. `path` is used in messages and
/// recorded in [`Approval::file`]; with a `catalogue`, every register, table
/// and column named must exist and row restriction values must fit the column types.
pub fn parse(
    path: &Path,
    text: &str,
    defaults: &DisclosureDefaults,
    catalogue: Option<&CatalogueView>,
) -> Result<Approval, ApprovalError> {
    let raw: RawApproval = toml::from_str(text)
        .map_err(|e| ApprovalError::Syntax { file: path.to_owned(), message: crate::toml_error::one_line(&e) })?;
    let doc = Doc { path, text };

    if !is_project_id(raw.project.get_ref()) {
        return Err(doc.at(&raw.project, Problem::BadProjectId { id: raw.project.get_ref().clone() }));
    }
    if raw.project.get_ref().eq_ignore_ascii_case(crate::DIRECT_PROJECT) {
        return Err(doc.at(&raw.project, Problem::ReservedProjectId { id: raw.project.get_ref().clone() }));
    }
    for (field, value) in [
        ("title", &raw.title),
        ("ethics_reference", &raw.ethics_reference),
        ("ethics_authority", &raw.ethics_authority),
        ("purpose", &raw.purpose),
    ] {
        if value.get_ref().trim().is_empty() {
            return Err(doc.at(value, Problem::Empty { field }));
        }
    }

    let pi = raw.principal_investigator.get_ref().trim();
    if pi.is_empty() {
        return Err(doc.at(&raw.principal_investigator, Problem::NoInvestigator));
    }
    let mut members = BTreeSet::from([pi.to_owned()]);
    for (i, m) in raw.members.iter().enumerate() {
        let name = m.get_ref().trim();
        if name.is_empty() {
            return Err(doc.at(m, Problem::EmptyMember { index: i + 1 }));
        }
        members.insert(name.to_owned());
    }

    let date = |field: &'static str, d: &Spanned<Datetime>| {
        toml_date(d.get_ref()).ok_or_else(|| doc.at(d, Problem::NotADate { field, found: d.get_ref().to_string() }))
    };
    let valid_from = date("valid_from", &raw.valid_from)?;
    let valid_until = date("valid_until", &raw.valid_until)?;
    if valid_until < valid_from {
        return Err(doc.at(&raw.valid_until, Problem::DatesReversed { from: valid_from, until: valid_until }));
    }

    if raw.outputs.get_ref().is_empty() {
        return Err(doc.at(&raw.outputs, Problem::NoOutputs));
    }
    let mut outputs = BTreeSet::new();
    for o in raw.outputs.get_ref() {
        let kind = OutputKind::from_name(o.get_ref())
            .ok_or_else(|| doc.at(o, Problem::UnknownOutput { found: o.get_ref().clone() }))?;
        outputs.insert(kind);
    }

    let tables = grants(&doc, &raw.tables, catalogue)?;

    let mut disclosure = Disclosure::from_defaults(defaults);
    if let Some(d) = &raw.disclosure {
        stricter_disclosure(&doc, d, defaults, &tables, &mut disclosure)?;
    }

    Ok(Approval {
        file: path.to_owned(),
        project: raw.project.into_inner(),
        title: raw.title.into_inner(),
        ethics_reference: raw.ethics_reference.into_inner(),
        ethics_authority: raw.ethics_authority.into_inner(),
        principal_investigator: pi.to_owned(),
        members,
        purpose: raw.purpose.into_inner(),
        valid_from,
        valid_until,
        outputs,
        disclosure,
        tables,
    })
}

fn small_count(
    doc: &Doc<'_>,
    setting: &'static str,
    v: &Spanned<i64>,
    requirement: &'static str,
) -> Result<u32, ApprovalError> {
    u32::try_from(*v.get_ref())
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| doc.at(v, Problem::OutOfRange { setting, value: v.get_ref().to_string(), requirement }))
}

fn stricter_disclosure(
    doc: &Doc<'_>,
    raw: &RawDisclosure,
    defaults: &DisclosureDefaults,
    tables: &[TableGrant],
    out: &mut Disclosure,
) -> Result<(), ApprovalError> {
    let looser = |v: &Spanned<_>, setting, value: String, default: String, requirement: String| {
        doc.at(v, Problem::LooserThanDefault { setting, value, default, requirement })
    };
    if let Some(v) = &raw.min_cell_persons {
        let n = small_count(doc, "min_cell_persons", v, "a whole number of persons, at least 1")?;
        let d = defaults.min_cell_persons;
        if n < d {
            return Err(looser(v, "min_cell_persons", n.to_string(), d.to_string(), format!("at least {d}")));
        }
        out.min_cell_persons = n;
    }
    if let Some(v) = &raw.round_counts_to {
        out.round_counts_to =
            small_count(doc, "round_counts_to", v, "a whole number, at least 1 (1 means no rounding)")?;
    }
    if let Some(v) = &raw.dominance_n {
        let n = small_count(doc, "dominance_n", v, "a whole number of persons, at least 1")?;
        let d = defaults.dominance_n;
        if n < d {
            return Err(looser(v, "dominance_n", n.to_string(), d.to_string(), format!("at least {d}")));
        }
        out.dominance_n = n;
    }
    if let Some(v) = &raw.dominance_share {
        let share = *v.get_ref();
        if !(share > 0.0 && share <= 1.0) {
            return Err(doc.at(
                v,
                Problem::OutOfRange {
                    setting: "dominance_share",
                    value: share.to_string(),
                    requirement: "a share above 0 and at most 1",
                },
            ));
        }
        let d = defaults.dominance_share;
        if share > d {
            let at = doc.at(
                v,
                Problem::LooserThanDefault {
                    setting: "dominance_share",
                    value: share.to_string(),
                    default: d.to_string(),
                    requirement: format!("at most {d}"),
                },
            );
            return Err(at);
        }
        out.dominance_share = share;
    }
    stricter_perturbation(doc, raw, defaults, out)?;
    for entry in &raw.allow_min_max {
        let name = entry.get_ref();
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(doc.at(entry, Problem::MinMaxMalformed { entry: name.clone() }));
        }
        let granted =
            tables.iter().any(|g| g.register == parts[0] && g.table == parts[1] && g.columns.contains(parts[2]));
        if !granted {
            return Err(doc.at(entry, Problem::MinMaxNotGranted { entry: name.clone() }));
        }
        out.allow_min_max.insert(name.clone());
    }
    Ok(())
}

/// Perturbation may be switched on but not off, and its parameters only raised.
fn stricter_perturbation(
    doc: &Doc<'_>,
    raw: &RawDisclosure,
    defaults: &DisclosureDefaults,
    out: &mut Disclosure,
) -> Result<(), ApprovalError> {
    if let Some(v) = &raw.perturbation {
        if defaults.perturbation && !*v.get_ref() {
            return Err(doc.at(
                v,
                Problem::LooserThanDefault {
                    setting: "perturbation",
                    value: "false".to_owned(),
                    default: "true".to_owned(),
                    requirement: "leave it on".to_owned(),
                },
            ));
        }
        out.perturbation = *v.get_ref();
    }
    if let Some(v) = &raw.perturbation_max_deviation {
        let n = u32::try_from(*v.get_ref()).ok().filter(|n| (1..=MAX_MAX_DEVIATION).contains(n)).ok_or_else(|| {
            doc.at(
                v,
                Problem::OutOfRange {
                    setting: "perturbation_max_deviation",
                    value: v.get_ref().to_string(),
                    requirement: "a whole number from 1 to 100",
                },
            )
        })?;
        let d = defaults.perturbation_max_deviation;
        if n < d {
            return Err(doc.at(
                v,
                Problem::LooserThanDefault {
                    setting: "perturbation_max_deviation",
                    value: n.to_string(),
                    default: d.to_string(),
                    requirement: format!("at least {d}"),
                },
            ));
        }
        out.perturbation_max_deviation = n;
    }
    for (setting, raw_value, default, target) in [
        (
            "perturbation_variance",
            &raw.perturbation_variance,
            defaults.perturbation_variance,
            &mut out.perturbation_variance,
        ),
        ("magnitude_noise", &raw.magnitude_noise, defaults.magnitude_noise, &mut out.magnitude_noise),
    ] {
        let Some(v) = raw_value else { continue };
        let x = *v.get_ref();
        let (ok, requirement) = match setting {
            "magnitude_noise" => (x > 0.0 && x <= 1.0, "a share of the largest contributor above 0 and at most 1"),
            _ => (x > 0.0 && x.is_finite(), "a variance above 0"),
        };
        if !ok {
            return Err(doc.at(v, Problem::OutOfRange { setting, value: x.to_string(), requirement }));
        }
        if x < default {
            return Err(doc.at(
                v,
                Problem::LooserThanDefault {
                    setting,
                    value: x.to_string(),
                    default: default.to_string(),
                    requirement: format!("at least {default}"),
                },
            ));
        }
        *target = x;
    }
    // The table needs V < D²: a zero-mean deviation within ±D has at most variance D².
    let d = out.perturbation_max_deviation;
    let square = u64::from(d) * u64::from(d);
    if out.perturbation_variance >= square as f64 {
        let problem =
            Problem::PerturbationVariance { variance: out.perturbation_variance.to_string(), max_deviation: d, square };
        return Err(match (&raw.perturbation_variance, &raw.perturbation_max_deviation) {
            (Some(v), _) => doc.at(v, problem),
            (None, Some(v)) => doc.at(v, problem),
            // Neither set here: the federation's own defaults are the problem, not this document.
            (None, None) => return Ok(()),
        });
    }
    Ok(())
}

fn grants(
    doc: &Doc<'_>,
    raw: &[RawTable],
    catalogue: Option<&CatalogueView>,
) -> Result<Vec<TableGrant>, ApprovalError> {
    if raw.is_empty() {
        return Err(doc.whole(Problem::NoTables));
    }
    let mut out: Vec<TableGrant> = Vec::with_capacity(raw.len());
    for t in raw {
        let name = t.table.get_ref();
        let Some((register, table)) =
            name.split_once('.').filter(|(r, t)| !r.is_empty() && !t.is_empty() && !t.contains('.'))
        else {
            return Err(doc.at(&t.table, Problem::BadTableName { name: name.clone() }));
        };
        let known_columns = match catalogue {
            None => None,
            Some(cat) => match cat.tables.get(name.as_str()) {
                Some(cols) => Some(cols),
                None if !cat.registers().contains(register) => {
                    let known = cat.registers().into_iter().collect::<Vec<_>>().join(", ");
                    return Err(doc.at(
                        &t.table,
                        Problem::UnknownRegister { register: register.to_owned(), name: name.clone(), known },
                    ));
                }
                None => {
                    let known = cat.tables_of(register).join(", ");
                    return Err(doc.at(
                        &t.table,
                        Problem::UnknownTable { register: register.to_owned(), table: table.to_owned(), known },
                    ));
                }
            },
        };
        if out.iter().any(|g| g.register == register && g.table == table) {
            return Err(doc.at(&t.table, Problem::TableTwice { table: name.clone() }));
        }
        if t.columns.get_ref().is_empty() {
            return Err(doc.at(&t.columns, Problem::NoColumns { table: name.clone() }));
        }
        let mut columns = BTreeSet::new();
        for c in t.columns.get_ref() {
            let column = c.get_ref();
            if known_columns.is_some_and(|k| !k.contains_key(column)) {
                return Err(doc.at(c, Problem::UnknownColumn { table: name.clone(), column: column.clone() }));
            }
            if !columns.insert(column.clone()) {
                return Err(doc.at(c, Problem::ColumnTwice { table: name.clone(), column: column.clone() }));
            }
        }
        let mut rows = Vec::with_capacity(t.rows.len());
        for r in &t.rows {
            let column = r.column.get_ref();
            if !columns.contains(column) {
                return Err(
                    doc.at(&r.column, Problem::RowColumnNotGranted { table: name.clone(), column: column.clone() })
                );
            }
            let column_type = known_columns.and_then(|k| k.get(column)).map(|c| c.data_type.as_str());
            rows.push(row_restriction(doc, name, r, column_type)?);
        }
        let mut generalise = BTreeMap::new();
        for (column, how) in &t.generalise {
            if !columns.contains(column) {
                return Err(doc.at(how, Problem::GeneraliseNotGranted { table: name.clone(), column: column.clone() }));
            }
            let Some(g) = Generalisation::from_name(how.get_ref()) else {
                return Err(doc.at(
                    how,
                    Problem::UnknownGeneralisation {
                        table: name.clone(),
                        column: column.clone(),
                        found: how.get_ref().clone(),
                    },
                ));
            };
            if let Some(actual) = known_columns.and_then(|k| k.get(column)).map(|c| c.data_type.as_str())
                && actual != g.column_type()
            {
                return Err(doc.at(
                    how,
                    Problem::GeneraliseTypeMismatch {
                        table: name.clone(),
                        column: column.clone(),
                        kind: g.name(),
                        needs: g.column_type(),
                        column_type: actual.to_owned(),
                    },
                ));
            }
            generalise.insert(column.clone(), g);
        }
        out.push(TableGrant { register: register.to_owned(), table: table.to_owned(), columns, rows, generalise });
    }
    Ok(out)
}

fn row_restriction(
    doc: &Doc<'_>,
    table: &str,
    r: &RawRow,
    column_type: Option<&str>,
) -> Result<RowRestriction, ApprovalError> {
    let column = r.column.get_ref();
    let shape = |at: &Spanned<String>, detail| {
        doc.at(at, Problem::RowShape { table: table.to_owned(), column: column.clone(), detail })
    };
    let fits = |v: &Value, at: &dyn Fn(Problem) -> ApprovalError| match column_type {
        Some(ty) if !v.fits(ty) => Err(at(Problem::RowTypeMismatch {
            table: table.to_owned(),
            column: column.clone(),
            value_kind: v.kind(),
            column_type: ty.to_owned(),
        })),
        _ => Ok(()),
    };
    let kind = match (&r.from, &r.until, &r.in_list) {
        (None, None, None) => return Err(shape(&r.column, "give from and/or until, or in")),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(shape(&r.column, "give either from/until or in, not both"));
        }
        (None, None, Some(list)) => {
            if list.get_ref().is_empty() {
                return Err(shape(&r.column, "in is empty: no row would be visible"));
            }
            let mut values = Vec::with_capacity(list.get_ref().len());
            for item in list.get_ref() {
                let at = |p: Problem| doc.at(item, p);
                let v = toml_value(item.get_ref())
                    .ok_or_else(|| shape(&r.column, "in values must be strings, integers or dates"))?;
                if let Some(first) = values.first()
                    && Value::kind(first) != v.kind()
                {
                    return Err(at(Problem::RowShape {
                        table: table.to_owned(),
                        column: column.clone(),
                        detail: "in values must all be of the same kind",
                    }));
                }
                fits(&v, &at)?;
                values.push(v);
            }
            RestrictionKind::In(values)
        }
        (from, until, None) => {
            let bound = |b: &Option<Spanned<toml::Value>>| -> Result<Option<Value>, ApprovalError> {
                let Some(b) = b else { return Ok(None) };
                let v = toml_value(b.get_ref()).filter(|v| !matches!(v, Value::Str(_))).ok_or_else(|| {
                    doc.at(
                        b,
                        Problem::RowShape {
                            table: table.to_owned(),
                            column: column.clone(),
                            detail: "from and until must be dates or integers",
                        },
                    )
                })?;
                fits(&v, &|p| doc.at(b, p))?;
                Ok(Some(v))
            };
            let f = bound(from)?;
            let u = bound(until)?;
            if let (Some(fv), Some(uv), Some(us)) = (&f, &u, until) {
                match fv.compare(uv) {
                    None => {
                        return Err(doc.at(
                            us,
                            Problem::RowShape {
                                table: table.to_owned(),
                                column: column.clone(),
                                detail: "from and until must be of the same kind",
                            },
                        ));
                    }
                    Some(Ordering::Greater) => {
                        return Err(doc.at(
                            us,
                            Problem::RowReversed {
                                table: table.to_owned(),
                                column: column.clone(),
                                from: fv.clone(),
                                until: uv.clone(),
                            },
                        ));
                    }
                    Some(_) => {}
                }
            }
            let b = |v: Option<Value>| v.map_or(Bound::Unbounded, Bound::Included);
            RestrictionKind::Range { from: b(f), until: b(u) }
        }
    };
    Ok(RowRestriction { column: column.clone(), kind })
}

// ---------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------

/// The approval documents of a directory: `*.toml`, not hidden, sorted by name.
fn approval_files(dir: &Path) -> Result<Vec<PathBuf>, ApprovalError> {
    let read_dir = |source| ApprovalError::ReadDir { dir: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".toml") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every approval document (`*.toml`, hidden files skipped) in `dir`.
/// A file that fails does not hide the others; approvals whose project id is
/// declared in more than one file are all refused.
pub fn load_dir(
    dir: &Path,
    defaults: &DisclosureDefaults,
    catalogue: Option<&CatalogueView>,
) -> (Vec<Approval>, Vec<ApprovalError>) {
    let files = match approval_files(dir) {
        Ok(f) => f,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut approvals = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|source| ApprovalError::Read { file: file.clone(), source })
            .and_then(|text| parse(&file, &text, defaults, catalogue));
        match parsed {
            Ok(a) => approvals.push(a),
            Err(e) => errors.push(e),
        }
    }
    let mut files_of: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for a in &approvals {
        files_of.entry(a.project.as_str()).or_default().push(&a.file);
    }
    let duplicated: BTreeSet<String> =
        files_of.iter().filter(|(_, f)| f.len() > 1).map(|(p, _)| (*p).to_owned()).collect();
    for (project, files) in files_of.iter().filter(|(_, f)| f.len() > 1) {
        for (i, file) in files.iter().enumerate() {
            let other = if i == 0 { files[1] } else { files[0] };
            errors.push(ApprovalError::Invalid {
                file: file.to_path_buf(),
                line: None,
                problem: Box::new(Problem::DuplicateProject {
                    project: (*project).to_owned(),
                    other: other.to_path_buf(),
                }),
            });
        }
    }
    approvals.retain(|a| !duplicated.contains(&a.project));
    (approvals, errors)
}

/// (file name, modification time, length) of every approval file.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> Result<Fingerprint, ApprovalError> {
    Ok(approval_files(dir)?
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect())
}

/// The approvals of a directory, reloaded whenever a file in it is added,
/// removed or changed (compared by name, modification time and length).
///
/// Fails closed: a document that no longer passes validation stops granting
/// anything (its previous version is not kept), and if the directory cannot be
/// read there are no approvals until it can.
#[derive(Debug)]
pub struct ApprovalStore {
    dir: PathBuf,
    defaults: DisclosureDefaults,
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    /// `None` forces a reload.
    fingerprint: Option<Fingerprint>,
    catalogue: Option<CatalogueView>,
    approvals: BTreeMap<String, Arc<Approval>>,
    problems: Vec<String>,
}

impl ApprovalStore {
    /// Loads the directory; fails only if it cannot be read. Invalid documents
    /// are listed by [`ApprovalStore::problems`].
    pub fn open(dir: &Path, defaults: DisclosureDefaults) -> Result<ApprovalStore, ApprovalError> {
        let store = ApprovalStore { dir: dir.to_owned(), defaults, state: Mutex::new(StoreState::default()) };
        store.refresh(&mut store.lock())?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The federation's disclosure defaults the documents are checked against.
    pub fn defaults(&self) -> &DisclosureDefaults {
        &self.defaults
    }

    /// Validates against the live catalogue from now on (and at once).
    pub fn set_catalogue(&self, catalogue: CatalogueView) {
        let mut state = self.lock();
        state.catalogue = Some(catalogue);
        state.fingerprint = None;
        // A directory that cannot be read is recorded in `problems` and left to the next call.
        let _ = self.refresh(&mut state);
    }

    /// The approval of `project`, reloading the directory first if it changed.
    /// `Ok(None)`: no valid approval with that id.
    pub fn get(&self, project: &str) -> Result<Option<Arc<Approval>>, ApprovalError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        Ok(state.approvals.get(project).cloned())
    }

    /// Every valid approval, by project id (reloading first if the directory changed).
    pub fn all(&self) -> Vec<Arc<Approval>> {
        let mut state = self.lock();
        let _ = self.refresh(&mut state);
        state.approvals.values().cloned().collect()
    }

    /// Why documents were refused at the last load, one message per document.
    pub fn problems(&self) -> Vec<String> {
        let mut state = self.lock();
        let _ = self.refresh(&mut state);
        state.problems.clone()
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        // Every update of the state is a single assignment; a panic elsewhere cannot leave it half-done.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn refresh(&self, state: &mut StoreState) -> Result<(), ApprovalError> {
        let current = match fingerprint(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                state.fingerprint = None;
                state.approvals.clear();
                state.problems = vec![e.to_string()];
                return Err(e);
            }
        };
        if state.fingerprint.as_ref() == Some(&current) {
            return Ok(());
        }
        let (approvals, errors) = load_dir(&self.dir, &self.defaults, state.catalogue.as_ref());
        state.approvals = approvals.into_iter().map(|a| (a.project.clone(), Arc::new(a))).collect();
        state.problems = errors.iter().map(ToString::to_string).collect();
        state.fingerprint = Some(current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic federation's catalogue (src/synth/schema.rs), `pnr` served as `person`.
    fn synth_catalogue() -> CatalogueView {
        let tables: &[(&str, &[(&str, &str)])] = &[
            (
                "hip.operations",
                &[
                    ("person", "utf8"),
                    ("op_id", "int64"),
                    ("op_date", "date32"),
                    ("hospital", "utf8"),
                    ("region", "utf8"),
                    ("side", "utf8"),
                    ("diagnosis", "utf8"),
                    ("fixation", "utf8"),
                    ("asa", "int32"),
                    ("bmi", "float64"),
                    ("reoperation", "boolean"),
                    ("reop_date", "date32"),
                ],
            ),
            (
                "hip.prom",
                &[
                    ("person", "utf8"),
                    ("op_id", "int64"),
                    ("survey", "utf8"),
                    ("survey_date", "date32"),
                    ("eq5d_index", "float64"),
                    ("pain_vas", "int32"),
                    ("satisfaction", "int32"),
                ],
            ),
            (
                "npr.inpatient",
                &[
                    ("person", "utf8"),
                    ("episode_id", "int64"),
                    ("admit_date", "date32"),
                    ("discharge_date", "date32"),
                    ("hospital", "utf8"),
                    ("region", "utf8"),
                    ("main_dx", "utf8"),
                    ("secondary_dx", "utf8"),
                    ("procedure", "utf8"),
                    ("length_of_stay", "int32"),
                ],
            ),
            (
                "lmr.dispensations",
                &[("person", "utf8"), ("disp_date", "date32"), ("atc", "utf8"), ("ddd", "float64"), ("region", "utf8")],
            ),
            (
                "dors.deaths",
                &[("person", "utf8"), ("death_date", "date32"), ("underlying_cause", "utf8"), ("region", "utf8")],
            ),
            (
                "pop.persons",
                &[
                    ("person", "utf8"),
                    ("birth_date", "date32"),
                    ("birth_year", "int32"),
                    ("sex", "utf8"),
                    ("region", "utf8"),
                    ("country_of_birth", "utf8"),
                    ("education", "utf8"),
                    ("income", "int64"),
                ],
            ),
        ];
        CatalogueView {
            tables: tables
                .iter()
                .map(|(t, cols)| {
                    let cols = cols
                        .iter()
                        .map(|(c, ty)| {
                            let identifying = matches!(*c, "person" | "birth_date");
                            ((*c).to_owned(), ColumnInfo { data_type: (*ty).to_owned(), identifying })
                        })
                        .collect();
                    ((*t).to_owned(), cols)
                })
                .collect(),
        }
    }

    const GOOD: &str = include_str!("../examples/hip-fixation.toml");

    fn parse_good(text: &str) -> Result<Approval, ApprovalError> {
        let cat = synth_catalogue();
        parse(Path::new("approvals/p.toml"), text, &DisclosureDefaults::default(), Some(&cat))
    }

    /// The error for `GOOD` with `from` replaced by `to` (which must occur in it).
    fn err(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "test edit {from:?} does not apply");
        parse_good(&GOOD.replacen(from, to, 1)).expect_err("must be refused").to_string()
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    /// The line of `GOOD` (1-based) on which `needle` first occurs.
    fn line_of(needle: &str) -> usize {
        GOOD.lines().position(|l| l.contains(needle)).expect("needle in GOOD") + 1
    }

    #[test]
    fn generalisations_are_checked() {
        let cols = r#"columns = ["person", "op_date", "fixation", "asa", "bmi", "reoperation", "hospital", "region"]"#;
        let line = line_of(cols);
        let with = |g: &str| format!("{cols}\ngeneralise = {{ {g} }}");
        let a = parse_good(&GOOD.replacen(cols, &with(r#"op_date = "month", fixation = "code3""#), 1)).expect("valid");
        let grant = a.grant("hip.operations").expect("granted");
        assert_eq!(grant.generalise.get("op_date"), Some(&Generalisation::Month));
        assert!(grant.generalises("fixation") && !grant.generalises("asa"));
        assert_eq!(
            err(cols, &with(r#"op_date = "week""#)),
            format!(
                "approvals/p.toml: line {}: table hip.operations: unknown generalisation \"week\" for op_date: expected \"year\", \"month\" (dates) or \"code3\" (codes)",
                line + 1
            )
        );
        assert_eq!(
            err(cols, &with(r#"side = "code3""#)),
            format!(
                "approvals/p.toml: line {}: table hip.operations: generalise names \"side\", which is not among the columns granted in that table",
                line + 1
            )
        );
        assert_eq!(
            err(cols, &with(r#"asa = "year""#)),
            format!(
                "approvals/p.toml: line {}: table hip.operations: generalisation year of asa needs a date32 column, not int32",
                line + 1
            )
        );
    }

    #[test]
    fn every_example_is_valid_against_the_synthetic_catalogue() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let cat = synth_catalogue();
        let (approvals, errors) = load_dir(&dir, &DisclosureDefaults::default(), Some(&cat));
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let mut ids: Vec<&str> = approvals.iter().map(|a| a.project.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["P-2024-017", "P-2025-003", "Q-hip-coverage-2026"]);
        let micro = approvals.iter().find(|a| a.project == "P-2025-003").expect("microdata example");
        assert!(micro.allows(OutputKind::PseudonymisedMicrodata) && micro.allows(OutputKind::Aggregate));
        assert!(micro.is_member("carol") && micro.is_member("erik"));
    }

    #[test]
    fn good_document_parses_with_effective_settings() {
        let a = parse_good(GOOD).expect("valid");
        assert_eq!(a.project, "P-2024-017");
        assert_eq!(a.file, Path::new("approvals/p.toml"));
        assert_eq!(a.ethics_authority, "Etikprövningsmyndigheten");
        assert_eq!(a.members, BTreeSet::from(["alice".to_owned(), "carol".to_owned()]));
        assert_eq!((a.valid_from, a.valid_until), (day(2024, 1, 1), day(2027, 12, 31)));
        assert_eq!(a.outputs, BTreeSet::from([OutputKind::Aggregate]));
        assert_eq!(
            a.disclosure,
            Disclosure {
                min_cell_persons: 10,
                round_counts_to: 5,
                dominance_n: 2,
                dominance_share: 0.80,
                allow_min_max: BTreeSet::from(["hip.operations.bmi".to_owned()]),
                perturbation: true,
                perturbation_max_deviation: 3,
                perturbation_variance: 1.5,
                magnitude_noise: 0.05,
            }
        );
        assert_eq!(
            a.disclosure.perturbation_params(),
            Some(PerturbationParams { max_deviation: 3, variance: 1.5, threshold: 10, magnitude_noise: 0.05 })
        );
        assert!(a.disclosure.allows_min_max("hip.operations", "bmi"));
        assert!(!a.disclosure.allows_min_max("hip.operations", "asa"));
        let ops = a.grant("hip.operations").expect("granted");
        assert_eq!((ops.register.as_str(), ops.table.as_str()), ("hip", "operations"));
        assert!(ops.has_column("person") && ops.has_column("fixation") && !ops.has_column("side"));
        assert_eq!(
            ops.rows,
            vec![
                RowRestriction {
                    column: "op_date".into(),
                    kind: RestrictionKind::Range {
                        from: Bound::Included(Value::Date(day(2010, 1, 1))),
                        until: Bound::Included(Value::Date(day(2019, 12, 31))),
                    },
                },
                RowRestriction {
                    column: "region".into(),
                    kind: RestrictionKind::In(vec![Value::Str("Skåne".into()), Value::Str("Stockholm".into())]),
                },
            ]
        );
        assert_eq!(a.grant("dors.deaths").expect("granted").rows, vec![]);
        assert!(a.grant("hip.prom").is_none());
        assert!(
            a.grant("hip").is_none() && a.grant("hipoperations").is_none() && a.grant("hip.operations.x").is_none()
        );
    }

    #[test]
    fn defaults_apply_without_a_disclosure_section() {
        let start = GOOD.find("[disclosure]").expect("section");
        let end = GOOD.find("[[tables]]").expect("tables");
        let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
        let a = parse_good(&text).expect("valid");
        let defaults = DisclosureDefaults {
            min_cell_persons: 5,
            dominance_n: 2,
            dominance_share: 0.85,
            perturbation: true,
            perturbation_max_deviation: 2,
            perturbation_variance: 1.0,
            magnitude_noise: 0.05,
        };
        assert_eq!(DisclosureDefaults::default(), defaults);
        assert_eq!(a.disclosure, Disclosure::from_defaults(&defaults));
        assert_eq!(a.disclosure.round_counts_to, 1);
        // A federation with stricter defaults makes the same document's settings looser.
        let strict = DisclosureDefaults { min_cell_persons: 11, ..DisclosureDefaults::default() };
        let e = parse(Path::new("p.toml"), GOOD, &strict, None).expect_err("looser").to_string();
        assert!(e.contains("disclosure.min_cell_persons = 10 is looser than the federation default 11"), "{e}");
    }

    #[test]
    fn syntax_unknown_field_and_wrong_type() {
        let e = err("title =", "titel =");
        assert!(e.starts_with("approvals/p.toml: line 5, column 1: unknown field `titel`"), "{e}");
        let e = err("round_counts_to = 5", "round_counts_to = \"5\"");
        assert!(e.starts_with(&format!("approvals/p.toml: line {}, column", line_of("round_counts_to"))), "{e}");
        assert!(e.contains("invalid type: string \"5\""), "{e}");
        let e = err("valid_from = 2024-01-01", "valid_from = 20240101");
        assert!(e.starts_with("approvals/p.toml: line 11, column 14: invalid type: integer"), "{e}");
        let e = err("project = \"P-2024-017\"", "project = \"P-2024-017");
        assert!(e.starts_with("approvals/p.toml: line 4, column"), "{e}");
        let e = err("ethics_reference = \"Dnr 2024-01234-01\"\n", "");
        assert!(e.contains("missing field `ethics_reference`"), "{e}");
    }

    #[test]
    fn project_people_and_text_fields() {
        assert_eq!(
            err("\"P-2024-017\"", "\"P 2024/017\""),
            "approvals/p.toml: line 4: project id \"P 2024/017\" is not valid: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        );
        assert!(err("\"P-2024-017\"", "\"-P\"").contains("is not valid"));
        assert_eq!(
            err("\"P-2024-017\"", "\"direct\""),
            "approvals/p.toml: line 4: project id \"direct\" is reserved for care providers' direct access to their own data; choose another id"
        );
        assert!(err("\"P-2024-017\"", "\"\"").contains("is not valid"));
        assert_eq!(
            err("principal_investigator = \"alice\"", "principal_investigator = \" \""),
            format!(
                "approvals/p.toml: line {}: principal_investigator is empty: name the principal investigator as in their certificate",
                line_of("principal_investigator")
            )
        );
        assert_eq!(
            err("members = [\"alice\", \"carol\"]", "members = [\"alice\", \"\"]"),
            format!("approvals/p.toml: line {}: members: entry 2 is empty", line_of("members ="))
        );
        assert_eq!(
            err("ethics_reference = \"Dnr 2024-01234-01\"", "ethics_reference = \"\""),
            "approvals/p.toml: line 6: ethics_reference is empty"
        );
        // Members may be left out: the principal investigator alone.
        let a = parse_good(&GOOD.replace("members = [\"alice\", \"carol\"]", "")).expect("valid");
        assert!(a.is_member("alice") && !a.is_member("carol") && !a.is_member("mallory"));
    }

    #[test]
    fn dates() {
        assert_eq!(
            err("valid_until = 2027-12-31", "valid_until = 2023-12-31"),
            "approvals/p.toml: line 12: dates reversed: valid_until 2023-12-31 is before valid_from 2024-01-01"
        );
        assert_eq!(
            err("valid_from = 2024-01-01", "valid_from = 2024-01-01T08:00:00"),
            "approvals/p.toml: line 11: valid_from must be a date such as 2024-01-01, not 2024-01-01T08:00:00"
        );
        // A one-day approval is fine.
        parse_good(&GOOD.replace("valid_until = 2027-12-31", "valid_until = 2024-01-01")).expect("one day");
    }

    #[test]
    fn outputs() {
        assert_eq!(
            err("outputs = [\"aggregate\"]", "outputs = [\"aggregate\", \"microdata\"]"),
            "approvals/p.toml: line 13: unknown output kind \"microdata\": expected \"aggregate\" or \"pseudonymised_microdata\""
        );
        assert_eq!(
            err("outputs = [\"aggregate\"]", "outputs = []"),
            "approvals/p.toml: line 13: outputs is empty: list at least one of \"aggregate\", \"pseudonymised_microdata\""
        );
        let a = parse_good(&GOOD.replace("[\"aggregate\"]", "[\"pseudonymised_microdata\"]")).expect("valid");
        assert!(a.allows(OutputKind::PseudonymisedMicrodata) && !a.allows(OutputKind::Aggregate));
    }

    #[test]
    fn disclosure_may_only_be_stricter() {
        let l = |s| line_of(s);
        assert_eq!(
            err("min_cell_persons = 10", "min_cell_persons = 3"),
            format!(
                "approvals/p.toml: line {}: disclosure.min_cell_persons = 3 is looser than the federation default 5; an approval may only be stricter (at least 5)",
                l("min_cell_persons")
            )
        );
        assert_eq!(
            err("dominance_n = 2", "dominance_n = 1"),
            format!(
                "approvals/p.toml: line {}: disclosure.dominance_n = 1 is looser than the federation default 2; an approval may only be stricter (at least 2)",
                l("dominance_n")
            )
        );
        assert_eq!(
            err("dominance_share = 0.80", "dominance_share = 0.9"),
            format!(
                "approvals/p.toml: line {}: disclosure.dominance_share = 0.9 is looser than the federation default 0.85; an approval may only be stricter (at most 0.85)",
                l("dominance_share")
            )
        );
        assert_eq!(
            err("round_counts_to = 5", "round_counts_to = 0"),
            format!(
                "approvals/p.toml: line {}: disclosure.round_counts_to = 0 is out of range: a whole number, at least 1 (1 means no rounding)",
                l("round_counts_to")
            )
        );
        assert!(err("dominance_share = 0.80", "dominance_share = 0").contains("out of range: a share above 0"));
        assert!(err("min_cell_persons = 10", "min_cell_persons = -10").contains("out of range"));
        assert!(err("min_cell_persons = 10", "min_cell_persons = 5000000000").contains("out of range"));
        // Equal to the default is allowed, stricter is allowed.
        let a = parse_good(
            &GOOD
                .replace("min_cell_persons = 10", "min_cell_persons = 5")
                .replace("dominance_n = 2", "dominance_n = 3"),
        )
        .expect("valid");
        assert_eq!((a.disclosure.min_cell_persons, a.disclosure.dominance_n), (5, 3));
    }

    #[test]
    fn perturbation_may_only_be_stricter() {
        let v = line_of("perturbation_variance");
        let d = line_of("perturbation_max_deviation");
        let with = |extra: &str| format!("perturbation_variance = 1.5\n{extra}");
        assert_eq!(
            err("perturbation_variance = 1.5", &with("perturbation = false")),
            format!(
                "approvals/p.toml: line {}: disclosure.perturbation = false is looser than the federation default true; an approval may only be stricter (leave it on)",
                v + 1
            )
        );
        assert_eq!(
            err("perturbation_max_deviation = 3", "perturbation_max_deviation = 1"),
            format!(
                "approvals/p.toml: line {d}: disclosure.perturbation_max_deviation = 1 is looser than the federation default 2; an approval may only be stricter (at least 2)"
            )
        );
        assert_eq!(
            err("perturbation_variance = 1.5", "perturbation_variance = 0.5"),
            format!(
                "approvals/p.toml: line {v}: disclosure.perturbation_variance = 0.5 is looser than the federation default 1; an approval may only be stricter (at least 1)"
            )
        );
        assert_eq!(
            err("perturbation_variance = 1.5", &with("magnitude_noise = 0.01")),
            format!(
                "approvals/p.toml: line {}: disclosure.magnitude_noise = 0.01 is looser than the federation default 0.05; an approval may only be stricter (at least 0.05)",
                v + 1
            )
        );
        assert_eq!(
            err("perturbation_max_deviation = 3", "perturbation_max_deviation = 0"),
            format!(
                "approvals/p.toml: line {d}: disclosure.perturbation_max_deviation = 0 is out of range: a whole number from 1 to 100"
            )
        );
        assert!(err("perturbation_max_deviation = 3", "perturbation_max_deviation = 101").contains("out of range"));
        assert_eq!(
            err("perturbation_variance = 1.5", "perturbation_variance = -1.0"),
            format!(
                "approvals/p.toml: line {v}: disclosure.perturbation_variance = -1 is out of range: a variance above 0"
            )
        );
        assert_eq!(
            err("perturbation_variance = 1.5", &with("magnitude_noise = 1.5")),
            format!(
                "approvals/p.toml: line {}: disclosure.magnitude_noise = 1.5 is out of range: a share of the largest contributor above 0 and at most 1",
                v + 1
            )
        );
        // The variance must fit the maximum deviation: V < D².
        assert_eq!(
            err("perturbation_variance = 1.5", "perturbation_variance = 9.0"),
            format!(
                "approvals/p.toml: line {v}: disclosure.perturbation_variance = 9 is out of range: it must be below the square of perturbation_max_deviation = 3, i.e. below 9; raise perturbation_max_deviation as well"
            )
        );
        let default_d = GOOD.replacen("perturbation_max_deviation = 3", "", 1).replacen(
            "perturbation_variance = 1.5",
            "perturbation_variance = 4.0",
            1,
        );
        let e = parse_good(&default_d).expect_err("V = D² with the default D").to_string();
        assert!(e.contains("perturbation_variance = 4 is out of range") && e.contains("= 2, i.e. below 4"), "{e}");
        assert!(err("perturbation_variance = 1.5", &with("perturbation = \"no\"")).contains("invalid type"));

        // Stricter is allowed; the approval's settings make the table's parameters.
        let a = parse_good(&GOOD.replacen("perturbation_variance = 1.5", &with("magnitude_noise = 0.1"), 1))
            .expect("stricter");
        assert_eq!(
            a.disclosure.perturbation_params(),
            Some(PerturbationParams { max_deviation: 3, variance: 1.5, threshold: 10, magnitude_noise: 0.1 })
        );
        crate::perturbation::PTable::build(&a.disclosure.perturbation_params().expect("on")).expect("a valid table");
        // A federation with perturbation off: an approval may switch it on, and is off otherwise.
        let off = DisclosureDefaults { perturbation: false, ..DisclosureDefaults::default() };
        let cat = synth_catalogue();
        let p = Path::new("p.toml");
        let a = parse(p, GOOD, &off, Some(&cat)).expect("valid");
        assert_eq!(a.disclosure.perturbation_params(), None);
        let a =
            parse(p, &GOOD.replacen("perturbation_variance = 1.5", &with("perturbation = true"), 1), &off, Some(&cat))
                .expect("switched on");
        assert!(a.disclosure.perturbation_params().is_some());
        // Without a [disclosure] section the federation's settings hold.
        assert_eq!(
            Disclosure::from_defaults(&DisclosureDefaults::default()).perturbation_params(),
            Some(PerturbationParams::default())
        );
    }

    #[test]
    fn allow_min_max_must_name_a_granted_column() {
        let l = line_of("allow_min_max");
        assert_eq!(
            err("[\"hip.operations.bmi\"]", "[\"hip.operations.side\"]"),
            format!(
                "approvals/p.toml: line {l}: allow_min_max names hip.operations.side, which is not a granted column"
            )
        );
        assert_eq!(
            err("[\"hip.operations.bmi\"]", "[\"hip.prom.pain_vas\"]"),
            format!("approvals/p.toml: line {l}: allow_min_max names hip.prom.pain_vas, which is not a granted column")
        );
        assert_eq!(
            err("[\"hip.operations.bmi\"]", "[\"bmi\"]"),
            format!("approvals/p.toml: line {l}: allow_min_max entry \"bmi\" must be written register.table.column")
        );
    }

    #[test]
    fn tables_and_columns_are_checked_against_the_catalogue() {
        let dors = line_of("table = \"dors.deaths\"");
        assert_eq!(
            err("table = \"dors.deaths\"", "table = \"dodsorsak.deaths\""),
            format!(
                "approvals/p.toml: line {dors}: unknown register \"dodsorsak\" in \"dodsorsak.deaths\" (registers in the federation: dors, hip, lmr, npr, pop)"
            )
        );
        assert_eq!(
            err("table = \"dors.deaths\"", "table = \"dors.causes\""),
            format!("approvals/p.toml: line {dors}: register dors has no table \"causes\" (its tables: deaths)")
        );
        assert_eq!(
            err("table = \"dors.deaths\"", "table = \"deaths\""),
            format!(
                "approvals/p.toml: line {dors}: table \"deaths\" must be written register.table, e.g. \"hip.operations\""
            )
        );
        assert_eq!(
            err("table = \"dors.deaths\"", "table = \"hip.operations\""),
            format!(
                "approvals/p.toml: line {dors}: table hip.operations is granted twice; merge the two [[tables]] entries"
            )
        );
        let cols = line_of("\"death_date\"");
        assert_eq!(
            err("\"death_date\"", "\"date_of_death\""),
            format!("approvals/p.toml: line {cols}: table dors.deaths has no column \"date_of_death\"")
        );
        assert_eq!(
            err("\"death_date\"", "\"underlying_cause\""),
            format!("approvals/p.toml: line {cols}: table dors.deaths: column \"underlying_cause\" is listed twice")
        );
        assert_eq!(
            err("columns = [\"person\", \"death_date\", \"underlying_cause\"]", "columns = []"),
            format!("approvals/p.toml: line {cols}: table dors.deaths: no columns granted")
        );
        let start = GOOD.find("[[tables]]").expect("tables");
        assert_eq!(
            parse_good(&GOOD[..start]).expect_err("no tables").to_string(),
            "approvals/p.toml: no [[tables]]: an approval must grant at least one table"
        );
        // Without a catalogue only the structure is checked.
        let unknown = GOOD.replace("dors.deaths", "dodsorsak.deaths");
        let a = parse(Path::new("p.toml"), &unknown, &DisclosureDefaults::default(), None).expect("structure only");
        assert!(a.grant("dodsorsak.deaths").is_some());
    }

    #[test]
    fn row_restrictions() {
        let region = line_of("column = \"region\"");
        assert_eq!(
            err("column = \"region\"", "column = \"side\""),
            format!(
                "approvals/p.toml: line {region}: table hip.operations: row restriction on \"side\", which is not among the columns granted in that table"
            )
        );
        let until = line_of("until = 2019-12-31");
        assert_eq!(
            err("until = 2019-12-31", "until = 2009-12-31"),
            format!(
                "approvals/p.toml: line {until}: table hip.operations: row restriction on op_date: from 2010-01-01 is after until 2009-12-31"
            )
        );
        assert_eq!(
            err("until = 2019-12-31", "until = 2019"),
            format!(
                "approvals/p.toml: line {until}: table hip.operations: row restriction on op_date: an integer does not match the column type date32"
            )
        );
        let from = line_of("from = 2010-01-01");
        assert_eq!(
            err("from = 2010-01-01", "from = \"2010-01-01\""),
            format!(
                "approvals/p.toml: line {from}: table hip.operations: row restriction on op_date: from and until must be dates or integers"
            )
        );
        let inl = line_of("in = [");
        assert_eq!(
            err("in = [\"Skåne\", \"Stockholm\"]", "in = [1, 2]"),
            format!(
                "approvals/p.toml: line {inl}: table hip.operations: row restriction on region: an integer does not match the column type utf8"
            )
        );
        assert_eq!(
            err("in = [\"Skåne\", \"Stockholm\"]", "in = [\"Skåne\", 2]"),
            format!(
                "approvals/p.toml: line {inl}: table hip.operations: row restriction on region: in values must all be of the same kind"
            )
        );
        assert_eq!(
            err("in = [\"Skåne\", \"Stockholm\"]", "in = []"),
            format!(
                "approvals/p.toml: line {region}: table hip.operations: row restriction on region: in is empty: no row would be visible"
            )
        );
        assert_eq!(
            err("in = [\"Skåne\", \"Stockholm\"]", "from = 1"),
            format!("approvals/p.toml: line {inl}: table hip.operations: row restriction on region: a date does not match the column type utf8")
                .replace("a date", "an integer")
        );
        assert!(
            err("in = [\"Skåne\", \"Stockholm\"]", "in = [\"Skåne\"]\n  from = 2010-01-01")
                .contains("give either from/until or in, not both")
        );
        assert!(err("in = [\"Skåne\", \"Stockholm\"]", "").contains("give from and/or until, or in"));
        // Integer ranges on integer columns; one-sided ranges.
        let asa =
            GOOD.replace("column = \"region\"\n  in = [\"Skåne\", \"Stockholm\"]", "column = \"asa\"\n  until = 3");
        let a = parse_good(&asa).expect("valid");
        let r = &a.grant("hip.operations").expect("granted").rows[1];
        assert_eq!(r.kind, RestrictionKind::Range { from: Bound::Unbounded, until: Bound::Included(Value::Int(3)) });
        assert!(r.admits(&Value::Int(3)) && r.admits(&Value::Int(-7)) && !r.admits(&Value::Int(4)));
        assert!(!r.admits(&Value::Str("3".into())), "other kinds never match");
        // Float columns cannot be restricted.
        let bmi =
            GOOD.replace("column = \"region\"\n  in = [\"Skåne\", \"Stockholm\"]", "column = \"bmi\"\n  from = 18");
        assert!(
            parse_good(&bmi)
                .expect_err("float")
                .to_string()
                .ends_with("an integer does not match the column type float64")
        );
    }

    #[test]
    fn row_restriction_admits() {
        let a = parse_good(GOOD).expect("valid");
        let rows = &a.grant("hip.operations").expect("granted").rows;
        assert!(rows[0].admits(&Value::Date(day(2010, 1, 1))) && rows[0].admits(&Value::Date(day(2019, 12, 31))));
        assert!(!rows[0].admits(&Value::Date(day(2009, 12, 31))) && !rows[0].admits(&Value::Date(day(2020, 1, 1))));
        assert!(rows[1].admits(&Value::Str("Skåne".into())) && !rows[1].admits(&Value::Str("Uppsala".into())));
    }

    #[test]
    fn validity_and_expiry() {
        let a = parse_good(GOOD).expect("valid");
        assert_eq!(a.validity(day(2023, 12, 31)), Validity::NotYetValid { from: day(2024, 1, 1) });
        assert_eq!(a.validity(day(2024, 1, 1)), Validity::Valid);
        assert_eq!(a.validity(day(2027, 12, 31)), Validity::Valid, "valid_until is inclusive");
        assert_eq!(a.validity(day(2028, 1, 1)), Validity::Expired { until: day(2027, 12, 31) });
        assert!(a.expires_within(day(2027, 12, 31), 1), "last day");
        assert!(!a.expires_within(day(2027, 12, 1), 30) && a.expires_within(day(2027, 12, 2), 30));
        assert!(!a.expires_within(day(2028, 1, 1), 30), "already expired");
        assert!(!a.expires_within(day(2023, 12, 31), 10000), "not yet valid");
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("samkor-approvals-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).expect("write approval");
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn load_dir_keeps_good_files_and_refuses_duplicates() {
        let dir = TempDir::new("load");
        dir.write("a.toml", GOOD);
        dir.write(
            "b.toml",
            &GOOD.replace("P-2024-017", "P-2024-018").replace("min_cell_persons = 10", "min_cell_persons = 1"),
        );
        dir.write("c.toml", &GOOD.replace("P-2024-017", "P-2024-019"));
        dir.write("d.toml", GOOD);
        dir.write("notes.txt", "not an approval");
        dir.write(".#a.toml", "editor lock file");
        let (approvals, errors) = load_dir(&dir.0, &DisclosureDefaults::default(), Some(&synth_catalogue()));
        assert_eq!(approvals.iter().map(|a| a.project.as_str()).collect::<Vec<_>>(), ["P-2024-019"]);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let (a, b, d) = (dir.0.join("a.toml"), dir.0.join("b.toml"), dir.0.join("d.toml"));
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with(&format!(
            "{}: line {}: disclosure.min_cell_persons = 1",
            b.display(),
            line_of("min_cell")
        )));
        assert_eq!(
            errors[1],
            format!(
                "{}: project \"P-2024-017\" is also declared in {}; neither file is used until one is changed",
                a.display(),
                d.display()
            )
        );
        assert_eq!(
            errors[2],
            format!(
                "{}: project \"P-2024-017\" is also declared in {}; neither file is used until one is changed",
                d.display(),
                a.display()
            )
        );
        let (none, errors) = load_dir(&dir.0.join("missing"), &DisclosureDefaults::default(), None);
        assert!(none.is_empty());
        assert!(errors[0].to_string().starts_with("cannot read approval directory "), "{}", errors[0]);
    }

    #[test]
    fn store_reloads_when_the_directory_changes() {
        let dir = TempDir::new("store");
        dir.write("a.toml", GOOD);
        let store = ApprovalStore::open(&dir.0, DisclosureDefaults::default()).expect("open");
        let a = store.get("P-2024-017").expect("readable").expect("present");
        assert_eq!(a.disclosure.min_cell_persons, 10);
        assert!(store.get("P-2024-018").expect("readable").is_none());
        assert!(store.problems().is_empty());

        // A new file appears.
        dir.write("b.toml", &GOOD.replace("P-2024-017", "P-2024-018"));
        assert!(store.get("P-2024-018").expect("readable").is_some());
        assert_eq!(store.all().len(), 2);

        // A changed file (different length) is reloaded; a broken one grants nothing and is reported.
        dir.write("a.toml", &GOOD.replace("min_cell_persons = 10", "min_cell_persons = 2"));
        assert!(store.get("P-2024-017").expect("readable").is_none(), "fails closed");
        let problems = store.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("a.toml: line") && problems[0].contains("looser"), "{problems:?}");
        dir.write("a.toml", &GOOD.replace("min_cell_persons = 10", "min_cell_persons = 12"));
        assert_eq!(store.get("P-2024-017").expect("readable").expect("back").disclosure.min_cell_persons, 12);
        assert!(store.problems().is_empty());

        // The live catalogue is applied once known.
        dir.write("b.toml", &GOOD.replace("P-2024-017", "P-2024-018").replace("dors.deaths", "dors.causes"));
        assert!(store.get("P-2024-018").expect("readable").is_some(), "no catalogue yet");
        store.set_catalogue(synth_catalogue());
        assert!(store.get("P-2024-018").expect("readable").is_none());
        assert!(store.problems()[0].contains("register dors has no table \"causes\""), "{:?}", store.problems());

        // A removed file takes its approval with it; an unreadable directory grants nothing.
        std::fs::remove_file(dir.0.join("b.toml")).expect("remove");
        assert!(store.problems().is_empty());
        assert_eq!(store.all().len(), 1);
        std::fs::remove_dir_all(&dir.0).expect("remove dir");
        assert!(store.get("P-2024-017").is_err());
        assert!(store.all().is_empty());
        assert!(store.problems()[0].starts_with("cannot read approval directory"));
    }
}
