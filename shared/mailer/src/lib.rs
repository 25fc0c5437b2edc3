//! Email composition and delivery for jetfn functions.
