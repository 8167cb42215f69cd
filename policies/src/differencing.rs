//! Near-identical populations across answers: flags for the audit log,
//! never refusals (a refusal that depends on earlier answers is itself an
//! answer about the data: Kenthapadi, Mishra & Nissim, "Simulatable auditing").
//!
//! ```text
//!   released cell ──▶ CellPrint { persons, key = Σ rk, min_rk, max_rk }   (hidden aggregates)
//!        │
//!        ▼
//!   Tracker::check(project, query id, k, prints)
//!        │  look up earlier prints of the project with the same (min_rk, max_rk)
//!        │  flag where the population differs (key or persons) and |n − n'| < k
//!        ▼
//!   Vec<Flag> ──▶ audit record (`differencing`) ──▶ `samkor audit report`
//! ```
//!
//! # When two cells describe near-identical populations
//!
//! Two populations A and B *differ by fewer than k persons* when their
//! symmetric difference `A △ B` has fewer than `k` persons: the difference of
//! two exact statistics over them is then a statistic of fewer than `k`
//! persons (the classic tracker: a mean, then the same mean with one person
//! filtered out). From the fingerprint of each cell:
//!
//! * **Same persons** give the same `(persons, key)`: a repeat, never a flag.
//! * **Different persons** almost surely give a different key (the key is a
//!   sum of uniform 32-bit record keys: equal keys for different sets happen
//!   with probability 2⁻³²). A different person count is a different set too.
//! * **Fewer than k apart.** `|n − n'| ≤ |A △ B|`, so `|n − n'| < k` is
//!   necessary. Equal counts with different keys are included: `A − x + y`
//!   gives `y − x` (a swap tracker).
//! * **Same extremes.** A population that loses or gains a few persons keeps
//!   its smallest and its largest record key unless one of those persons held
//!   it. If B has `n + m` persons and A is B without `m` of them, both
//!   extremes survive with probability `n(n−1) / ((n+m)(n+m−1))`: 0.82 for
//!   `n = 10, m = 1`, 0.98 for `n = 100`. Unrelated populations share both
//!   extremes only by sharing the two persons who hold them, which is rare.
//!
//! So a flag is raised for a new cell and an earlier one of the same project
//! when `min_rk` and `max_rk` are equal, `(persons, key)` differ, and
//! `|persons − persons'| < k`.
//!
//! What this does not establish: the print cannot measure `|A △ B|` itself, so
//! two heavily overlapping populations of similar size (a date range shifted
//! by a day over a large group) are flagged too; for two populations with
//! Jaccard similarity `J` and sizes fewer than `k` apart the chance of a flag
//! is about `J²`. Flags are leads for the reviewer, who reads both queries
//! (`samkor audit report` shows them side by side). Attacks that split one
//! difference over many different pairs of cells are only seen as many flags.
//!
//! The tracker holds, per project, the prints of the last answers (bounded by
//! answers and by cells) in memory and persists nothing: after a restart the
//! window starts empty. The audit record carries the flags, never record keys.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The fingerprint of one released cell, computed with it as hidden aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CellPrint {
    /// Distinct persons behind the cell.
    pub persons: u64,
    /// The cell key: the sum of their record keys modulo 2^32.
    pub key: u32,
    /// The smallest record key among them.
    pub min_rk: u32,
    /// The largest record key among them.
    pub max_rk: u32,
}

/// A cell of this answer whose population differs by fewer than k persons
/// from a cell of an earlier answer of the same project.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flag {
    /// Position of the cell among the prints given to [`Tracker::check`].
    pub cell: usize,
    /// Persons behind the cell of this answer.
    pub persons: u64,
    /// The query id of the earlier answer (the latest, if it was repeated).
    pub earlier_query_id: String,
    /// Persons behind the earlier cell.
    pub earlier_persons: u64,
}

/// How much a [`Tracker`] remembers, per project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// The last this many answers.
    pub window_answers: usize,
    /// At most this many cell prints in all (the oldest answers go first;
    /// one answer keeps at most this many of its prints).
    pub window_cells: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { window_answers: 10_000, window_cells: 1_000_000 }
    }
}

/// The recent answers of every project, for [`Tracker::check`]. Safe to
/// share between threads.
#[derive(Debug, Default)]
pub struct Tracker {
    config: TrackerConfig,
    projects: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Default)]
struct Window {
    /// Answers in the window, oldest first.
    answers: VecDeque<Answer>,
    /// Prints held in all.
    cells: usize,
    /// `(min_rk, max_rk)` → the distinct prints with those extremes.
    index: HashMap<(u32, u32), Vec<Stored>>,
    next_seq: u64,
}

#[derive(Debug)]
struct Answer {
    seq: u64,
    prints: Vec<CellPrint>,
}

#[derive(Debug)]
struct Stored {
    print: CellPrint,
    /// The latest answer that released it.
    seq: u64,
    query_id: Arc<str>,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker { config, projects: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> TrackerConfig {
        self.config
    }

    /// Compares the released cells of an answer with the project's earlier
    /// answers in the window, then adds them to the window. `k` is the
    /// project's `min_cell_persons`. Cells without persons are ignored.
    /// Returns one flag per pair of distinct populations found (the first
    /// cell of this answer with that population), in cell order.
    pub fn check(&self, project: &str, query_id: &str, k: u32, prints: &[CellPrint]) -> Vec<Flag> {
        let mut projects = self.projects.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = projects.entry(project.to_owned()).or_default();
        let k = u64::from(k);
        let mut flags = Vec::new();
        let mut seen: HashSet<(CellPrint, CellPrint)> = HashSet::new();
        for (cell, print) in prints.iter().enumerate().filter(|(_, p)| p.persons > 0) {
            let Some(bucket) = window.index.get(&(print.min_rk, print.max_rk)) else { continue };
            for earlier in bucket {
                let other = earlier.print;
                let same_population = other.key == print.key && other.persons == print.persons;
                if same_population || other.persons.abs_diff(print.persons) >= k || &*earlier.query_id == query_id {
                    continue;
                }
                if seen.insert((*print, other)) {
                    flags.push(Flag {
                        cell,
                        persons: print.persons,
                        earlier_query_id: earlier.query_id.to_string(),
                        earlier_persons: other.persons,
                    });
                }
            }
        }
        window.add(query_id, prints, &self.config);
        flags
    }

    /// Answers held in the window of `project`.
    pub fn answers_held(&self, project: &str) -> usize {
        let projects = self.projects.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        projects.get(project).map_or(0, |w| w.answers.len())
    }
}

impl Window {
    fn add(&mut self, query_id: &str, prints: &[CellPrint], config: &TrackerConfig) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let query_id: Arc<str> = Arc::from(query_id);
        let mut kept = Vec::new();
        let mut distinct = HashSet::new();
        for print in prints.iter().filter(|p| p.persons > 0) {
            if kept.len() >= config.window_cells {
                break;
            }
            if !distinct.insert(*print) {
                continue;
            }
            let bucket = self.index.entry((print.min_rk, print.max_rk)).or_default();
            match bucket.iter_mut().find(|s| s.print == *print) {
                // A repeat: the latest answer stands for it.
                Some(s) => {
                    s.seq = seq;
                    s.query_id = Arc::clone(&query_id);
                }
                None => bucket.push(Stored { print: *print, seq, query_id: Arc::clone(&query_id) }),
            }
            kept.push(*print);
        }
        self.cells += kept.len();
        self.answers.push_back(Answer { seq, prints: kept });
        while self.answers.len() > config.window_answers.max(1) || self.cells > config.window_cells {
            let Some(old) = self.answers.pop_front() else { break };
            self.cells -= old.prints.len();
            for print in &old.prints {
                let at = (print.min_rk, print.max_rk);
                if let Some(bucket) = self.index.get_mut(&at) {
                    // Only if no later answer released it again.
                    bucket.retain(|s| !(s.print == *print && s.seq == old.seq));
                    if bucket.is_empty() {
                        self.index.remove(&at);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perturbation::{cell_key, splitmix64};

    /// `n` persons' record keys, from a seed (distinct seeds, distinct persons).
    fn persons(seed: u64, n: u64) -> Vec<u32> {
        (0..n).map(|j| (splitmix64(seed.wrapping_mul(1_000_003).wrapping_add(j)) >> 32) as u32).collect()
    }

    fn print(rks: &[u32]) -> CellPrint {
        CellPrint {
            persons: rks.len() as u64,
            key: cell_key(rks.iter().copied()),
            min_rk: rks.iter().copied().min().unwrap_or(0),
            max_rk: rks.iter().copied().max().unwrap_or(0),
        }
    }

    /// The population without one person who holds neither extreme.
    fn minus_one(rks: &[u32]) -> Vec<u32> {
        let (lo, hi) = (rks.iter().min().copied(), rks.iter().max().copied());
        let drop = rks.iter().position(|r| Some(*r) != lo && Some(*r) != hi).expect("a middle person");
        rks.iter().enumerate().filter(|(i, _)| *i != drop).map(|(_, r)| *r).collect()
    }

    #[test]
    fn a_population_and_the_same_minus_one_person_are_flagged() {
        let t = Tracker::new(TrackerConfig::default());
        let hospital = persons(1, 40);
        let without = minus_one(&hospital);
        assert!(t.check("P-1", "q1", 5, &[print(&hospital)]).is_empty(), "nothing earlier");
        let flags = t.check("P-1", "q2", 5, &[print(&without)]);
        assert_eq!(flags, [Flag { cell: 0, persons: 39, earlier_query_id: "q1".into(), earlier_persons: 40 }]);
        // The other way round, and within a bigger answer: the cell index is the position given.
        let other = persons(2, 30);
        let flags = t.check("P-1", "q3", 5, &[print(&other), print(&hospital)]);
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!((flags[0].cell, flags[0].persons, flags[0].earlier_persons), (1, 40, 39));
        assert_eq!(flags[0].earlier_query_id, "q2");
        // Another project does not see them.
        assert!(t.check("P-2", "q4", 5, &[print(&without)]).is_empty());
        // A swap (one out, another in: the same size) is flagged too.
        let mut swapped = without.clone();
        swapped.push(persons(3, 1)[0].clamp(print(&hospital).min_rk + 1, print(&hospital).max_rk - 1));
        let flags = t.check("P-1", "q5", 5, &[print(&swapped)]);
        assert!(flags.iter().any(|f| f.persons == 40 && f.earlier_persons == 40), "{flags:?}");
    }

    #[test]
    fn k_or_more_persons_apart_is_not_flagged() {
        let t = Tracker::new(TrackerConfig::default());
        let all = persons(1, 40);
        let mut fewer = all.clone();
        for _ in 0..5 {
            fewer = minus_one(&fewer);
        }
        t.check("P-1", "q1", 5, &[print(&all)]);
        assert!(t.check("P-1", "q2", 5, &[print(&fewer)]).is_empty(), "5 apart with k = 5");
        let four = minus_one(&minus_one(&minus_one(&minus_one(&all))));
        assert_eq!(t.check("P-1", "q3", 5, &[print(&four)]).len(), 2, "4 from q1 and 1 from q2");
    }

    #[test]
    fn two_different_hospitals_are_not_flagged() {
        let t = Tracker::new(TrackerConfig::default());
        let a = persons(10, 40);
        let b = persons(11, 41);
        t.check("P-1", "q1", 5, &[print(&a)]);
        assert!(t.check("P-1", "q2", 5, &[print(&b)]).is_empty());
        // Many hospitals of similar size: none shares both extremes with another.
        let t = Tracker::new(TrackerConfig::default());
        let mut flags = 0;
        for h in 0..500 {
            flags += t.check("P-1", &format!("q{h}"), 5, &[print(&persons(100 + h, 20 + h % 3))]).len();
        }
        assert_eq!(flags, 0);
    }

    #[test]
    fn a_repeat_is_not_flagged_and_stands_for_the_earlier_answer() {
        let t = Tracker::new(TrackerConfig::default());
        let a = persons(1, 25);
        t.check("P-1", "q1", 5, &[print(&a)]);
        assert!(t.check("P-1", "q2", 5, &[print(&a), print(&a)]).is_empty());
        // A near-identical population afterwards names the latest repeat, once.
        let flags = t.check("P-1", "q3", 5, &[print(&minus_one(&a))]);
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!(flags[0].earlier_query_id, "q2");
        // The same answer checked twice (same query id) does not flag itself.
        assert!(t.check("P-1", "q3", 5, &[print(&a)]).is_empty());
        // Cells without persons are ignored.
        let empty = CellPrint { persons: 0, key: 0, min_rk: 0, max_rk: 0 };
        assert!(t.check("P-1", "q4", 5, &[empty]).is_empty());
        assert!(t.check("P-1", "q5", 5, &[CellPrint { persons: 1, ..empty }]).is_empty());
    }

    #[test]
    fn the_window_is_bounded() {
        let t = Tracker::new(TrackerConfig { window_answers: 3, window_cells: 100 });
        let a = persons(1, 30);
        t.check("P-1", "q0", 5, &[print(&a)]);
        for i in 1..=3 {
            t.check("P-1", &format!("filler{i}"), 5, &[print(&persons(100 + i, 30))]);
        }
        assert_eq!(t.answers_held("P-1"), 3);
        assert!(t.check("P-1", "q9", 5, &[print(&minus_one(&a))]).is_empty(), "q0 has left the window");
        // Bounded by cells too: an answer of 60 cells and one of 50 cannot both stay.
        let t = Tracker::new(TrackerConfig { window_answers: 100, window_cells: 100 });
        let big: Vec<CellPrint> = (0..60).map(|h| print(&persons(200 + h, 10))).collect();
        t.check("P-1", "big", 5, &big);
        let other: Vec<CellPrint> = (0..50).map(|h| print(&persons(300 + h, 10))).collect();
        t.check("P-1", "other", 5, &other);
        assert_eq!(t.answers_held("P-1"), 1);
        assert!(t.check("P-1", "late", 5, &[print(&minus_one(&persons(200, 10)))]).is_empty());
        assert_eq!(t.check("P-1", "late2", 5, &[print(&minus_one(&persons(300, 10)))]).len(), 1);
        // A repeat keeps a print alive after its first answer leaves.
        let t = Tracker::new(TrackerConfig { window_answers: 2, window_cells: 100 });
        t.check("P-1", "q1", 5, &[print(&a)]);
        t.check("P-1", "q2", 5, &[print(&a)]);
        t.check("P-1", "q3", 5, &[print(&persons(7, 30))]);
        let flags = t.check("P-1", "q4", 5, &[print(&minus_one(&a))]);
        assert_eq!(flags.iter().map(|f| f.earlier_query_id.as_str()).collect::<Vec<_>>(), ["q2"]);
    }

    #[test]
    fn detection_rate_of_one_person_removed_matches_the_formula() {
        // Over many populations of 10, removing a random person keeps both
        // extremes with probability 8/10 (the removed one is neither extreme).
        let t = Tracker::new(TrackerConfig::default());
        let (mut flagged, trials) = (0u64, 2000u64);
        for s in 0..trials {
            let pop = persons(10_000 + s, 10);
            let drop = (splitmix64(s) % 10) as usize;
            let without: Vec<u32> = pop.iter().enumerate().filter(|(i, _)| *i != drop).map(|(_, r)| *r).collect();
            t.check("P-1", &format!("a{s}"), 5, &[print(&pop)]);
            flagged += u64::from(!t.check("P-1", &format!("b{s}"), 5, &[print(&without)]).is_empty());
        }
        let rate = flagged as f64 / trials as f64;
        assert!((rate - 0.8).abs() < 0.04, "{rate}");
    }

    #[test]
    fn flags_serialize_without_record_keys() {
        let f = Flag { cell: 2, persons: 39, earlier_query_id: "q1".into(), earlier_persons: 40 };
        let json = serde_json::to_string(&f).expect("serialize");
        assert_eq!(json, r#"{"cell":2,"persons":39,"earlier_query_id":"q1","earlier_persons":40}"#);
        assert_eq!(serde_json::from_str::<Flag>(&json).expect("parse"), f);
    }
}
