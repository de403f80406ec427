//! A read-only statement the release worker runs every tick, prepared once with a generic plan
//! and read straight from SPI's tuple table.
//!
//! Two costs of pgrx's prepared statements showed in the worker's profile under the head-row
//! fetch, paid per tick or per row although the statement never changes:
//! - **planning per tick**: its parameters are arrays, so the plan cache's custom plans (which
//!   see the arrays' lengths) always look cheaper than the generic one, and it planned the
//!   statement again on every execution. Prepared with `CURSOR_OPT_GENERIC_PLAN`, it is planned
//!   once (the plan is the same: one index scan per queue);
//! - **several guarded calls per column**: each `get` checks the column's type and crosses
//!   into PostgreSQL through a `sigsetjmp`. Here each row is deformed by one call and the
//!   columns, whose types are checked once per execution, are read from the arrays.
//!
//! (The contact statements get generic plans from [`crate::backend::GenericPlans`], a guard
//! over `plan_cache_mode` around pgrx's statements. Here the plan carries the option itself,
//! and the rows are read without pgrx's per-column calls, which the fetch needed as well.)

use pgrx::pg_sys;
use pgrx::spi::{Spi, SpiClient, SpiError, SpiErrorCodes};
use std::ffi::CString;
use std::ptr::NonNull;

/// A kept SPI plan that always uses its generic plan; freed on drop.
pub struct GenericPlan {
    plan: NonNull<pg_sys::_SPI_plan>,
    /// The type of each result column (checked against the result's descriptor).
    columns: &'static [pg_sys::Oid],
}

impl GenericPlan {
    /// Prepare `sql` (parameters of types `args`, result columns of types `columns`) and keep
    /// it for the life of the backend (`_c`: SPI is connected).
    pub fn prepare(
        _c: &SpiClient<'_>,
        sql: &str,
        args: &[pg_sys::Oid],
        columns: &'static [pg_sys::Oid],
    ) -> pgrx::spi::Result<GenericPlan> {
        // Statement text never holds a NUL byte; one that did could not be prepared anyway.
        let sql = CString::new(sql).map_err(|_| SpiError::SpiError(SpiErrorCodes::Argument))?;
        let mut types = args.to_vec();
        let nargs = i32::try_from(types.len()).unwrap_or(i32::MAX);
        // SAFETY: `sql` is a NUL-terminated string and `types` holds `nargs` type oids, both
        // alive for the call; SPI_prepare_cursor copies what it keeps, raises (a panic here)
        // on a statement that does not parse, and returns NULL with SPI_result set otherwise.
        let plan = unsafe {
            pg_sys::SPI_prepare_cursor(
                sql.as_ptr(),
                nargs,
                types.as_mut_ptr(),
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            )
        };
        let Some(plan) = NonNull::new(plan) else {
            // SAFETY: SPI_result is a plain int SPI sets in this backend's one thread.
            return Err(spi_error(unsafe { pg_sys::SPI_result }));
        };
        // SAFETY: `plan` was just returned by SPI_prepare_cursor and is not kept yet; 0 is
        // success, anything else an error code.
        let kept = unsafe { pg_sys::SPI_keepplan(plan.as_ptr()) };
        if kept != 0 {
            return Err(spi_error(kept));
        }
        Ok(GenericPlan { plan, columns })
    }

    /// Run the statement with `args` (none NULL; datums valid for the call) and hand each
    /// result row's columns to `row` (a NULL column as None). Returns the number of rows.
    /// `_c`: SPI is connected. The rows' memory is freed before it returns, so `row` copies
    /// what it keeps (pass-by-reference values included).
    pub fn for_each<const N: usize>(
        &self,
        _c: &SpiClient<'_>,
        args: &[pg_sys::Datum],
        mut row: impl FnMut([Option<pg_sys::Datum>; N]),
    ) -> pgrx::spi::Result<u64> {
        // SAFETY: the plan is kept and valid; SPI_getargcount only reads it.
        let expected = unsafe { pg_sys::SPI_getargcount(self.plan.as_ptr()) } as usize;
        if expected != args.len() {
            return Err(SpiError::PreparedStatementArgumentMismatch {
                expected,
                got: args.len(),
            });
        }
        if N != self.columns.len() {
            return Err(SpiError::SpiError(SpiErrorCodes::NoAttribute));
        }
        let mut values = args.to_vec();
        let nulls = vec![b' ' as std::ffi::c_char; args.len()];
        // SAFETY: the plan is kept and valid; `values` and `nulls` have one entry per argument
        // and live for the call (SPI checks their number against the plan's). An error in the
        // statement raises (a panic here) and leaves nothing to free: SPI frees its memory at
        // the end of the transaction. As pgrx's `select`, it runs read-only (on the statement's
        // snapshot) only while this transaction has written nothing, so it sees the tick's
        // own earlier writes.
        let rc = unsafe {
            let read_only = pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId;
            pg_sys::SPI_execute_plan(
                self.plan.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                read_only,
                0,
            )
        };
        if Spi::check_status(rc)? != pgrx::spi::SpiOkCodes::Select {
            return Err(SpiError::SpiError(SpiErrorCodes::OpUnknown));
        }
        // SAFETY: after SPI_OK_SELECT, SPI_tuptable points at the result (its descriptor and
        // SPI_processed rows), which stays valid until freed below. The descriptor is checked
        // to have exactly the prepared columns' types, so each row deforms into N values of
        // those types; deforming writes `natts` = N entries of the two arrays.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            let n = pg_sys::SPI_processed;
            if table.is_null() {
                return Err(SpiError::NoTupleTable);
            }
            let desc = (*table).tupdesc;
            let natts = (*desc).natts as usize;
            let same = natts == N
                && (0..N).all(|i| (*desc).attrs.as_slice(natts)[i].atttypid == self.columns[i]);
            if !same {
                pg_sys::SPI_freetuptable(table);
                return Err(SpiError::SpiError(SpiErrorCodes::TypUnknown));
            }
            let rows = std::slice::from_raw_parts((*table).vals, n as usize);
            let mut v = [pg_sys::Datum::from(0usize); N];
            let mut isnull = [false; N];
            for &t in rows {
                pg_sys::heap_deform_tuple(t, desc, v.as_mut_ptr(), isnull.as_mut_ptr());
                row(std::array::from_fn(|i| (!isnull[i]).then_some(v[i])));
            }
            pg_sys::SPI_freetuptable(table);
            Ok(n)
        }
    }
}

/// The error for an SPI failure code (`Argument` when the code is not one: pgrx's
/// `check_status` panics on codes it does not know).
fn spi_error(code: i32) -> SpiError {
    if code < 0 {
        if let Err(e) = Spi::check_status(code) {
            return e;
        }
    }
    SpiError::SpiError(SpiErrorCodes::Argument)
}

impl Drop for GenericPlan {
    fn drop(&mut self) {
        // SAFETY: the plan was kept by `prepare` and is freed once, here.
        unsafe {
            pg_sys::SPI_freeplan(self.plan.as_ptr());
        }
    }
}
