//! The SQL surface: every `#[pg_extern]`.

mod admit;
mod explain;
mod state;
