//! pg_throttle: throttle outbound messages inside PostgreSQL.

use pgrx::prelude::*;

/// The pure core (its own crate, free of pgrx): rate math, calendars, caps, scheduling and the
/// release decisions.
pub use pg_throttle_core as limiter;

mod api;
mod backend;
mod caps;
mod config;
mod config_doc;
mod contact_filter;
mod contact_probe;
mod contact_txn;
mod contacts;
mod delivery;
mod error;
mod feedback;
mod generic_plan;
mod gucs;
mod hooks;
mod queue;
mod queue_cap;
mod shmem;
mod tenancy;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!(
    "../sql/queue.sql",
    name = "queue_tables",
    requires = ["schema"]
);
pgrx::extension_sql_file!(
    "../sql/area_code_zone.sql",
    name = "area_code_zone",
    requires = ["schema"]
);
pgrx::extension_sql_file!("../sql/caps.sql", name = "caps", requires = ["schema"]);
pgrx::extension_sql_file!(
    "../sql/tenancy.sql",
    name = "tenancy",
    requires = ["schema", "queue_tables"]
);
pgrx::extension_sql_file!(
    "../sql/profiles.sql",
    name = "profiles",
    requires = ["schema", "queue_tables", "caps", "contacts"]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Shared memory and postmaster settings only exist when the postmaster loads the
    // library; loaded later, the functions answer 55000 (not preloaded).
    // SAFETY: a plain flag PostgreSQL sets while it loads shared_preload_libraries, read here
    // in the process's one thread, which is the only one that writes it.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::init(preloading);
    if preloading {
        shmem::init();
        hooks::install();
        // Under pg_upgrade the server only restores the schema: no worker, nothing logged.
        // SAFETY: a plain flag PostgreSQL sets from its command line before it loads any
        // library, read here in the process's one thread.
        if !unsafe { pg_sys::IsBinaryUpgrade } {
            worker::register();
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[path = "../pgrx-tests/mod.rs"]
mod pgrx_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_throttle'"]
    }
}
