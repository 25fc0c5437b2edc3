//! Snapshot tests of rendered emails: every email in every locale is committed as its subject, HTML and text,
//! so a template or wording change shows up in review as a diff. `UPDATE_SNAPSHOTS=1 cargo test` rewrites them.

use std::path::Path;

use crate::Rendered;

/// Compares `rendered` with `<dir>/<name>.subject.txt`, `.html` and `.txt`, or writes them when
/// `UPDATE_SNAPSHOTS=1`.
///
/// # Panics
/// When a file is missing or differs: this is a test assertion.
pub fn assert_snapshot(dir: &Path, name: &str, rendered: &Rendered) {
    let update = std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|value| value == "1");
    for (extension, actual) in [
        ("subject.txt", &rendered.subject),
        ("html", &rendered.html),
        ("txt", &rendered.text),
    ] {
        let path = dir.join(format!("{name}.{extension}"));
        if update {
            std::fs::create_dir_all(dir).expect("create the snapshot folder");
            std::fs::write(&path, actual).expect("write the snapshot");
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "no snapshot {}: run `UPDATE_SNAPSHOTS=1 cargo test` and review it",
                path.display()
            )
        });
        assert!(
            &expected == actual,
            "{} differs from the rendered email; if the change is intended, run `UPDATE_SNAPSHOTS=1 cargo test` \
             and review the diff.\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}
