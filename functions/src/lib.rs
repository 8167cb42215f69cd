//! SQL functions that disclosure control adds to plans, registered in both
//! the coordinator's and every node's sessions so that a plan computes them
//! wherever its rows are (at the node when the pushdown sends them there).
//!
//! ```text
//!   node scan ─▶ samkor_record_key(person)      keyed 64-bit record key per person
//!            ─▶ samkor_persons(record key)      distinct persons + cell key, one pass
//!            ─▶ samkor_quantile(x, key, p, k)   a quantile as the mean of the values
//!                                               of at least k persons around its rank
//!            ─▶ samkor_companions(key, n, conditions…, |x|…)
//!                                               per condition the persons and cell key,
//!                                               per magnitude the n largest persons'
//!                                               totals (dominance), one state per group
//!            ─▶ samkor_moments(x)               count, Σx, Σx², least, largest, largest |x|
//! ```
//!
//! At a node, [`by_person::partition_persons`] splits the rows of a grouped
//! `samkor_companions` or `samkor_persons` by record key before its partial
//! aggregates, which then hand on summaries instead of lists of persons.
//!
//! None of them is for users: the coordinator refuses queries that name them
//! (`disclosure.internal_function`) and adds them itself.
//!
//! Users' functions ([`USER_FUNCTIONS`]): generalisations of a birth date that
//! disclosure control recognises (`age_band(birth_date, op_date, 5)`, …, in
//! `ages`), person-time, and confidence intervals of released counts (`intervals`).

mod ages;
pub mod by_person;
mod companions;
mod exact_sum;
mod intervals;
mod keyed;
mod moments;
mod persons;
mod persons_of_rows;
mod pseudonym_bytes;
mod quantile;
mod record_key;
mod siphash;

pub use ages::{
    AGE_BAND_FN, AGE_YEARS_FN, BIRTH_DECADE_FN, BIRTH_YEAR_FN, DAYS_BETWEEN_FN, GENERALISING_FUNCTIONS,
    YEARS_BETWEEN_FN, age, date_udfs,
};
pub use companions::{COMPANIONS_FN, MAX_CONDITIONS, MAX_MAGNITUDES, companions_udaf, field as companion_field};
pub use exact_sum::{EXACT_SUM_FN, exact_sum_udaf};
pub use intervals::{INTERVAL_FUNCTIONS, interval_udfs};
pub use moments::{MOMENT_FIELDS, MOMENTS_FN, moments_udaf};
pub use persons::{PERSONS_FN, PersonsCell, persons_udaf};
pub use persons_of_rows::{PERSONS_OF_ROWS_FN, persons_of_rows_udaf};
pub use pseudonym_bytes::{PSEUDONYM_BYTES, PSEUDONYM_BYTES_FN, pseudonym_bytes_udf};
pub use quantile::{QUANTILE_FN, quantile_udaf};
pub use record_key::{RECORD_KEY_FN, RecordKeySecret, record_key_udf};

/// Names of every function of this crate (users may not call them).
pub const INTERNAL_FUNCTIONS: &[&str] = &[
    RECORD_KEY_FN,
    PERSONS_FN,
    QUANTILE_FN,
    COMPANIONS_FN,
    MOMENTS_FN,
    PSEUDONYM_BYTES_FN,
    PERSONS_OF_ROWS_FN,
    EXACT_SUM_FN,
];

/// Registers the functions in a session. `secret` is the record-key secret
/// of the session's project: present at the nodes, absent at the
/// coordinator (where a record key cannot be computed and asking for one fails).
pub fn register(ctx: &datafusion::prelude::SessionContext, secret: Option<RecordKeySecret>) {
    ctx.register_udf(record_key_udf(secret));
    ctx.register_udf(pseudonym_bytes_udf());
    ctx.register_udaf(persons_udaf());
    ctx.register_udaf(quantile_udaf());
    ctx.register_udaf(companions_udaf());
    ctx.register_udaf(moments_udaf());
    ctx.register_udaf(exact_sum_udaf());
    register_user_functions(ctx);
}

/// Registers the functions users may call (the coordinator's release session needs only these).
pub fn register_user_functions(ctx: &datafusion::prelude::SessionContext) {
    for f in date_udfs().into_iter().chain(interval_udfs()) {
        ctx.register_udf(f);
    }
}

/// Names of the functions users may call.
pub const USER_FUNCTIONS: &[&str] =
    &[AGE_YEARS_FN, AGE_BAND_FN, BIRTH_YEAR_FN, BIRTH_DECADE_FN, YEARS_BETWEEN_FN, DAYS_BETWEEN_FN];
