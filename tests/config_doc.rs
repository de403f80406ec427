//! Configuration as code against real servers: export → import into an empty database →
//! export gives the same document, with every kind of object; importing it again changes
//! nothing; a dry run says what would change and changes nothing; rows that did not change keep
//! their ids and bucket state; an invalid document changes nothing and names the bad field.

use pg_throttle_tests::{count, sqlstate, Client, Server};
use postgres::types::Json;
use serde_json::Value;

/// A configuration with every kind of object.
const EVERYTHING: &str = "
    INSERT INTO throttle.account_role VALUES ('acct1', 'postgres');
    INSERT INTO throttle.sender (sender, campaign, brand, account, sender_type, weight)
    VALUES ('s1', 'c1', 'b1', 'acct1', 'long_code', 2), ('s2', 'c1', 'b1', 'acct1', NULL, 1),
           ('p1', NULL, NULL, 'acct1', NULL, 1), ('p2', NULL, NULL, 'acct1', NULL, 1);
    INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst) VALUES ('L1', 'sender', 's1', 10, '1 minute', 10);
    INSERT INTO throttle.rate_limit (scope, scope_id, carrier, rate, per) VALUES ('campaign', 'c1', 'att', 4500, '1 minute');
    INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, each_sender) VALUES ('account', 'acct1', 100, '1 second', true);
    INSERT INTO throttle.cap (name, scope, scope_id, carrier, cap, period, reset_at, time_zone, at_cap)
    VALUES ('brand daily', 'brand', 'b1', 'tmobile', 2000, 'day', '00:00', 'America/Los_Angeles', 'defer_local');
    INSERT INTO throttle.cap_exemption SELECT cap_id, 'political1' FROM throttle.cap WHERE name = 'brand daily';
    INSERT INTO throttle.queue_cap (scope, scope_id, max_waiting, error_code) VALUES ('sender', 's2', 1000, '429');
    INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 's1', 'new_contacts', 50);
    INSERT INTO throttle.pool (pool) VALUES ('pool1');
    INSERT INTO throttle.pool_line (pool, sender) VALUES ('pool1', 'p1'), ('pool1', 'p2');
    INSERT INTO throttle.feedback_rule (name, error_code, scope, factor) VALUES ('ours', '503', 'account', 0.75);
    SELECT throttle.apply_profile('sendblue_line', 'sender', 's2');";

fn export(c: &mut Client) -> Value {
    let Json(v): Json<Value> = c
        .query_one("SELECT throttle.export_config()", &[])
        .expect("export")
        .get(0);
    v
}

/// import_config's rows: (action, kind, key, detail).
fn import(
    c: &mut Client,
    doc: &Value,
    dry_run: bool,
) -> Vec<(String, String, String, Option<String>)> {
    c.query(
        "SELECT * FROM throttle.import_config($1, $2)",
        &[&Json(doc), &dry_run],
    )
    .expect("import")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn len(doc: &Value, field: &str) -> usize {
    doc[field].as_array().map_or(0, |a| a.len())
}

#[test]
fn export_import_export_is_identical_and_a_second_import_changes_nothing() {
    let a = Server::start("cfg_a", &[]);
    let mut ca = a.connect();
    ca.batch_execute(EVERYTHING).expect("configure");
    let doc = export(&mut ca);
    for (field, n) in [
        ("account_roles", 1),
        ("senders", 4),
        ("caps", 1),
        ("queue_caps", 2), // ours and the profile's
        ("contact_rules", 1),
        ("pools", 1),
        ("feedback_rules", 1),
    ] {
        assert_eq!(len(&doc, field), n, "{field} in {doc}");
    }
    assert!(len(&doc, "rate_limits") >= 4, "ours and the profile's");
    assert_eq!(
        doc["caps"][0]["exempt_campaigns"],
        serde_json::json!(["political1"])
    );
    assert_eq!(doc["pools"][0]["lines"], serde_json::json!(["p1", "p2"]));
    // Into an empty database: everything is created, and its export is the same document.
    let b = Server::start("cfg_b", &[]);
    let mut cb = b.connect();
    let created = import(&mut cb, &doc, false);
    assert!(created.iter().all(|r| r.0 == "create"), "{created:?}");
    assert_eq!(export(&mut cb), doc, "export -> import -> export");
    // Again: nothing to do.
    assert!(import(&mut cb, &doc, false).is_empty(), "idempotent");
    assert!(
        import(&mut ca, &doc, false).is_empty(),
        "idempotent at the source"
    );
    // The shipped feedback rules are not part of it, and are still there.
    assert_eq!(
        count(
            &mut cb,
            "SELECT count(*) FROM throttle.feedback_rule WHERE shipped"
        ),
        5
    );
}

#[test]
fn a_dry_run_says_what_changes_and_unchanged_limits_keep_their_state() {
    let server = Server::start("cfg_diff", &[]);
    let mut c = server.connect();
    c.batch_execute(EVERYTHING).expect("configure");
    // L1's bucket in use: 4 of its 10 taken.
    let admitted = count(
        &mut c,
        "SELECT count(*) FROM generate_series(1, 4) WHERE (throttle.throttle_admit('s1', 'verizon')).admitted",
    );
    assert_eq!(admitted, 4);
    let l1 = count(
        &mut c,
        "SELECT limit_id FROM throttle.rate_limit WHERE name = 'L1'",
    );
    let mut doc = export(&mut c);
    // Change the campaign's limit, drop a sender's queue cap, add a sender, rename nothing.
    for l in doc["rate_limits"].as_array_mut().expect("limits") {
        if l["scope"] == "campaign" {
            l["rate"] = Value::from(3000);
            l["per"] = Value::from("60 seconds"); // the same interval, written otherwise
        }
    }
    doc["queue_caps"]
        .as_array_mut()
        .expect("queue caps")
        .retain(|q| q["max_waiting"] != 1000);
    doc["senders"]
        .as_array_mut()
        .expect("senders")
        .push(serde_json::json!({"sender": "s3", "campaign": "c1"}));
    let before = export(&mut c);
    let plan = import(&mut c, &doc, true);
    let mut actions: Vec<(String, String)> =
        plan.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    actions.sort();
    assert_eq!(
        actions,
        vec![
            ("create".to_string(), "senders".to_string()),
            ("delete".to_string(), "queue_caps".to_string()),
            ("update".to_string(), "rate_limits".to_string()),
        ],
        "{plan:?}"
    );
    let detail = plan
        .iter()
        .find(|r| r.0 == "update")
        .and_then(|r| r.3.clone())
        .unwrap_or_default();
    assert_eq!(detail, "rate: 4500 -> 3000", "only the rate differs");
    assert_eq!(export(&mut c), before, "a dry run changes nothing");
    let done = import(&mut c, &doc, false);
    assert_eq!(done.len(), 3);
    assert_eq!(
        count(
            &mut c,
            "SELECT rate FROM throttle.rate_limit WHERE scope = 'campaign'"
        ),
        3000
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.sender WHERE sender = 's3'"
        ),
        1
    );
    // L1 did not change: the same row, and its bucket kept what was taken.
    assert_eq!(
        count(
            &mut c,
            "SELECT limit_id FROM throttle.rate_limit WHERE name = 'L1'"
        ),
        l1
    );
    let available = count(
        &mut c,
        "SELECT available FROM throttle.limit_state WHERE name = 'L1'",
    );
    assert!(
        available <= 6,
        "the bucket kept its state: {available} available"
    );
}

#[test]
fn an_invalid_document_changes_nothing_and_names_the_bad_field() {
    let server = Server::start("cfg_bad", &[]);
    let mut c = server.connect();
    c.batch_execute(EVERYTHING).expect("configure");
    let before = export(&mut c);
    let cases = [
        (
            serde_json::json!({"format": 1, "rate_limits": [{"scope": "sender", "scope_id": "s1", "rate": "fast"}]}),
            "22023",
            "rate_limits[0].rate",
        ),
        (
            serde_json::json!({"format": 1, "senders": [{"sender": "s1", "colour": "blue"}]}),
            "22023",
            "senders[0]",
        ),
        (
            serde_json::json!({"format": 1, "senders": [{"sender": "s1"}],
                               "rate_limits": [{"scope": "sender", "scope_id": "s1", "rate": 10},
                                               {"scope": "sender", "scope_id": "s1", "rate": 0, "per": "1 minute"}]}),
            "22023",
            "rate_limits[1]",
        ),
        (
            serde_json::json!({"format": 1, "caps": [{"scope": "brand", "scope_id": "b1", "cap": 5, "time_zone": "Mars/Base"}]}),
            "22023",
            "caps[0]",
        ),
        (
            serde_json::json!({"format": 1, "rate_limits": [{"scope": "planet", "scope_id": "x", "rate": 1}]}),
            "22P02",
            "rate_limits[0]",
        ),
        (serde_json::json!({"format": 2}), "22023", "format"),
    ];
    for (doc, state, path) in cases {
        let e = c
            .query("SELECT * FROM throttle.import_config($1)", &[&Json(&doc)])
            .expect_err("an invalid document");
        assert_eq!(sqlstate(&e), state, "{doc}: {e:?}");
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains(path), "{doc}: the message names {path}: {msg}");
        assert_eq!(export(&mut c), before, "{doc}: nothing changed");
    }
    // Only the owner imports.
    c.batch_execute("CREATE ROLE app LOGIN; SET ROLE app")
        .expect("as app");
    let e = c
        .query(
            "SELECT * FROM throttle.import_config($1)",
            &[&Json(&before)],
        )
        .expect_err("not the owner");
    assert_eq!(sqlstate(&e), "42501");
    let _ = export(&mut c); // anyone may export
}
