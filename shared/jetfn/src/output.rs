//! How listings print: aligned columns sized to their contents (comfy-table, no borders, so the output reads and
//! greps like a plain listing), or JSON with `--json`.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// `--json`, for commands that take nothing else.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A table with these headers, columns as wide as their widest cell.
pub(crate) fn table(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Right-aligns the numeric columns (by index).
pub(crate) fn align_right(table: &mut Table, columns: &[usize]) {
    for index in columns {
        if let Some(column) = table.column_mut(*index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Pretty JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A duration as a person scans it in a column: its two largest units (`400d`, `2d 3h`, `5m 12s`). humantime's
/// own format spells every unit down to the second, in 30.44-day months (`1year 1month 4days 7h 26m 24s`).
pub(crate) fn age(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days >= 10 || (days > 0 && hours == 0) {
        format!("{days}d")
    } else if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Prints a table without the padding it leaves at each line's end.
pub(crate) fn print_table(table: &Table) {
    for line in table.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// A time given as RFC 3339, or as a duration from now (`30m`: 30 minutes from now when `ahead`, ago otherwise).
pub(crate) fn parse_time(
    flag: &str,
    value: &str,
    ahead: bool,
) -> anyhow::Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(at);
    }
    let Ok(delta) = humantime::parse_duration(value) else {
        anyhow::bail!(
            "{flag} {value:?} is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor a duration (90s, 30m, 2h, 1day)"
        );
    };
    let delta = time::Duration::try_from(delta)
        .map_err(|_| anyhow::anyhow!("{flag} {value:?}: too long"))?;
    let now = time::OffsetDateTime::now_utc();
    let at = if ahead {
        now.checked_add(delta)
    } else {
        now.checked_sub(delta)
    };
    at.ok_or_else(|| anyhow::anyhow!("{flag} {value:?}: past the calendar's end"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_longest_name() {
        let mut table = table(&["stream", "function", "waiting"]);
        table.add_row(vec!["EVENTS", "a-very-long-function-name-indeed", "1"]);
        table.add_row(vec!["DLQ", "x", "12345"]);
        align_right(&mut table, &[2]);
        let text = table.to_string();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[1], "a-very"), column(lines[2], "x"), "{text}");
        assert_eq!(
            column(lines[1], "1") + 1,
            column(lines[2], "12345") + 5,
            "numbers end in one column:\n{text}"
        );
    }

    #[test]
    fn ages_show_their_two_largest_units() {
        assert_eq!(age(400 * 86_400 + 3600), "400d");
        assert_eq!(age(2 * 86_400 + 3 * 3600 + 59), "2d 3h");
        assert_eq!(age(3 * 3600 + 5 * 60 + 9), "3h 5m");
        assert_eq!(age(5 * 60 + 12), "5m 12s");
        assert_eq!(age(0), "0s");
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_from_now() {
        let at = parse_time("--until", "2030-01-01T00:00:00Z", true).unwrap();
        assert_eq!(at.year(), 2030);
        let later = parse_time("--until", "30m", true).unwrap();
        assert!(later > time::OffsetDateTime::now_utc());
        let earlier = parse_time("--since", "2h", false).unwrap();
        assert!(earlier < time::OffsetDateTime::now_utc());
        let err = parse_time("--until", "tomorrow-ish", true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--until") && err.contains("RFC 3339"), "{err}");
    }
}
