//! Errors that reach SQL: each with a real SQLSTATE, a lowercase message, detail and hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

pub type Result<T> = std::result::Result<T, ErrorReport>;

/// The result type of the per-row hot path. An `ErrorReport` is a few hundred bytes; boxed,
/// a `Result` stays two words, so passing one up through each call on the success path is
/// not a `memmove` (it was a tenth of an admission's time).
pub type Fast<T> = std::result::Result<T, Box<ErrorReport>>;

/// Return the value, or raise the error (with its SQLSTATE) as a PostgreSQL ERROR.
#[inline]
pub fn or_raise<T>(r: Fast<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            e.report(pgrx::PgLogLevel::ERROR);
            unreachable!("ERROR does not return")
        }
    }
}

fn report(code: PgSqlErrorCode, msg: String, hint: Option<String>) -> ErrorReport {
    let r = ErrorReport::new(code, msg, "pg_throttle");
    match hint {
        Some(h) => r.set_hint(h),
        None => r,
    }
}

/// 22023: a bad argument.
pub fn invalid(msg: impl Into<String>, hint: impl Into<String>) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        msg.into(),
        Some(hint.into()),
    )
}

/// 22004: NULL where a value is required.
pub fn null_value(arg: &str) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{arg} must not be null"),
        Some(format!("pass a non-empty {arg}")),
    )
}

/// 42704: an unknown sender or limit.
pub fn undefined(msg: impl Into<String>, hint: impl Into<String>) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        msg.into(),
        Some(hint.into()),
    )
}

/// 42501: the role may not do this.
pub fn forbidden(msg: impl Into<String>, hint: impl Into<String>) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        msg.into(),
        Some(hint.into()),
    )
}

/// 53400: a fixed capacity is full.
pub fn capacity(msg: impl Into<String>, hint: impl Into<String>) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        msg.into(),
        Some(hint.into()),
    )
}

/// 54000: more of something than one call can handle.
pub fn too_many(msg: impl Into<String>, hint: impl Into<String>) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        msg.into(),
        Some(hint.into()),
    )
}

/// 55000: the library was not preloaded.
pub fn not_preloaded() -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "pg_throttle must be loaded via shared_preload_libraries".into(),
        Some(
            "add pg_throttle to shared_preload_libraries in postgresql.conf and restart the server"
                .into(),
        ),
    )
}

/// 55000: the release worker is needed and not there.
pub fn no_worker(msg: &str) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        msg.into(),
        Some(
            "check throttle.worker_state(): the worker must run (throttle.worker_enabled = on) in the database named by throttle.database_name"
                .into(),
        ),
    )
}

/// XX000 for a broken invariant reached through SPI (never user input).
pub fn internal(msg: impl std::fmt::Display) -> ErrorReport {
    report(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("pg_throttle: {msg}"),
        None,
    )
}

impl From<crate::shmem::ShmemError> for ErrorReport {
    fn from(e: crate::shmem::ShmemError) -> ErrorReport {
        match e {
            crate::shmem::ShmemError::NotLoaded => not_preloaded(),
            crate::shmem::ShmemError::Full => capacity(
                format!(
                    "no free limit bucket in shared memory (throttle.max_buckets = {})",
                    crate::gucs::max_buckets()
                ),
                "raise throttle.max_buckets in postgresql.conf and restart, or remove limits that are not used",
            ),
        }
    }
}

/// Refuse `PREPARE TRANSACTION` for the current transaction (0A000): what it did is handed on
/// at commit, and a prepared transaction commits later in another session.
pub fn refuse_prepare(message: &'static str, hint: &'static str) {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PrePrepare, move || {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            message,
            hint
        );
    });
}

/// A user's text as an error may show it: at most 40 characters, marked when cut (an error
/// never copies a huge input whole into the message and the server log).
pub fn shown(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// 22023 unless `b` is a valid sender, carrier or channel (`what`): 1 to
/// [`crate::gucs::max_identifier`] bytes, no control characters, and a channel in lowercase
/// letters, digits and `_`. The same rule on every path: throttle_admit, throttle.pending.
pub fn check_identifier(what: &str, b: &[u8]) -> std::result::Result<(), ErrorReport> {
    let max = crate::gucs::max_identifier();
    if b.is_empty() {
        return Err(invalid(
            format!("{what} must not be empty"),
            format!("pass the {what} as registered in throttle.sender / throttle.rate_limit"),
        ));
    }
    if b.len() > max {
        return Err(invalid(
            format!(
                "{what} is too long: {} bytes (at most {max}), \"{}\"",
                b.len(),
                shown(b)
            ),
            format!("a {what} is at most {max} bytes"),
        ));
    }
    let ok = if what == "channel" {
        b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    } else {
        b.iter().all(|&c| c >= 0x20 && c != 0x7f)
    };
    if !ok {
        return Err(invalid(
            format!("invalid {what} \"{}\"", shown(b)),
            if what == "channel" {
                "a channel is lowercase letters, digits and _ (sms, mms, whatsapp, imessage)"
                    .to_string()
            } else {
                format!("a {what} has no control characters")
            },
        ));
    }
    Ok(())
}
