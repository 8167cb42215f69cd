//! `samkor policy check DIR [--federation FEDDIR]`: validates a directory of
//! project approvals, optionally against the tables and columns that the
//! nodes of a federation serve, and reports them in one line each.

use std::path::Path;

use chrono::NaiveDate;
use samkor_node::NodeConfig;
use samkor_policies::approval::{self, Approval, CatalogueView, ColumnInfo, DisclosureDefaults, Validity};

/// The catalogue served by the nodes of a federation directory: every
/// subdirectory holding a `node.toml` is one register. Tables are keyed
/// `register.table`; each table's person column appears as `person` (as the
/// node serves it: the project pseudonym) and is identifying.
pub fn catalogue_from_node_configs(fed: &Path) -> Result<CatalogueView, String> {
    let entries =
        std::fs::read_dir(fed).map_err(|e| format!("cannot read federation directory {}: {e}", fed.display()))?;
    let mut configs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read federation directory {}: {e}", fed.display()))?;
        let node_toml = entry.path().join("node.toml");
        if node_toml.is_file() {
            configs.push(node_toml);
        }
    }
    if configs.is_empty() {
        return Err(format!("no node configs (*/node.toml) in federation directory {}", fed.display()));
    }
    configs.sort();
    let mut view = CatalogueView::default();
    for path in configs {
        let config = NodeConfig::load(&path).map_err(|e| e.to_string())?;
        for t in &config.tables {
            let key = format!("{}.{}", config.node.register, t.name);
            let columns = t
                .columns
                .iter()
                .map(|c| {
                    let person = t.is_person(c);
                    let name = t.exposed_name(c).to_owned();
                    (
                        name,
                        ColumnInfo { data_type: c.data_type.name().to_owned(), identifying: c.identifying || person },
                    )
                })
                .collect();
            if view.tables.insert(key.clone(), columns).is_some() {
                return Err(format!(
                    "table {key} is served by two nodes in {} (second: {})",
                    fed.display(),
                    path.display()
                ));
            }
        }
    }
    Ok(view)
}

/// Loads every approval in `dir`, checked against the catalogue of
/// `federation` if given. `Ok`: a report, one line per approval; `Err`: every
/// problem found, one per line.
pub fn check(dir: &Path, federation: Option<&Path>) -> Result<String, String> {
    check_on(dir, federation, chrono::Local::now().date_naive())
}

/// [`check`] as of `today` (which only affects the notes on expiry).
fn check_on(dir: &Path, federation: Option<&Path>, today: NaiveDate) -> Result<String, String> {
    let catalogue = federation.map(catalogue_from_node_configs).transpose()?;
    let (mut approvals, errors) = approval::load_dir(dir, &DisclosureDefaults::default(), catalogue.as_ref());
    if !errors.is_empty() {
        return Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
    if approvals.is_empty() {
        return Err(format!("no approval documents (*.toml) in {}", dir.display()));
    }
    approvals.sort_by(|a, b| a.project.cmp(&b.project));
    let against = match (federation, &catalogue) {
        (Some(fed), Some(cat)) => format!("checked against {} ({} tables)", fed.display(), cat.tables.len()),
        _ => "structure only: give --federation to check registers, tables and columns".to_owned(),
    };
    let plural = if approvals.len() == 1 { "" } else { "s" };
    let mut report = format!("{} approval{plural} in {}, {against}\n", approvals.len(), dir.display());
    for a in &approvals {
        report.push_str(&summary_line(a, today));
        report.push('\n');
    }
    Ok(report)
}

fn summary_line(a: &Approval, today: NaiveDate) -> String {
    let status = match a.validity(today) {
        Validity::NotYetValid { .. } => " (not yet valid)",
        Validity::Expired { .. } => " (expired)",
        Validity::Valid if a.expires_within(today, 90) => " (expires within 90 days)",
        Validity::Valid => "",
    };
    let outputs = a.outputs.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ");
    let tables = a.tables.iter().map(|t| t.qualified_name()).collect::<Vec<_>>().join(", ");
    format!(
        "{}: {} | valid {} to {}{status} | {outputs} | tables: {tables}",
        a.project, a.title, a.valid_from, a.valid_until
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIP_NODE: &str = r#"
[node]
register = "hip"
holder = "Hip register"
listen = "127.0.0.1:0"
pseudonym_key_file = "../federation.key"
opt_out_file = "optout.txt"
audit_log = "audit.jsonl"

[tls]
cert = "c.pem"
key = "k.pem"
ca = "ca.pem"

[[tables]]
name = "operations"
format = "parquet"
path = "operations/*.parquet"
person_column = "pnr"
  [[tables.columns]]
  name = "pnr"
  type = "utf8"
  identifying = true
  [[tables.columns]]
  name = "op_date"
  type = "date32"
  [[tables.columns]]
  name = "region"
  type = "utf8"
"#;

    const APPROVAL: &str = r#"
project = "P-1"
title = "Operations by region"
ethics_reference = "Dnr 1"
ethics_authority = "Etikprövningsmyndigheten"
principal_investigator = "alice"
purpose = "Count operations by region."
valid_from = 2024-01-01
valid_until = 2026-12-31
outputs = ["aggregate"]

[[tables]]
table = "hip.operations"
columns = ["person", "op_date", "region"]
  [[tables.rows]]
  column = "op_date"
  from = 2010-01-01
"#;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
        std::fs::write(path, text).expect("write");
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("date")
    }

    #[test]
    fn catalogue_renames_the_person_column() {
        let fed = tempfile::tempdir().expect("tempdir");
        write(&fed.path().join("hip/node.toml"), HIP_NODE);
        std::fs::create_dir(fed.path().join("certs")).expect("a directory without node.toml is skipped");
        let cat = catalogue_from_node_configs(fed.path()).expect("catalogue");
        let ops = &cat.tables["hip.operations"];
        assert_eq!(ops.keys().map(String::as_str).collect::<Vec<_>>(), ["op_date", "person", "region"]);
        assert_eq!(ops["person"], ColumnInfo { data_type: "utf8".into(), identifying: true });
        assert_eq!(ops["op_date"], ColumnInfo { data_type: "date32".into(), identifying: false });

        let empty = tempfile::tempdir().expect("tempdir");
        let e = catalogue_from_node_configs(empty.path()).expect_err("no nodes");
        assert!(e.starts_with("no node configs (*/node.toml) in federation directory"), "{e}");
        write(&empty.path().join("hip/node.toml"), &HIP_NODE.replace("holder", "owner"));
        let e = catalogue_from_node_configs(empty.path()).expect_err("bad node config");
        assert!(e.contains("hip/node.toml") && e.contains("unknown field `owner`"), "{e}");
    }

    #[test]
    fn check_reports_approvals_or_every_error() {
        let fed = tempfile::tempdir().expect("tempdir");
        write(&fed.path().join("hip/node.toml"), HIP_NODE);
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("p1.toml"), APPROVAL);

        let report = check_on(dir.path(), Some(fed.path()), day(2026, 11, 1)).expect("valid");
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            format!("1 approval in {}, checked against {} (1 tables)", dir.path().display(), fed.path().display())
        );
        assert_eq!(
            lines[1],
            "P-1: Operations by region | valid 2024-01-01 to 2026-12-31 (expires within 90 days) | aggregate | tables: hip.operations"
        );
        let report = check_on(dir.path(), None, day(2027, 1, 1)).expect("valid");
        assert!(report.contains("structure only") && report.contains("(expired)"), "{report}");

        write(&dir.path().join("p2.toml"), &APPROVAL.replace("P-1", "P-2").replace("\"region\"]", "\"side\"]"));
        write(&dir.path().join("p3.toml"), &APPROVAL.replace("P-1", "P-3").replace("hip.operations", "hip.prom"));
        let errors = check_on(dir.path(), Some(fed.path()), day(2025, 1, 1)).expect_err("two bad files");
        let errors: Vec<&str> = errors.lines().collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0],
            format!("{}: line 14: table hip.operations has no column \"side\"", dir.path().join("p2.toml").display())
        );
        assert_eq!(
            errors[1],
            format!(
                "{}: line 13: register hip has no table \"prom\" (its tables: operations)",
                dir.path().join("p3.toml").display()
            )
        );
        // Without the federation only the structure is checked: all three pass.
        assert_eq!(check_on(dir.path(), None, day(2025, 1, 1)).expect("structure").lines().count(), 4);

        let empty = tempfile::tempdir().expect("tempdir");
        assert!(check(empty.path(), None).expect_err("empty").starts_with("no approval documents"));
    }

    #[test]
    fn examples_pass_against_their_own_node_configs() {
        // The example approvals name only tables and columns of the synthetic federation.
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
        let report = check(&examples, None).expect("examples are valid");
        assert!(report.starts_with("3 approvals in "), "{report}");
    }
}
