//! The build script of every function binary: when the profile optimises, it names the list of functions start-up
//! and the hot path run, for the workspace's linker (`infra/link/cc`, then `infra/link/ordered_link.py`) to place
//! first in `.text`, so an idle function keeps less of its code resident. Debug builds link as they are: their code
//! is not what is deployed, and the second link would only cost the tests time. `JETFN_LINK_ORDER_OFF=1` links
//! without the list, to measure what it changes.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let list = Path::new(&manifest).join("../../infra/link/hot-functions.txt");
    println!("cargo::rerun-if-changed={}", list.display());
    let linker = Path::new(&manifest).join("../../infra/link/ordered_link.py");
    println!("cargo::rerun-if-changed={}", linker.display());
    println!("cargo::rerun-if-env-changed=JETFN_LINK_ORDER_OFF");
    let optimised = std::env::var("OPT_LEVEL").is_ok_and(|level| level != "0");
    if optimised && std::env::var_os("JETFN_LINK_ORDER_OFF").is_none() {
        let list = list
            .canonicalize()
            .expect("infra/link/hot-functions.txt is in the repository");
        println!("cargo::rustc-env=JETFN_LINK_ORDER={}", list.display());
    }
}
