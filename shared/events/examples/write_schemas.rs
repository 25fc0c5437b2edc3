//! Rewrites `shared/events/schemas/*.json`, `CATALOG.md` and `asyncapi.json` from the Rust types
//! (`cargo run -p events --example write_schemas`).
fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for kind in events::CATALOG {
        let text =
            serde_json::to_string_pretty(&(kind.derived_schema)()).expect("schema serializes");
        std::fs::write(dir.join(format!("{}.json", kind.ty)), text + "\n")?;
    }
    std::fs::write(dir.with_file_name("CATALOG.md"), events::catalog_markdown())?;
    std::fs::write(
        dir.with_file_name("asyncapi.json"),
        events::asyncapi::asyncapi_text(),
    )?;
    Ok(())
}
