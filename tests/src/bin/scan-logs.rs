//! `scan-logs <dir>`: fails when a log file the integration suite wrote (`JETFN_TEST_LOG_DIR`, one per function
//! process) holds a test secret, a URL with its password or an email address in clear. `tests/run.sh` runs it
//! after the suite. An empty or missing directory fails too: a scan of nothing would prove nothing.

use std::process::ExitCode;

use integration_tests::scan;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: scan-logs <dir holding the suite's *.log files>");
        return ExitCode::from(2);
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!("scan-logs: cannot read {dir}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (mut files, mut lines, mut found) = (0_usize, 0_usize, Vec::new());
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        files += 1;
        for (number, line) in text.lines().enumerate() {
            lines += 1;
            if let Some(what) = scan::find(line, scan::TEST_SECRETS) {
                found.push(format!("{}:{}: {what}", path.display(), number + 1));
            }
        }
    }
    if files == 0 {
        eprintln!("scan-logs: no log file in {dir}; was JETFN_TEST_LOG_DIR set for the suite?");
        return ExitCode::FAILURE;
    }
    if found.is_empty() {
        println!("scan-logs: {lines} lines in {files} files, no secret and no address in clear");
        return ExitCode::SUCCESS;
    }
    for finding in &found {
        eprintln!("{finding}");
    }
    eprintln!("scan-logs: {} findings in {files} files", found.len());
    ExitCode::FAILURE
}
