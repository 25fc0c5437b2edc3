//! Snapshot tests of rendered emails: every email in every locale is committed as its subject, HTML and text,
//! so a template or wording change shows up in review as a diff. `UPDATE_SNAPSHOTS=1 cargo test` rewrites them.
//! Also the checks every email must pass whatever its context ([`assert_well_formed`]), for the functions' tests
//! of their own templates.

use std::path::Path;

use events::Locale;

use crate::Rendered;

/// Text a customer controls: put it in a field the bodies show, then check the email with
/// [`assert_well_formed`]`(.., true)`.
pub const INJECTED: &str = "<b>Ada</b>";

/// [`INJECTED`] as the HTML part must show it.
pub const ESCAPED: &str = "&lt;b&gt;Ada&lt;&#x2f;b&gt;";

/// Checks what holds for every email in every context: a non-empty one-line subject, the locale's `<html lang>`,
/// customer text escaped in the HTML (no raw `<b>` or `<i>`), no `none` printed for an absent optional field, no
/// template syntax left over, no tag in the text part, and the footer. With `injected`, [`INJECTED`] is in a field
/// the bodies show, so it must appear escaped in the HTML and verbatim in the text.
///
/// `at` names the email and the sample in the failure message.
///
/// # Panics
/// When a check fails: this is a test assertion.
pub fn assert_well_formed(at: &str, rendered: &Rendered, locale: Locale, injected: bool) {
    let r = rendered;
    assert!(!r.subject.is_empty(), "{at}: empty subject");
    assert!(!r.subject.contains(['\n', '\r']), "{at}: {:?}", r.subject);
    assert!(
        !r.html.contains("<b>"),
        "{at}: raw <b> in the HTML\n{}",
        r.html
    );
    assert!(
        !r.html.contains("<i>"),
        "{at}: raw <i> in the HTML\n{}",
        r.html
    );
    assert!(
        r.html
            .contains(&format!(r#"<html lang="{}">"#, locale.as_str())),
        "{at}"
    );
    if injected {
        assert!(r.html.contains(ESCAPED), "{at}\n{}", r.html);
        assert!(r.text.contains(INJECTED), "{at}\n{}", r.text);
    }
    // A none printed as text, or a tag left in the text part, is a template bug.
    for body in [&r.subject, &r.html, &r.text] {
        // (`text-decoration:none` is CSS.)
        let words = body.replace(":none", "").to_lowercase();
        assert!(!words.contains("none"), "{at}: none rendered\n{body}");
        assert!(!body.contains("{{") && !body.contains("{%"), "{at}\n{body}");
    }
    assert!(
        !r.text.contains("<p") && !r.text.contains("<a "),
        "{at}\n{}",
        r.text
    );
    assert!(r.text.contains("jetfn"), "{at}: footer missing\n{}", r.text);
}

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
