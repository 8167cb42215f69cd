//! Statistical disclosure control of one aggregate answer: which cells are
//! withheld, and why. Pure: the coordinator computes, per cell, how many
//! distinct persons stand behind it (and the other facts below), hands them
//! here, and applies the decision to the answer.
//!
//! ```text
//!   facts per row and cell ──▶ primary (persons < k, complement < k, dominance)
//!                          ──▶ spread to cells computed from a withheld one
//!                          ──▶ secondary (margins of ROLLUP / CUBE / GROUPING SETS)
//!                          ──▶ keys of small groups: shown only if not revealing
//!                          ──▶ rounding of released counts
//! ```
//!
//! The algorithm is explained for reviewers in `docs/disclosure.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::approval::Disclosure;

/// Why a cell was withheld. The per-cell marks in an answer never say which
/// (a reader who knew which cells are primary would learn that they are small);
/// the counts per reason are reported for the whole answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Fewer than k persons stand behind the cell (or behind its whole row).
    Threshold,
    /// The persons outside a conditional count are fewer than k: the group
    /// total minus the cell would single them out.
    Complement,
    /// The largest n persons make up more than the allowed share of a sum.
    Dominance,
    /// A released margin and the other released cells would give the cell back.
    Secondary,
    /// The statistic gives the counts of the values in the cell (a share of
    /// an indicator, a mean of a two-valued column), and one of them is below
    /// k or zero: 0 % and 100 % tell every person's value.
    Class,
}

impl Reason {
    /// The stable name, in metadata and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Threshold => "threshold",
            Reason::Complement => "complement",
            Reason::Dominance => "dominance",
            Reason::Secondary => "secondary",
            Reason::Class => "class",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an output column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// A grouping key (possibly computed from one).
    Key,
    /// A statistic.
    Value(ValueColumn),
    /// A constant: no person behind it.
    Constant,
}

/// A statistic column of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueColumn {
    /// Additive (a count or a sum, copied unchanged to the output): margins are sums of their children.
    pub additive: Option<Additive>,
    /// The aggregates it is computed from (indices chosen by the caller): a
    /// withheld cell withholds every cell of its row computed from the same aggregate.
    pub depends_on: Vec<usize>,
}

/// How an additive column adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Additive {
    /// A count of rows or persons: rounded when the approval asks for it.
    Count,
    /// A sum of values.
    Sum,
}

/// The facts about one cell of a statistic column.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CellFacts {
    /// The value, for additive columns (unrounded).
    pub value: Option<f64>,
    /// Distinct persons behind the value (`None`: no person data behind it;
    /// `Some(0)`: person data, but nobody in this cell).
    pub persons: Option<u64>,
    /// Distinct persons in the group outside a conditional count or sum.
    pub complement: Option<u64>,
    /// The largest `n` persons' contribution and the total, for sums of magnitudes.
    pub dominance: Option<(f64, f64)>,
    /// For a statistic that determines the counts of the values in its cell
    /// (an indicator's share, a two-valued column's mean): the least of those
    /// counts; below k or zero withholds the cell.
    pub class: Option<u64>,
}

/// The facts about one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFacts {
    /// Distinct persons behind the row's existence (its group, and anything its
    /// presence depends on such as a HAVING clause).
    pub persons: Option<u64>,
    /// For grouping sets: the set of grouping keys aggregated away in this row
    /// (bit `j` set = key `j` is a margin).
    pub margin_mask: Option<u64>,
    /// The row's grouping keys as comparable text, in grouping order (`None` = null).
    pub keys: Vec<Option<String>>,
    /// The displayed value of each output column, for key visibility (`None` = null).
    pub shown: Vec<Option<String>>,
    /// One entry per output column; ignored for keys and constants.
    pub cells: Vec<CellFacts>,
}

/// The decision on one row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowDecision {
    /// Per output column, why it is withheld (`None`: released).
    pub withheld: Vec<Option<Reason>>,
    /// The row is below the threshold and its keys would reveal something:
    /// it is merged into the single "groups withheld" row.
    pub collapsed: bool,
}

/// The decision on a whole answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub rows: Vec<RowDecision>,
    /// Withheld cells per reason.
    pub counts: BTreeMap<Reason, u64>,
    /// Rows merged into the "groups withheld" row.
    pub collapsed: u64,
    /// Counts are rounded to a multiple of this (1: not rounded).
    pub round_to: u32,
}

impl Outcome {
    /// Withheld cells in all.
    pub fn withheld_cells(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Rounds a released count to the nearest multiple of `base` (halves up).
pub fn round_count(value: i64, base: u32) -> i64 {
    if base <= 1 {
        return value;
    }
    let b = i64::from(base);
    let r = value.rem_euclid(b);
    if r * 2 >= b { value - r + b } else { value - r }
}

fn small(persons: Option<u64>, k: u64) -> bool {
    matches!(persons, Some(n) if n > 0 && n < k)
}

/// Decides which cells of an answer are withheld.
pub fn decide(columns: &[Role], rows: &[RowFacts], rules: &Disclosure) -> Outcome {
    let k = u64::from(rules.min_cell_persons);
    let mut decisions: Vec<RowDecision> =
        rows.iter().map(|_| RowDecision { withheld: vec![None; columns.len()], collapsed: false }).collect();
    let mut row_small = vec![false; rows.len()];

    // Primary suppression.
    for (r, row) in rows.iter().enumerate() {
        row_small[r] = small(row.persons, k);
        for (c, role) in columns.iter().enumerate() {
            let Role::Value(_) = role else { continue };
            let facts = row.cells.get(c).copied().unwrap_or_default();
            let reason = if row_small[r] || small(facts.persons, k) {
                Some(Reason::Threshold)
            } else if small(facts.complement, k) {
                Some(Reason::Complement)
            } else if dominated(facts.dominance, rules) {
                Some(Reason::Dominance)
            } else if facts.class.is_some_and(|n| n < k) {
                Some(Reason::Class)
            } else {
                None
            };
            decisions[r].withheld[c] = reason;
        }
    }
    // Empty cells (no person behind them) are withheld: a zero next to a
    // withheld cell tells where the withheld persons are, and a zero from a
    // filter on one person tells about that person. Likewise, where a
    // conditional cell is withheld because few persons fall outside its
    // condition, the cells of that column with nobody outside are withheld:
    // otherwise the pattern shows which group holds the few.
    for (c, role) in columns.iter().enumerate() {
        let Role::Value(_) = role else { continue };
        let complement_small = decisions.iter().any(|d| d.withheld[c] == Some(Reason::Complement));
        for (r, row) in rows.iter().enumerate() {
            if decisions[r].withheld[c].is_some() {
                continue;
            }
            let facts = row.cells.get(c).copied().unwrap_or_default();
            if facts.persons == Some(0) {
                decisions[r].withheld[c] = Some(Reason::Threshold);
            } else if complement_small && facts.complement == Some(0) {
                decisions[r].withheld[c] = Some(Reason::Complement);
            }
        }
    }
    for d in decisions.iter_mut() {
        spread(columns, d, Reason::Threshold);
    }

    secondary(columns, rows, &mut decisions, k);

    // Keys of rows below the threshold are shown only where each key value
    // also stands in a released row of the same column: otherwise the key
    // itself (e.g. the diagnoses of a filtered-out single person) would leak.
    let mut released: Vec<HashSet<&str>> = vec![HashSet::new(); columns.len()];
    for (r, row) in rows.iter().enumerate() {
        if row_small[r] {
            continue;
        }
        for (c, role) in columns.iter().enumerate() {
            if matches!(role, Role::Key)
                && let Some(Some(v)) = row.shown.get(c)
            {
                released[c].insert(v.as_str());
            }
        }
    }
    let mut collapsed = 0;
    for (r, row) in rows.iter().enumerate() {
        if !row_small[r] {
            continue;
        }
        let reveals = columns.iter().enumerate().any(|(c, role)| {
            matches!(role, Role::Key) && matches!(row.shown.get(c), Some(Some(v)) if !released[c].contains(v.as_str()))
        });
        if reveals {
            decisions[r].collapsed = true;
            collapsed += 1;
        }
    }

    let mut counts = BTreeMap::new();
    for d in &decisions {
        for reason in d.withheld.iter().flatten() {
            *counts.entry(*reason).or_insert(0) += 1;
        }
    }
    Outcome { rows: decisions, counts, collapsed, round_to: rules.round_counts_to.max(1) }
}

fn dominated(dominance: Option<(f64, f64)>, rules: &Disclosure) -> bool {
    match dominance {
        Some((top, total)) if total > 0.0 => top / total > rules.dominance_share,
        _ => false,
    }
}

/// Withholds, in one row, every cell computed from an aggregate that a
/// withheld cell of the row is computed from.
fn spread(columns: &[Role], row: &mut RowDecision, reason: Reason) {
    loop {
        let mut withheld_aggs: HashSet<usize> = HashSet::new();
        for (c, role) in columns.iter().enumerate() {
            // A withheld aggregate withholds what is computed from it, not the
            // other inputs of a withheld computed cell.
            if let (Role::Value(v), Some(_)) = (role, row.withheld[c])
                && let [a] = v.depends_on.as_slice()
            {
                withheld_aggs.insert(*a);
            }
        }
        let mut changed = false;
        for (c, role) in columns.iter().enumerate() {
            if let Role::Value(v) = role
                && row.withheld[c].is_none()
                && v.depends_on.iter().any(|a| withheld_aggs.contains(a))
            {
                row.withheld[c] = Some(reason);
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// One additive relation of the answer: `parent = Σ children`, in one column.
#[derive(Debug)]
struct Equation {
    column: usize,
    parent: usize,
    children: Vec<usize>,
}

/// The margin equations of a grouping-sets answer: a row with keys `K`
/// aggregated away is the sum of the rows that aggregate away `K` minus one
/// key and agree with it on the others.
fn equations(columns: &[Role], rows: &[RowFacts]) -> Vec<Equation> {
    let additive: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Role::Value(ValueColumn { additive: Some(_), .. })))
        .map(|(c, _)| c)
        .collect();
    if additive.is_empty() {
        return Vec::new();
    }
    let nkeys = rows.first().map_or(0, |r| r.keys.len());
    fn visible(row: &RowFacts, mask: u64, nkeys: usize) -> Vec<Option<&str>> {
        (0..nkeys).map(|j| if mask & (1 << j) != 0 { None } else { row.keys[j].as_deref() }).collect()
    }
    // For a parent (mask m) and an aggregated key j: children have mask m - j
    // and agree on the keys visible in the parent.
    let mut by_mask: HashMap<u64, Vec<usize>> = HashMap::new();
    for (r, row) in rows.iter().enumerate() {
        if let Some(m) = row.margin_mask {
            by_mask.entry(m).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (p, parent) in rows.iter().enumerate() {
        let Some(mask) = parent.margin_mask else { continue };
        for j in 0..nkeys {
            if mask & (1 << j) == 0 {
                continue;
            }
            let child_mask = mask & !(1 << j);
            let Some(candidates) = by_mask.get(&child_mask) else { continue };
            let want = visible(parent, mask, nkeys);
            let children: Vec<usize> =
                candidates.iter().copied().filter(|&c| visible(&rows[c], mask, nkeys) == want).collect();
            if children.is_empty() {
                continue;
            }
            for &column in &additive {
                out.push(Equation { column, parent: p, children: children.clone() });
            }
        }
    }
    out
}

/// Secondary suppression: until no margin equation can give a withheld cell
/// back, withhold in each equation that has exactly one withheld cell (or
/// whose withheld counts add up to fewer than k persons) the released cell
/// with the smallest value.
fn secondary(columns: &[Role], rows: &[RowFacts], decisions: &mut [RowDecision], k: u64) {
    let eqs = equations(columns, rows);
    if eqs.is_empty() {
        return;
    }
    let value = |r: usize, c: usize| rows[r].cells.get(c).and_then(|f| f.value).unwrap_or(0.0);
    let mut guard = 0usize;
    let limit = rows.len() * columns.len() + 1;
    loop {
        let mut changed = false;
        for eq in &eqs {
            let members: Vec<usize> = std::iter::once(eq.parent).chain(eq.children.iter().copied()).collect();
            let withheld: Vec<usize> =
                members.iter().copied().filter(|&r| decisions[r].withheld[eq.column].is_some()).collect();
            if withheld.is_empty() {
                continue;
            }
            let exposed = if withheld.len() == 1 {
                true
            } else if decisions[eq.parent].withheld[eq.column].is_none()
                && matches!(columns[eq.column], Role::Value(ValueColumn { additive: Some(Additive::Count), .. }))
            {
                // The withheld children add up to parent − Σ released children.
                let released: f64 = eq
                    .children
                    .iter()
                    .filter(|&&r| decisions[r].withheld[eq.column].is_none())
                    .map(|&r| value(r, eq.column))
                    .sum();
                let hidden = value(eq.parent, eq.column) - released;
                hidden > 0.0 && hidden < k as f64
            } else {
                false
            };
            if !exposed {
                continue;
            }
            // Prefer a child (keeps totals), then the smallest value.
            let choice = eq
                .children
                .iter()
                .copied()
                .filter(|&r| decisions[r].withheld[eq.column].is_none())
                .min_by(|&a, &b| value(a, eq.column).abs().total_cmp(&value(b, eq.column).abs()))
                .or_else(|| (decisions[eq.parent].withheld[eq.column].is_none()).then_some(eq.parent));
            if let Some(r) = choice {
                decisions[r].withheld[eq.column] = Some(Reason::Secondary);
                spread(columns, &mut decisions[r], Reason::Secondary);
                changed = true;
            }
        }
        guard += 1;
        if !changed || guard > limit {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(k: u32) -> Disclosure {
        Disclosure {
            min_cell_persons: k,
            round_counts_to: 1,
            dominance_n: 2,
            dominance_share: 0.85,
            allow_min_max: Default::default(),
            ..Disclosure::from_defaults(&crate::approval::DisclosureDefaults::default())
        }
    }

    fn count_col(agg: usize) -> Role {
        Role::Value(ValueColumn { additive: Some(Additive::Count), depends_on: vec![agg] })
    }

    /// A row of a one- or two-key table whose single value is a count of persons.
    fn row(keys: &[Option<&str>], mask: Option<u64>, n: u64) -> RowFacts {
        let mut shown: Vec<Option<String>> = keys.iter().map(|k| k.map(str::to_owned)).collect();
        shown.push(Some(n.to_string()));
        let mut cells = vec![CellFacts::default(); keys.len()];
        cells.push(CellFacts { value: Some(n as f64), persons: Some(n), ..Default::default() });
        RowFacts {
            persons: Some(n),
            margin_mask: mask,
            keys: keys.iter().map(|k| k.map(str::to_owned)).collect(),
            shown,
            cells,
        }
    }

    fn withheld(o: &Outcome, col: usize) -> Vec<bool> {
        o.rows.iter().map(|r| r.withheld[col].is_some()).collect()
    }

    #[test]
    fn primary_withholds_small_cells_and_keeps_the_rest() {
        let cols = [Role::Key, count_col(0)];
        let rows = [row(&[Some("a")], None, 3), row(&[Some("b")], None, 12), row(&[Some("c")], None, 0)];
        let o = decide(&cols, &rows, &rules(5));
        // c counts nobody: withheld too, or it would tell where the persons are not.
        assert_eq!(withheld(&o, 1), [true, false, true]);
        assert_eq!(o.counts.get(&Reason::Threshold), Some(&2));
        // "a" appears in no released row: its key is not shown.
        assert!(o.rows[0].collapsed);
    }

    #[test]
    fn one_dimensional_table_with_total_gets_secondary_suppression() {
        // ROLLUP(region): three regions and the total.
        let cols = [Role::Key, count_col(0)];
        let rows = [
            row(&[Some("a")], Some(0), 3),
            row(&[Some("b")], Some(0), 12),
            row(&[Some("c")], Some(0), 20),
            row(&[None], Some(1), 35),
        ];
        let o = decide(&cols, &rows, &rules(5));
        // a is primary; b (the smallest other child) is secondary; total and c stay.
        assert_eq!(withheld(&o, 1), [true, true, false, false]);
        assert_eq!(o.rows[1].withheld[1], Some(Reason::Secondary));
    }

    #[test]
    fn two_withheld_children_that_add_up_to_a_small_count_are_not_enough() {
        let cols = [Role::Key, count_col(0)];
        let rows = [
            row(&[Some("a")], Some(0), 1),
            row(&[Some("b")], Some(0), 2),
            row(&[Some("c")], Some(0), 20),
            row(&[Some("d")], Some(0), 30),
            row(&[None], Some(1), 53),
        ];
        let o = decide(&cols, &rows, &rules(5));
        // a + b = 3 < 5 would be known from the total: c is withheld too.
        assert_eq!(withheld(&o, 1), [true, true, true, false, false]);
    }

    #[test]
    fn two_dimensional_table_with_margins_has_no_equation_with_one_unknown() {
        // CUBE(region, sex): keys (region, sex); bit 0 = region aggregated, bit 1 = sex.
        let cells = [("a", "F", 3), ("a", "M", 10), ("b", "F", 12), ("b", "M", 15), ("c", "F", 9), ("c", "M", 11)];
        let mut rows: Vec<RowFacts> = cells.iter().map(|(r, s, n)| row(&[Some(r), Some(s)], Some(0), *n)).collect();
        for region in ["a", "b", "c"] {
            let n: u64 = cells.iter().filter(|c| c.0 == region).map(|c| c.2).sum();
            rows.push(row(&[Some(region), None], Some(2), n));
        }
        for sex in ["F", "M"] {
            let n: u64 = cells.iter().filter(|c| c.1 == sex).map(|c| c.2).sum();
            rows.push(row(&[None, Some(sex)], Some(1), n));
        }
        let total: u64 = cells.iter().map(|c| c.2).sum();
        rows.push(row(&[None, None], Some(3), total));
        let cols = [Role::Key, Role::Key, count_col(0)];
        let o = decide(&cols, &rows, &rules(5));
        let w = withheld(&o, 2);
        assert!(w[0], "the small cell a/F is withheld");
        // Every equation has zero or at least two withheld cells.
        for eq in equations(&cols, &rows) {
            let n = std::iter::once(eq.parent).chain(eq.children.iter().copied()).filter(|&r| w[r]).count();
            assert_ne!(n, 1, "an equation with one unknown: parent {} children {:?}", eq.parent, eq.children);
        }
        // a/M (same row) and c/F (same column, smallest) carry the secondary suppression.
        assert!(w[1] && w[4], "{w:?}");
    }

    #[test]
    fn complement_and_dominance() {
        let cols =
            [Role::Key, count_col(0), Role::Value(ValueColumn { additive: Some(Additive::Sum), depends_on: vec![1] })];
        let mut r = row(&[Some("a")], None, 40);
        r.cells[1].complement = Some(2);
        r.cells.push(CellFacts {
            value: Some(1000.0),
            persons: Some(40),
            complement: None,
            dominance: Some((900.0, 1000.0)),
            class: None,
        });
        r.shown.push(Some("1000".into()));
        let o = decide(&cols, &[r], &rules(5));
        assert_eq!(o.rows[0].withheld, vec![None, Some(Reason::Complement), Some(Reason::Dominance)]);
    }

    #[test]
    fn a_withheld_aggregate_withholds_the_cells_computed_from_it() {
        let share = Role::Value(ValueColumn { additive: None, depends_on: vec![0, 1] });
        let cols = [Role::Key, count_col(0), count_col(1), share];
        let mut r = row(&[Some("a")], None, 40);
        r.cells[1].persons = Some(3);
        r.cells.push(CellFacts { value: Some(40.0), persons: Some(40), ..Default::default() });
        r.cells.push(CellFacts { value: None, persons: Some(40), ..Default::default() });
        r.shown.extend([Some("40".into()), Some("0.07".into())]);
        let o = decide(&cols, &[r], &rules(5));
        assert_eq!(o.rows[0].withheld, vec![None, Some(Reason::Threshold), None, Some(Reason::Threshold)]);
    }

    #[test]
    fn empty_cells_next_to_a_withheld_one_do_not_point_at_it() {
        let cols = [Role::Key, count_col(0), count_col(1)];
        let mut rows = vec![row(&[Some("a")], None, 40), row(&[Some("b")], None, 40), row(&[Some("c")], None, 40)];
        // Column 2: a conditional count that hits one person in a and nobody elsewhere.
        for (i, hits) in [1u64, 0, 0].into_iter().enumerate() {
            rows[i].cells.push(CellFacts {
                value: Some(hits as f64),
                persons: Some(hits),
                complement: Some(40 - hits),
                dominance: None,
                class: None,
            });
            rows[i].shown.push(Some(hits.to_string()));
        }
        let o = decide(&cols, &rows, &rules(5));
        assert_eq!(withheld(&o, 2), [true, true, true]);
        assert_eq!(withheld(&o, 1), [false, false, false]);
    }

    #[test]
    fn rounding_to_base() {
        assert_eq!(round_count(12, 5), 10);
        assert_eq!(round_count(13, 5), 15);
        assert_eq!(round_count(7, 1), 7);
        assert_eq!(round_count(0, 5), 0);
    }

    #[test]
    fn a_share_of_one_value_below_k_or_zero_is_withheld() {
        let roles = vec![Role::Key, Role::Value(ValueColumn { additive: None, depends_on: vec![0] })];
        let rows: Vec<RowFacts> = [Some(40), Some(3), Some(0)]
            .iter()
            .enumerate()
            .map(|(i, class)| RowFacts {
                persons: Some(40),
                margin_mask: None,
                keys: vec![Some(format!("h{i}"))],
                shown: vec![Some(format!("h{i}")), None],
                cells: vec![CellFacts::default(), CellFacts { persons: Some(40), class: *class, ..Default::default() }],
            })
            .collect();
        let outcome =
            decide(&roles, &rows, &Disclosure::from_defaults(&crate::approval::DisclosureDefaults::default()));
        assert_eq!(outcome.rows[0].withheld[1], None);
        assert_eq!(outcome.rows[1].withheld[1], Some(Reason::Class));
        assert_eq!(outcome.rows[2].withheld[1], Some(Reason::Class));
    }
}
