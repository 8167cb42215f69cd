//! The cell-key method at release: released counts and magnitudes get the
//! noise their cell's key selects from the approval's perturbation table
//! (`samkor_policies::perturbation`); means, shares and spreads are computed
//! from perturbed parts. Decisions (threshold, complement, dominance) were
//! taken on the true values before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use samkor_policies::approval::Approval;
use samkor_policies::perturbation::{PTable, PerturbationParams};

/// The noise of one answer: off, or a perturbation table.
#[derive(Debug, Clone)]
pub(super) struct Noise {
    table: Option<Arc<PTable>>,
}

/// Built tables by parameters (a handful of distinct settings per federation).
fn tables() -> &'static Mutex<HashMap<String, Arc<PTable>>> {
    static TABLES: OnceLock<Mutex<HashMap<String, Arc<PTable>>>> = OnceLock::new();
    TABLES.get_or_init(Mutex::default)
}

impl Noise {
    /// The approval's perturbation (its settings were validated at load, so
    /// the table builds; a table that does not is an error, not silence).
    pub(super) fn for_approval(approval: &Approval) -> datafusion::common::Result<Noise> {
        let Some(params) = approval.disclosure.perturbation_params() else {
            return Ok(Noise { table: None });
        };
        Ok(Noise { table: Some(table(&params)?) })
    }

    pub(super) fn on(&self) -> bool {
        self.table.is_some()
    }

    /// A released count.
    pub(super) fn count(&self, value: f64, key: u32) -> f64 {
        match &self.table {
            Some(t) if value >= 0.0 && value.fract() == 0.0 => t.perturb_count(value as u64, key) as f64,
            _ => value,
        }
    }

    /// A released magnitude: noise scaled to the largest contributor.
    pub(super) fn magnitude(&self, value: f64, largest: f64, key: u32, stream: u32) -> f64 {
        match &self.table {
            Some(t) => t.perturb_magnitude(value, largest, key, stream),
            None => value,
        }
    }
}

fn table(params: &PerturbationParams) -> datafusion::common::Result<Arc<PTable>> {
    let id = format!("{params:?}");
    let mut cache = tables().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = cache.get(&id) {
        return Ok(t.clone());
    }
    let t = Arc::new(PTable::build(params).map_err(|e| {
        datafusion::common::DataFusionError::Configuration(format!("the approval's perturbation settings: {e}"))
    })?);
    cache.insert(id, t.clone());
    Ok(t)
}
