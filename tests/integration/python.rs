//! The Python example of `docs/` against a real federation, through the ADBC
//! Flight SQL driver. Runs where the driver is installed (`.ci/run` installs it);
//! elsewhere it says so and passes.

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_adbc_example_reads_a_frame() {
    let python = std::env::var("SAMKOR_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python).args(["-c", "import adbc_driver_flightsql, pandas"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: adbc_driver_flightsql/pandas not installed for {python} (pip install adbc-driver-flightsql pyarrow pandas)"
        );
        assert!(std::env::var_os("CI").is_none(), "CI must run the Python example: .ci/run installs its packages");
        return;
    }
    let fed = common::federation().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/python_example.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(fed.coordinator_addr())
        .arg(common::synth_dir().join("certs"))
        .arg("P-python")
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Stockholm") && stdout.contains("operations"), "{stdout}");
    assert!(stdout.contains("disclosure control: at least 5 persons per cell"), "the summary reaches Python: {stdout}");
    assert!(stdout.contains("hip.operations") && stdout.contains("pop.persons"), "{stdout}");
    assert!(stdout.contains("Intercept") && stdout.contains("bmi"), "the model's table reaches Python: {stdout}");
    fed.shutdown().await;
}
