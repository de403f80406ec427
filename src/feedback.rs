//! Provider feedback (`sql/feedback.sql`): `ack()` of a failed message slows the limit it came
//! through, or holds its scope until the reset, as `throttle.feedback_rule` says. The worker's
//! part is here: when a slowed limit's next recovery step or a hold's end is due, it runs
//! `throttle.feedback_step()`, which skips whatever a client holds locked.

use crate::limiter::Micros;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

pgrx::extension_sql_file!(
    "../sql/feedback.sql",
    name = "feedback",
    requires = ["schema", "caps", "delivery"]
);

/// What the worker knows of feedback between ticks.
#[derive(Default)]
pub struct State {
    /// Whether this database's schema has `throttle.limit_feedback` (None: not looked yet).
    present: Option<bool>,
    /// When the next step is due (None: look now).
    next: Option<Micros>,
}

impl State {
    /// The configuration changed (a limit slowed, a hold made, an update): look again now.
    pub fn clear(&mut self) {
        *self = State::default();
    }
}

const SQL_STEP: &str = "SELECT throttle.feedback_step()";

/// The worker's feedback step of a tick: when to look again (None: nothing is slowed or held).
pub fn tick(
    c: &mut SpiClient<'_>,
    st: &mut State,
    now: Micros,
) -> pgrx::spi::Result<Option<Micros>> {
    if st.present.is_none() {
        st.present = Some(crate::backend::has_table(c, "throttle.limit_feedback")?);
    }
    if st.present != Some(true) {
        return Ok(None);
    }
    if st.next.is_some_and(|n| n > now) {
        return Ok(st.next);
    }
    let step = crate::contacts::kept(c, SQL_STEP, &[], true)?;
    let next = c
        .update(&*step, None, &[])?
        .first()
        .get::<TimestampWithTimeZone>(1)?
        .map(i64::from);
    // Not sooner than a second from now: a step is minutes long, and a row a client holds
    // locked (it stays due) is tried again then, never in a busy loop.
    let wake = next.map(|n| n.max(now + 1_000_000));
    st.next = Some(wake.unwrap_or(Micros::MAX));
    Ok(wake)
}
