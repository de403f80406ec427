//! Tenants: an optional model in which senders belong to accounts and roles are mapped to
//! accounts (`throttle.account_role`). With no row there, every role acts for every sender
//! (as before 0.3.0); with rows, a role enqueues, reads, consumes, explains and admits only
//! for the senders of its accounts. Row-level security enforces it on the message tables;
//! `throttle_admit` and `explain_sender` ask `throttle.acts_for` (see config.rs).
//!
//! `take()` must delete from `throttle.ready`, yet PUBLIC holds no DELETE there (a role with
//! DELETE may `LOCK` the table and stall the worker and every consumer). So `take()` runs
//! the delete as the extension's owner (SECURITY DEFINER), for the role that called it. A
//! SECURITY DEFINER function cannot see who called it; a *ticket* carries that: the invoker
//! side asks for one (this backend records the calling role under a random number), the
//! definer side redeems it once. A role can only ever get a ticket for itself.

use crate::backend::BackendLocal;
use pgrx::prelude::*;

static TICKET: BackendLocal<Option<(i64, pg_sys::Oid)>> = BackendLocal::new(None);

/// A one-time ticket naming the calling role (see the module's documentation).
#[pg_extern(volatile, parallel_unsafe)]
fn consumer_ticket() -> i64 {
    // A consumer (take, inbound) is about to act on the lines: what this transaction's
    // admissions counted under contact rules is written first, so that it sees it.
    crate::error::or_raise(crate::contact_txn::flush());
    let mut n = 0i64;
    // SAFETY: pg_strong_random writes exactly the given length into the buffer: here the 8
    // bytes of `n`, a live local.
    let ok = unsafe {
        pg_sys::pg_strong_random(
            (&raw mut n).cast::<std::ffi::c_void>(),
            std::mem::size_of::<i64>(),
        )
    };
    if !ok {
        pgrx::error!("pg_throttle: no random number for a consumer ticket");
    }
    // SAFETY: GetUserId only reads backend-local state (the current user id, always set in a
    // backend that runs SQL).
    let role = unsafe { pg_sys::GetUserId() };
    TICKET.with(|t| *t = Some((n, role)));
    n
}

/// The role a ticket was given to, once (NULL for any other number, or a second time).
#[pg_extern(volatile, parallel_unsafe)]
fn ticket_role(ticket: i64) -> Option<pg_sys::Oid> {
    TICKET.with(|t| match *t {
        Some((n, role)) if n == ticket => {
            *t = None;
            Some(role)
        }
        _ => None,
    })
}

pgrx::extension_sql!(
    r#"
-- Take up to n released messages (oldest first) of the senders the calling role acts for,
-- removing them from throttle.ready. Rows other sessions hold are skipped; a rollback puts
-- the taken rows back. Runs as the owner for the role named by the ticket.
CREATE FUNCTION throttle.take_for(n integer, ticket bigint) RETURNS SETOF throttle.ready
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller oid := throttle.ticket_role(ticket);
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.take(n)'
              USING ERRCODE = '42501';
    END IF;
    RETURN QUERY
    DELETE FROM throttle.ready
     WHERE id = ANY (ARRAY(
               SELECT m.id FROM throttle.ready m
                WHERE NOT EXISTS (SELECT 1 FROM throttle.account_role)
                   OR EXISTS (SELECT 1
                                FROM throttle.sender s
                                JOIN throttle.account_role a ON a.account = s.account
                                JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                               WHERE s.sender = m.sender
                                 AND pg_catalog.pg_has_role(caller, r.oid, 'MEMBER'))
                ORDER BY m.id LIMIT n FOR UPDATE SKIP LOCKED))
    RETURNING *;
END
$$;

CREATE FUNCTION throttle.take(n integer DEFAULT 100) RETURNS SETOF throttle.ready
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM throttle.take_for(n, throttle.consumer_ticket())
$$;
REVOKE ALL ON FUNCTION throttle.ticket_role(bigint) FROM PUBLIC;
"#,
    name = "take",
    requires = ["tenancy", consumer_ticket, ticket_role],
);
