//! Configuration as code: `throttle.export_config()` writes every sender, group, rate limit,
//! calendar cap (with its exemptions), queue cap, contact rule, pool (with its lines),
//! feedback rule of yours and account role as one JSON document; `throttle.import_config(doc,
//! dry_run)` makes the configuration what a document says: checked first against typed
//! structures (serde; an error names the path of the bad field), then row by row against the
//! tables' own checks (an error names the row's path), in one transaction, returning what it
//! changed (or, in a dry run, would change). Rows are matched by name, or by their scope and
//! kind when unnamed; a row that did not change is not touched, so its bucket state, usage and
//! any slow-down a provider's errors brought on stay. Importing the same document again changes
//! nothing.

use crate::error::{self, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

const JSONB: pgrx::PgOid = pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::JSONBOID);
const TEXT: pgrx::PgOid = pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::TEXTOID);

/// The document's format: a document of another format is refused.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    format: u32,
    #[serde(default)]
    account_roles: Vec<AccountRole>,
    #[serde(default)]
    senders: Vec<Sender>,
    #[serde(default)]
    rate_limits: Vec<RateLimit>,
    #[serde(default)]
    caps: Vec<Cap>,
    #[serde(default)]
    queue_caps: Vec<QueueCap>,
    #[serde(default)]
    contact_rules: Vec<ContactRule>,
    #[serde(default)]
    pools: Vec<Pool>,
    #[serde(default)]
    feedback_rules: Vec<FeedbackRule>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct AccountRole {
    account: String,
    role: String,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Sender {
    sender: String,
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    brand: Option<String>,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    sender_type: Option<String>,
    #[serde(default)]
    expiry_error_code: Option<String>,
    #[serde(default)]
    weight: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RateLimit {
    #[serde(default)]
    name: Option<String>,
    scope: String,
    scope_id: String,
    #[serde(default)]
    carrier: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    sender_type: Option<String>,
    rate: i64,
    #[serde(default)]
    per: Option<String>,
    #[serde(default)]
    burst: Option<i64>,
    #[serde(default)]
    each_sender: Option<bool>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Cap {
    #[serde(default)]
    name: Option<String>,
    scope: String,
    scope_id: String,
    #[serde(default)]
    carrier: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    sender_type: Option<String>,
    cap: i64,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    reset_at: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    overage_pct: Option<i32>,
    #[serde(default)]
    warn_at: Option<Vec<i32>>,
    #[serde(default)]
    at_cap: Option<String>,
    #[serde(default)]
    local_time: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    note: Option<String>,
    /// Campaigns the cap does not apply to (throttle.cap_exemption).
    #[serde(default)]
    exempt_campaigns: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct QueueCap {
    #[serde(default)]
    name: Option<String>,
    scope: String,
    scope_id: String,
    #[serde(default)]
    carrier: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    max_waiting: Option<i64>,
    #[serde(default)]
    validity: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct ContactRule {
    #[serde(default)]
    name: Option<String>,
    scope: String,
    scope_id: String,
    #[serde(default)]
    channel: Option<String>,
    kind: String,
    max_count: i32,
    #[serde(default)]
    per: Option<String>,
    #[serde(default)]
    reset_at: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    reply_window: Option<String>,
    #[serde(default)]
    at_limit: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Pool {
    pool: String,
    #[serde(default)]
    note: Option<String>,
    /// Its lines (throttle.pool_line).
    #[serde(default)]
    lines: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct FeedbackRule {
    #[serde(default)]
    name: Option<String>,
    error_code: String,
    #[serde(default)]
    carrier: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    min_factor: Option<f64>,
    #[serde(default)]
    cool_down: Option<String>,
    #[serde(default)]
    recovery: Option<String>,
    #[serde(default)]
    reset_at: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// One kind of row: its place in the document, its table, its columns, how an unnamed row is
/// told apart, and which rows of the table are configuration.
struct Kind {
    field: &'static str,
    table: &'static str,
    cols: &'static [&'static str],
    /// A row's identity: `name` when the table has one and the row is named, else these.
    key: &'static [&'static str],
    named: bool,
    /// Which rows are exported and replaced (the rest are not configuration of yours).
    filter: &'static str,
    /// A list kept in a child table: (field, child table, its column).
    children: Option<(&'static str, &'static str, &'static str)>,
}

static KINDS: [Kind; 8] = [
    Kind {
        field: "account_roles",
        table: "account_role",
        cols: &["account", "role"],
        key: &["account", "role"],
        named: false,
        filter: "true",
        children: None,
    },
    Kind {
        field: "senders",
        table: "sender",
        cols: &[
            "sender",
            "campaign",
            "brand",
            "account",
            "sender_type",
            "expiry_error_code",
            "weight",
        ],
        key: &["sender"],
        named: false,
        filter: "true",
        children: None,
    },
    Kind {
        field: "rate_limits",
        table: "rate_limit",
        cols: &[
            "name",
            "scope",
            "scope_id",
            "carrier",
            "channel",
            "sender_type",
            "rate",
            "per",
            "burst",
            "each_sender",
            "note",
        ],
        key: &[
            "scope",
            "scope_id",
            "carrier",
            "channel",
            "sender_type",
            "per",
            "each_sender",
        ],
        named: true,
        filter: "true",
        children: None,
    },
    Kind {
        field: "caps",
        table: "cap",
        cols: &[
            "name",
            "scope",
            "scope_id",
            "carrier",
            "channel",
            "sender_type",
            "cap",
            "period",
            "reset_at",
            "time_zone",
            "overage_pct",
            "warn_at",
            "at_cap",
            "local_time",
            "error_code",
            "note",
        ],
        key: &[
            "scope",
            "scope_id",
            "carrier",
            "channel",
            "sender_type",
            "period",
        ],
        named: true,
        // Holds a provider's "done for the day" made are not configuration.
        filter: "t.name IS NULL OR t.name NOT LIKE 'feedback/%'",
        children: Some(("exempt_campaigns", "cap_exemption", "campaign")),
    },
    Kind {
        field: "queue_caps",
        table: "queue_cap",
        cols: &[
            "name",
            "scope",
            "scope_id",
            "carrier",
            "channel",
            "max_waiting",
            "validity",
            "error_code",
            "note",
        ],
        key: &["scope", "scope_id", "carrier", "channel"],
        named: true,
        filter: "true",
        children: None,
    },
    Kind {
        field: "contact_rules",
        table: "contact_rule",
        cols: &[
            "name",
            "scope",
            "scope_id",
            "channel",
            "kind",
            "max_count",
            "per",
            "reset_at",
            "time_zone",
            "reply_window",
            "at_limit",
            "error_code",
            "note",
        ],
        key: &["scope", "scope_id", "channel", "kind", "per"],
        named: true,
        filter: "true",
        children: None,
    },
    Kind {
        field: "pools",
        table: "pool",
        cols: &["pool", "note"],
        key: &["pool"],
        named: false,
        filter: "true",
        children: Some(("lines", "pool_line", "sender")),
    },
    Kind {
        field: "feedback_rules",
        table: "feedback_rule",
        cols: &[
            "name",
            "error_code",
            "carrier",
            "channel",
            "scope",
            "action",
            "factor",
            "min_factor",
            "cool_down",
            "recovery",
            "reset_at",
            "time_zone",
            "profile",
            "note",
        ],
        key: &["error_code", "carrier", "channel"],
        named: true,
        // The shipped rules come with the extension.
        filter: "NOT t.shipped",
        children: None,
    },
];

impl Kind {
    /// `jsonb_build_object` of the columns of `t` (the one shape both sides are compared in).
    /// `defaults`: each column's default expression, for a document's row that leaves it out
    /// (the table's own, read from the catalog: never written twice).
    fn object(&self, configured_rate: bool, defaults: &FxHashMap<String, String>) -> String {
        let mut parts = Vec::new();
        for c in self.cols {
            let v = match (*c, configured_rate) {
                // A limit a provider's errors slowed is exported at its configured rate.
                ("rate", true) => "coalesce(f.configured_rate, t.rate)".to_string(),
                ("burst", true) => {
                    "CASE WHEN f.limit_id IS NULL THEN t.burst ELSE f.configured_burst END"
                        .to_string()
                }
                (c, _) => match defaults.get(c) {
                    Some(d) => format!("coalesce(t.{c}, {d})"),
                    None => format!("t.{c}"),
                },
            };
            parts.push(format!("'{c}', {v}"));
        }
        format!("jsonb_build_object({})", parts.join(", "))
    }

    /// The default expressions of the table's columns.
    fn defaults(&self, c: &SpiClient<'_>) -> Result<FxHashMap<String, String>> {
        let mut out = FxHashMap::default();
        for row in c
            .select(
                "SELECT a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
                   FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = ('throttle.' || $1)::regclass AND NOT a.attisdropped",
                None,
                &[self.table.into()],
            )
            .map_err(error::internal)?
        {
            if let (Some(n), Some(d)) = (
                row.get::<String>(1).map_err(error::internal)?,
                row.get::<String>(2).map_err(error::internal)?,
            ) {
                out.insert(n, d);
            }
        }
        Ok(out)
    }

    /// Every configuration row of the table now: (ctid, row, children).
    fn current(&self, c: &SpiClient<'_>) -> Result<Vec<(String, Value)>> {
        let slowed = self.table == "rate_limit";
        let join = if slowed {
            " LEFT JOIN throttle.limit_feedback f ON f.limit_id = t.limit_id"
        } else {
            ""
        };
        let children = match self.children {
            Some((_, child, col)) => {
                let fk = if self.table == "cap" {
                    "cap_id"
                } else {
                    "pool"
                };
                format!(
                    ", coalesce((SELECT jsonb_agg(x.{col} ORDER BY x.{col}) FROM throttle.{child} x WHERE x.{fk} = t.{fk}), '[]')"
                )
            }
            None => ", NULL::jsonb".to_string(),
        };
        let sql = format!(
            "SELECT t.ctid::text, {}{children} FROM throttle.{} t{join} WHERE {} ORDER BY 2",
            self.object(slowed, &FxHashMap::default()),
            self.table,
            self.filter
        );
        let mut out = Vec::new();
        for row in c.select(&sql, None, &[]).map_err(error::internal)? {
            let ctid: String = row.get(1).map_err(error::internal)?.unwrap_or_default();
            let JsonB(mut v) = row
                .get::<JsonB>(2)
                .map_err(error::internal)?
                .unwrap_or(JsonB(Value::Null));
            if let (Some((field, ..)), Some(JsonB(list))) =
                (self.children, row.get::<JsonB>(3).map_err(error::internal)?)
            {
                if let Value::Object(m) = &mut v {
                    m.insert(field.to_string(), list);
                }
            }
            out.push((ctid, v));
        }
        Ok(out)
    }

    /// A row's identity within its kind.
    fn key_of(&self, v: &Value) -> String {
        if self.named {
            if let Some(Value::String(n)) = v.get("name") {
                return format!("name={n}");
            }
        }
        self.key
            .iter()
            .map(|k| match v.get(*k) {
                Some(Value::String(s)) => format!("{k}={s}"),
                Some(Value::Null) | None => format!("{k}=NULL"),
                Some(other) => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Run `f`; a PostgreSQL error in it is raised again with `path` in front of its message (its
/// SQLSTATE, detail and hint kept), so that the document's bad row is named.
fn at_path<T>(path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let path = path.to_string();
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .catch_others(move |e| {
            let r = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
            };
            let mut out = pg_sys::panic::ErrorReport::new(
                r.sql_error_code(),
                format!("import_config: {path}: {}", r.message()),
                "pg_throttle",
            );
            if let Some(d) = r.detail() {
                out = out.set_detail(d);
            }
            if let Some(h) = r.hint() {
                out = out.set_hint(h);
            }
            Err(out)
        })
        .execute()
}

/// The configuration now, as a document (see the module's documentation).
#[pg_extern(stable, parallel_safe)]
fn export_config() -> Result<JsonB> {
    Spi::connect(|c| {
        let mut doc = Map::new();
        doc.insert("format".into(), Value::from(FORMAT));
        for k in &KINDS {
            let rows: Vec<Value> = k.current(&c)?.into_iter().map(|(_, v)| v).collect();
            doc.insert(k.field.into(), Value::Array(rows));
        }
        // Through the typed structures: what is exported is what an import accepts.
        let typed: Config = serde_json::from_value(Value::Object(doc))
            .map_err(|e| error::internal(format!("export_config: {e}")))?;
        let v = serde_json::to_value(&typed).map_err(error::internal)?;
        Ok(JsonB(v))
    })
}

/// Parse `doc` into the typed structures; an error names the path of the bad field.
fn parse<T: DeserializeOwned>(doc: &Value) -> Result<T> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        error::invalid(
            format!("import_config: at {path}: {}", e.inner()),
            "a document as throttle.export_config() writes it: {\"format\": 1, \"senders\": [...], \"rate_limits\": [...], ...}",
        )
    })
}

/// One change `import_config` makes.
struct Change {
    action: &'static str,
    kind: &'static str,
    key: String,
    detail: Option<String>,
}

/// Make the configuration what `doc` says (or, with `dry_run`, only say what that changes).
#[pg_extern(volatile, parallel_unsafe)]
fn import_config(
    doc: JsonB,
    dry_run: default!(bool, false),
) -> Result<
    TableIterator<
        'static,
        (
            name!(action, String),
            name!(kind, String),
            name!(key, String),
            name!(detail, Option<String>),
        ),
    >,
> {
    let JsonB(doc) = doc;
    let typed: Config = parse(&doc)?;
    if typed.format != FORMAT {
        return Err(error::invalid(
            format!(
                "import_config: at format: format {} is not known (this version reads {FORMAT})",
                typed.format
            ),
            "export the configuration again with this version's throttle.export_config()",
        ));
    }
    // The typed document again, with every default filled in: the shape rows compare in.
    let full = serde_json::to_value(&typed).map_err(error::internal)?;
    let mut changes = Vec::new();
    Spi::connect_mut(|c| -> Result<()> {
        let mut plans = Vec::new();
        for k in &KINDS {
            let wanted = match full.get(k.field) {
                Some(Value::Array(rows)) => rows.clone(),
                _ => Vec::new(),
            };
            plans.push((k, plan(c, k, &wanted, &mut changes)?));
        }
        if dry_run {
            return Ok(());
        }
        // Deletes first (children before parents: last kind first), then the rest in order.
        for (k, p) in plans.iter().rev() {
            if p.delete.is_empty() {
                continue;
            }
            let delete = c
                .prepare_mut(
                    &format!("DELETE FROM throttle.{} WHERE ctid = $1::tid", k.table),
                    &[TEXT],
                )
                .map_err(error::internal)?;
            for (path, ctid) in &p.delete {
                at_path(path, || {
                    c.update(&delete, None, &[ctid.clone().into()])
                        .map_err(error::internal)?;
                    Ok(())
                })?;
            }
        }
        for (k, p) in &plans {
            apply(c, k, p)?;
        }
        Ok(())
    })?;
    Ok(TableIterator::new(changes.into_iter().map(|ch| {
        (
            ch.action.to_string(),
            ch.kind.to_string(),
            ch.key,
            ch.detail,
        )
    })))
}

/// What to do with one kind: rows to delete (path, ctid), create (path, row) and update
/// (path, ctid, row).
#[derive(Default)]
struct Plan {
    delete: Vec<(String, String)>,
    create: Vec<(String, Value)>,
    update: Vec<(String, String, Value)>,
}

/// Compare the wanted rows of kind `k` (normalised by PostgreSQL: "1 second" and "00:00:01"
/// are one interval) with the table's, noting each change.
fn plan(
    c: &mut SpiClient<'_>,
    k: &'static Kind,
    wanted: &[Value],
    changes: &mut Vec<Change>,
) -> Result<Plan> {
    let current = k.current(c)?;
    let mut by_key: FxHashMap<String, (String, Value)> = current
        .into_iter()
        .map(|(ctid, v)| (k.key_of(&v), (ctid, v)))
        .collect();
    // Prepared once per kind: a document of 100,000 lines runs it 100,000 times.
    let normalise = c
        .prepare(
            &format!(
                "SELECT {} FROM jsonb_populate_record(NULL::throttle.{}, $1) t",
                k.object(false, &k.defaults(c)?),
                k.table
            ),
            &[JSONB],
        )
        .map_err(error::internal)?;
    let mut seen = rustc_hash::FxHashSet::default();
    let mut p = Plan::default();
    for (i, row) in wanted.iter().enumerate() {
        let path = format!("{}[{i}]", k.field);
        let JsonB(mut norm) = at_path(&path, || {
            c.select(&normalise, None, &[JsonB(row.clone()).into()])
                .map_err(error::internal)?
                .first()
                .get::<JsonB>(1)
                .map_err(error::internal)
                .map(|v| v.unwrap_or(JsonB(Value::Null)))
        })?;
        if let (Some((field, ..)), Value::Object(m)) = (k.children, &mut norm) {
            let mut list: Vec<String> = row
                .get(field)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            list.sort();
            list.dedup();
            m.insert(field.to_string(), Value::from(list));
        }
        let key = k.key_of(&norm);
        if !seen.insert(key.clone()) {
            return Err(error::invalid(
                format!("import_config: at {path}: a second row with {key}"),
                "name one of them (a name tells rows of one scope apart), or remove one",
            ));
        }
        match by_key.remove(&key) {
            None => {
                changes.push(Change {
                    action: "create",
                    kind: k.field,
                    key,
                    detail: None,
                });
                p.create.push((path, norm));
            }
            Some((ctid, old)) if old != norm => {
                changes.push(Change {
                    action: "update",
                    kind: k.field,
                    key,
                    detail: Some(differences(&old, &norm)),
                });
                p.update.push((path, ctid, norm));
            }
            Some(_) => {}
        }
    }
    let mut gone: Vec<(String, (String, Value))> = by_key.into_iter().collect();
    gone.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, (ctid, _)) in gone {
        changes.push(Change {
            action: "delete",
            kind: k.field,
            key: key.clone(),
            detail: None,
        });
        p.delete.push((format!("{} ({key})", k.field), ctid));
    }
    Ok(p)
}

/// "field: old -> new" for each field that differs.
fn differences(old: &Value, new: &Value) -> String {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        return String::new();
    };
    let mut out = Vec::new();
    for (f, v) in n {
        let was = o.get(f).unwrap_or(&Value::Null);
        if was != v {
            out.push(format!("{f}: {was} -> {v}"));
        }
    }
    out.join("; ")
}

/// Create and update the rows of one kind, and keep its children in step.
fn apply(c: &mut SpiClient<'_>, k: &Kind, p: &Plan) -> Result<()> {
    if p.create.is_empty() && p.update.is_empty() {
        return Ok(());
    }
    let cols = k.cols.join(", ");
    // Prepared once per kind (see `plan`).
    let insert = c
        .prepare_mut(
            &format!(
                "INSERT INTO throttle.{t} ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::throttle.{t}, $1) RETURNING ctid::text",
                t = k.table
            ),
            &[JSONB],
        )
        .map_err(error::internal)?;
    let update = c
        .prepare_mut(
            &format!(
                "UPDATE throttle.{t} SET ({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::throttle.{t}, $1))
                  WHERE ctid = $2::tid RETURNING ctid::text",
                t = k.table
            ),
            &[JSONB, TEXT],
        )
        .map_err(error::internal)?;
    let rows = p
        .create
        .iter()
        .map(|(path, v)| (path, None, v))
        .chain(p.update.iter().map(|(path, ctid, v)| (path, Some(ctid), v)));
    for (path, ctid, v) in rows {
        at_path(path, || {
            let args = match ctid {
                None => vec![JsonB(v.clone()).into()],
                Some(t) => vec![JsonB(v.clone()).into(), t.clone().into()],
            };
            let sql = if ctid.is_none() { &insert } else { &update };
            let new_ctid: Option<String> = c
                .update(sql, None, &args)
                .map_err(error::internal)?
                .first()
                .get(1)
                .map_err(error::internal)?;
            if let (Some((field, child, col)), Some(at)) = (k.children, new_ctid) {
                let list: Vec<String> = v
                    .get(field)
                    .and_then(|x| x.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let fk = if k.table == "cap" { "cap_id" } else { "pool" };
                c.update(
                    &format!(
                        "WITH parent AS (SELECT {fk} AS id FROM throttle.{t} WHERE ctid = $1::tid),
                              gone AS (DELETE FROM throttle.{child} x USING parent
                                        WHERE x.{fk} = parent.id AND x.{col} <> ALL ($2))
                         INSERT INTO throttle.{child} ({fk}, {col})
                         SELECT parent.id, e FROM parent, unnest($2::text[]) e
                         ON CONFLICT DO NOTHING",
                        t = k.table
                    ),
                    None,
                    &[at.into(), list.into()],
                )
                .map_err(error::internal)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
