//! Provider profiles (sql/profiles.sql): throttle.apply_profile() against real servers.

use pg_throttle_tests::{
    assert_window_bound as assert_bound, count, sqlstate, wait_for, Client, Server,
};
use std::time::{Duration, Instant};

/// AT&T 10DLC message classes: class, SMS per minute (seed 001, Infobip "Throughput"), MMS per
/// minute, and whether AT&T counts the class per number rather than per campaign (G, N and Y:
/// Convey "10DLC Carrier Throughputs and Daily Limits"). MMS: the seed's rate for the classes
/// AT&T lets send MMS at their full rate since 11 October 2023 (A, B, C, D, S, K, X, P), 50 for
/// the others (Bandwidth "Increase to AT&T MMS throughputs"); the seed has E/F at 150, G n/a.
const ATT_CLASSES: [(&str, i64, i64, bool); 16] = [
    ("A", 4500, 2400, false),
    ("B", 4500, 2400, false),
    ("C", 2400, 1200, false),
    ("D", 2400, 1200, false),
    ("E", 240, 50, false),
    ("F", 240, 50, false),
    ("T", 75, 50, false),
    ("G", 60, 50, true),
    ("P", 2400, 1200, false),
    ("S", 60000, 2400, false),
    ("K", 3000, 2400, false),
    ("X", 4500, 2400, false),
    ("Z", 6, 50, false),
    ("Y", 720, 50, true),
    ("W", 15, 50, false),
    ("N", 60, 50, true),
];

/// The eight shipped profiles and their scopes.
const PROFILES: [(&str, &str); 10] = [
    ("att_10dlc", "campaign"),
    ("sendblue_account", "account"),
    ("sendblue_contacts", "sender"),
    ("sendblue_line", "sender"),
    ("tmobile_brand", "brand"),
    ("twilio_account", "account"),
    ("twilio_short_code", "sender"),
    ("verizon_10dlc", "campaign"),
    ("whatsapp", "sender"),
    ("whatsapp_pair", "sender"),
];

/// Rules shipped in throttle.profile_rule: 32 AT&T (16 classes, SMS and MMS), 4 T-Mobile,
/// 2 WhatsApp, 1 + 5 Twilio, 3 Sendblue line, 6 Sendblue account, 2 Verizon; contact rules
/// (0.5.0): 5 Sendblue contacts, 1 WhatsApp pair rate.
const SHIPPED_RULES: i64 = 61;

/// One row of apply_profile's answer.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    kind: String,
    name: String,
    id: i64,
    created: bool,
}

fn apply(
    c: &mut Client,
    profile: &str,
    scope: &str,
    scope_id: &str,
    class: Option<&str>,
) -> Vec<Applied> {
    try_apply(c, profile, scope, scope_id, class)
        .unwrap_or_else(|e| panic!("apply_profile({profile}, {scope}, {scope_id}, {class:?}): {e}"))
}

fn try_apply(
    c: &mut Client,
    profile: &str,
    scope: &str,
    scope_id: &str,
    class: Option<&str>,
) -> Result<Vec<Applied>, postgres::Error> {
    let rows = c.query(
        "SELECT kind, name, id, created
           FROM throttle.apply_profile($1::text, $2::text::throttle.scope, $3::text, $4::text)",
        &[&profile, &scope, &scope_id, &class],
    )?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            kind: r.get(0),
            name: r.get(1),
            id: r.get(2),
            created: r.get(3),
        })
        .collect())
}

/// Rows in the three limit tables.
fn limit_rows(c: &mut Client) -> (i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM throttle.rate_limit), (SELECT count(*) FROM throttle.cap),
                    (SELECT count(*) FROM throttle.queue_cap)",
            &[],
        )
        .expect("counts");
    (r.get(0), r.get(1), r.get(2))
}

/// Run `sql` (an enqueue), retrying while the worker has not counted the queue caps yet
/// (55000, documented as "retry": it counts them right after a configuration change commits).
fn when_counted(c: &mut Client, sql: &str) -> Result<(), postgres::Error> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match c.batch_execute(sql) {
            Err(e) if sqlstate(&e) == "55000" && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// A rate limit row as created.
#[derive(Debug, Clone, PartialEq)]
struct RateRow {
    scope: String,
    scope_id: String,
    carrier: Option<String>,
    channel: Option<String>,
    sender_type: Option<String>,
    rate: i64,
    per_ms: i64,
    /// None: window-exact (at most `rate` in every window of `per`).
    burst: Option<i64>,
    each_sender: bool,
}

/// The row a window-exact profile rule creates.
#[allow(clippy::too_many_arguments)]
fn exact(
    scope: &str,
    scope_id: &str,
    carrier: Option<&str>,
    channel: Option<&str>,
    sender_type: Option<&str>,
    rate: i64,
    per_ms: i64,
    each_sender: bool,
) -> RateRow {
    RateRow {
        scope: scope.into(),
        scope_id: scope_id.into(),
        carrier: carrier.map(str::to_string),
        channel: channel.map(str::to_string),
        sender_type: sender_type.map(str::to_string),
        rate,
        per_ms,
        burst: None,
        each_sender,
    }
}

fn rate_row(c: &mut Client, name: &str) -> RateRow {
    let r = c
        .query_one(
            "SELECT scope::text, scope_id, carrier, channel, sender_type, rate,
                    (extract(epoch FROM per) * 1000)::int8, burst, each_sender
               FROM throttle.rate_limit WHERE name = $1",
            &[&name],
        )
        .unwrap_or_else(|e| panic!("rate limit {name}: {e}"));
    RateRow {
        scope: r.get(0),
        scope_id: r.get(1),
        carrier: r.get(2),
        channel: r.get(3),
        sender_type: r.get(4),
        rate: r.get(5),
        per_ms: r.get(6),
        burst: r.get(7),
        each_sender: r.get(8),
    }
}

/// A calendar cap as created: (cap, period, reset_at, time_zone, overage_pct, warn_at, at_cap,
/// carrier, channel).
type CapRow = (
    i64,
    String,
    String,
    String,
    i32,
    Vec<i32>,
    String,
    Option<String>,
    Option<String>,
);

fn cap_row(c: &mut Client, name: &str) -> CapRow {
    let r = c
        .query_one(
            "SELECT cap, period::text, reset_at::text, time_zone, overage_pct, warn_at, at_cap::text,
                    carrier, channel
               FROM throttle.cap WHERE name = $1",
            &[&name],
        )
        .unwrap_or_else(|e| panic!("cap {name}: {e}"));
    (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
    )
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn sorted_names(got: &[Applied]) -> Vec<(String, String, bool)> {
    let mut names: Vec<(String, String, bool)> = got
        .iter()
        .map(|a| (a.kind.clone(), a.name.clone(), a.created))
        .collect();
    names.sort();
    names
}

#[test]
fn att_class_e_is_240_sms_and_50_mms_a_minute_window_exact_for_the_campaign() {
    let server = Server::start("profiles-att-e", &[]);
    let mut c = server.connect();
    let got = apply(&mut c, "att_10dlc", "campaign", "C123", Some("E"));
    assert_eq!(
        sorted_names(&got),
        vec![
            ("rate".into(), "att_10dlc/E/campaign:C123/mms".into(), true),
            ("rate".into(), "att_10dlc/E/campaign:C123/sms".into(), true),
        ]
    );
    assert_eq!(
        rate_row(&mut c, "att_10dlc/E/campaign:C123/sms"),
        exact(
            "campaign",
            "C123",
            Some("att"),
            Some("sms"),
            None,
            240,
            60_000,
            false
        )
    );
    // Seed 001 says 150 MMS; since October 2023 AT&T lets class E send 50 MMS a minute.
    assert_eq!(
        rate_row(&mut c, "att_10dlc/E/campaign:C123/mms"),
        exact(
            "campaign",
            "C123",
            Some("att"),
            Some("mms"),
            None,
            50,
            60_000,
            false
        )
    );
    assert_eq!(limit_rows(&mut c), (2, 0, 0));
    // The ids are the rows'.
    for a in &got {
        let id = count(
            &mut c,
            &format!(
                "SELECT limit_id FROM throttle.rate_limit WHERE name = '{}'",
                a.name
            ),
        );
        assert_eq!(id, a.id, "{}", a.name);
    }
    // The limits are live: a class-E campaign sender admits 240 SMS to AT&T at once, not 241,
    // and 50 MMS, not 51.
    c.batch_execute("INSERT INTO throttle.sender (sender, campaign) VALUES ('att-e-1', 'C123')")
        .expect("sender");
    let admitted = count(
        &mut c,
        "SELECT count(*) FILTER (WHERE throttle.try_admit('att-e-1', 'att', now(), 1, 'sms'))
           FROM generate_series(1, 241)",
    );
    assert_eq!(admitted, 240);
    let mms = count(
        &mut c,
        "SELECT count(*) FILTER (WHERE throttle.try_admit('att-e-1', 'att', now(), 1, 'mms'))
           FROM generate_series(1, 51)",
    );
    assert_eq!(mms, 50);
    // Another carrier is not under the AT&T limits.
    assert!(c
        .query_one(
            "SELECT throttle.try_admit('att-e-1', 'tmobile', now(), 1, 'sms')",
            &[]
        )
        .expect("tmobile")
        .get::<_, bool>(0));
}

#[test]
fn att_class_t_is_75_sms_and_50_mms_a_minute_shared_by_the_campaign() {
    let server = Server::start("profiles-att-t", &[]);
    let mut c = server.connect();
    let got = apply(&mut c, "att_10dlc", "campaign", "low-vol", Some("t"));
    assert_eq!(
        sorted_names(&got),
        vec![
            (
                "rate".into(),
                "att_10dlc/T/campaign:low-vol/mms".into(),
                true
            ),
            (
                "rate".into(),
                "att_10dlc/T/campaign:low-vol/sms".into(),
                true
            ),
        ]
    );
    assert_eq!(
        rate_row(&mut c, "att_10dlc/T/campaign:low-vol/sms"),
        exact(
            "campaign",
            "low-vol",
            Some("att"),
            Some("sms"),
            None,
            75,
            60_000,
            false
        )
    );
    assert_eq!(
        rate_row(&mut c, "att_10dlc/T/campaign:low-vol/mms"),
        exact(
            "campaign",
            "low-vol",
            Some("att"),
            Some("mms"),
            None,
            50,
            60_000,
            false
        )
    );
    // Per campaign: two numbers of the campaign share the 75 SMS (cost counts segments: a
    // 3-segment SMS takes 3).
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) VALUES ('t-1', 'low-vol'), ('t-2', 'low-vol')",
    )
    .expect("senders");
    let admitted = count(
        &mut c,
        "SELECT count(*) FILTER (WHERE throttle.try_admit(CASE WHEN g % 2 = 0 THEN 't-1' ELSE 't-2' END,
                                                          'att', now(), 3, 'sms'))
           FROM generate_series(1, 30) g",
    );
    assert_eq!(
        admitted, 25,
        "75 segments = 25 three-segment SMS for the whole campaign"
    );
}

#[test]
fn every_att_class_is_shipped_window_exact_with_its_numbers_and_g_n_y_per_number() {
    let server = Server::start("profiles-att-all", &[]);
    let mut c = server.connect();
    // The shipped table holds exactly these classes and numbers, every rate window-exact.
    type Shipped = (String, String, i64, i64, Option<i64>, String, String, bool);
    let mut shipped: Vec<Shipped> = c
        .query(
            "SELECT class, rule, rate, (extract(epoch FROM per) * 1000)::int8, burst, carrier, channel,
                    each_sender
               FROM throttle.profile_rule WHERE profile = 'att_10dlc' AND kind = 'rate' AND scope = 'campaign'",
            &[],
        )
        .expect("profile_rule")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    shipped.sort();
    let mut want: Vec<Shipped> = Vec::new();
    for (class, sms, mms, per_number) in ATT_CLASSES {
        for (channel, rate) in [("sms", sms), ("mms", mms)] {
            want.push((
                class.into(),
                channel.into(),
                rate,
                60_000,
                None,
                "att".into(),
                channel.into(),
                per_number,
            ));
        }
    }
    want.sort();
    assert_eq!(shipped, want);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profile_rule WHERE profile = 'att_10dlc'"
        ),
        32,
        "16 classes, SMS and MMS"
    );
    // Every rule says where it comes from.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profile_rule
              WHERE profile = 'att_10dlc' AND note LIKE '%seed 001%'
                AND (channel = 'sms' OR note LIKE '%October 2023%Bandwidth%')
                AND (each_sender = (note LIKE '%per number%Convey%'))"
        ),
        32
    );

    // Applied, each class gives those rows (class names in any case).
    for (class, sms, mms, per_number) in ATT_CLASSES {
        let campaign = format!("camp-{class}");
        let asked = if class == "S" {
            "s".to_string()
        } else {
            class.to_string()
        };
        let got = apply(&mut c, "att_10dlc", "campaign", &campaign, Some(&asked));
        assert_eq!(got.len(), 2, "class {class}");
        assert!(
            got.iter().all(|a| a.created && a.kind == "rate"),
            "class {class}"
        );
        for (channel, rate) in [("sms", sms), ("mms", mms)] {
            assert_eq!(
                rate_row(
                    &mut c,
                    &format!("att_10dlc/{class}/campaign:{campaign}/{channel}")
                ),
                exact(
                    "campaign",
                    &campaign,
                    Some("att"),
                    Some(channel),
                    None,
                    rate,
                    60_000,
                    per_number
                ),
                "class {class} {channel}"
            );
        }
    }
    assert_eq!(limit_rows(&mut c), (32, 0, 0));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.rate_limit WHERE burst IS NOT NULL"
        ),
        0,
        "every created rate limit is window-exact"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.rate_limit WHERE each_sender"
        ),
        6,
        "classes G, N and Y, SMS and MMS"
    );
    // Discovery lists them too.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profiles
              WHERE profile = 'att_10dlc' AND scope = 'campaign'
                AND summary LIKE '%/min, window-exact%carrier att%'"
        ),
        32
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profiles
              WHERE profile = 'att_10dlc' AND summary LIKE '%each sender on its own%'"
        ),
        6
    );

    // Per number: two numbers of a class-N campaign admit 60 SMS each at once, not 60 in all.
    each_number_admits(&mut c, "camp-N", ["n-1", "n-2"], "att", "sms", 60);
}

/// Two new numbers of `campaign` each admit `n` at once on (carrier, channel), and no more:
/// a limit each sender has on its own.
fn each_number_admits(
    c: &mut Client,
    campaign: &str,
    senders: [&str; 2],
    carrier: &str,
    channel: &str,
    n: i64,
) {
    for sender in senders {
        c.execute(
            "INSERT INTO throttle.sender (sender, campaign) VALUES ($1, $2)",
            &[&sender, &campaign],
        )
        .expect("sender");
    }
    for sender in senders {
        let admitted = count(
            c,
            &format!(
                "SELECT count(*) FILTER (WHERE throttle.try_admit('{sender}', '{carrier}', now(), 1, '{channel}'))
                   FROM generate_series(1, {})",
                n + 1
            ),
        );
        assert_eq!(admitted, n, "{sender}: its own {n}");
    }
}

#[test]
fn verizon_10dlc_gives_each_number_of_the_campaign_6000_sms_a_minute_and_25_mms_a_second() {
    let server = Server::start("profiles-verizon", &[]);
    let mut c = server.connect();
    let got = apply(&mut c, "verizon_10dlc", "campaign", "V1", None);
    assert_eq!(
        sorted_names(&got),
        vec![
            ("rate".into(), "verizon_10dlc/campaign:V1/mms".into(), true),
            ("rate".into(), "verizon_10dlc/campaign:V1/sms".into(), true),
        ]
    );
    assert_eq!(
        rate_row(&mut c, "verizon_10dlc/campaign:V1/sms"),
        exact(
            "campaign",
            "V1",
            Some("verizon"),
            Some("sms"),
            None,
            6000,
            60_000,
            true
        )
    );
    assert_eq!(
        rate_row(&mut c, "verizon_10dlc/campaign:V1/mms"),
        exact(
            "campaign",
            "V1",
            Some("verizon"),
            Some("mms"),
            None,
            25,
            1_000,
            true
        )
    );
    // The source is named (not in the seeds).
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profile_rule WHERE profile = 'verizon_10dlc' AND note LIKE '%Convey%'"
        ),
        2
    );
    // It stacks with AT&T's profile on the same campaign (different carrier), and has no classes.
    apply(&mut c, "att_10dlc", "campaign", "V1", Some("A"));
    let e = try_apply(&mut c, "verizon_10dlc", "campaign", "V1", Some("A")).expect_err("class");
    assert_eq!(sqlstate(&e), "22023");
    assert_eq!(limit_rows(&mut c), (4, 0, 0));
    // Each number on its own: two numbers of the campaign admit 25 MMS each at once.
    each_number_admits(&mut c, "V1", ["v-1", "v-2"], "verizon", "mms", 25);
}

#[test]
fn applying_twice_creates_nothing_and_overrides_survive() {
    let server = Server::start("profiles-idempotent", &[]);
    let mut c = server.connect();
    let plan: [(&str, &str, &str, Option<&str>); 12] = [
        ("att_10dlc", "campaign", "C1", Some("A")),
        ("att_10dlc", "campaign", "C2", Some("Y")),
        ("verizon_10dlc", "campaign", "C1", None),
        ("tmobile_brand", "brand", "acme", Some("low_mid")),
        ("twilio_account", "account", "acme", None),
        ("twilio_short_code", "sender", "12345", None),
        ("whatsapp", "sender", "+15550001", Some("high")),
        ("sendblue_line", "sender", "+15550002", None),
        ("sendblue_line", "sender", "+15550003", Some("expanded")),
        ("sendblue_account", "account", "sb", None),
        ("sendblue_account", "account", "sb-blue", Some("blue")),
        (
            "sendblue_account",
            "account",
            "sb-sapphire",
            Some("Sapphire"),
        ),
    ];
    let mut first = Vec::new();
    for (profile, scope, id, class) in plan {
        let got = apply(&mut c, profile, scope, id, class);
        assert!(!got.is_empty(), "{profile}");
        assert!(got.iter().all(|a| a.created), "{profile}: {got:?}");
        first.push(got);
    }
    let before = limit_rows(&mut c);
    assert_eq!(
        before,
        (2 + 2 + 2 + 4 + 1 + 1 + 1 + 1, 1 + 2 + 2 + 2, 1 + 2)
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.rate_limit WHERE burst IS NOT NULL"
        ),
        0,
        "every created rate limit is window-exact"
    );

    // Overrides of a rate, a cap and a queue cap.
    c.batch_execute(
        "UPDATE throttle.rate_limit SET rate = 4000, burst = 100 WHERE name = 'att_10dlc/A/campaign:C1/sms';
         UPDATE throttle.rate_limit SET each_sender = false WHERE name = 'att_10dlc/Y/campaign:C2/sms';
         UPDATE throttle.cap SET cap = 12000 WHERE name = 'tmobile_brand/low_mid/brand:acme/daily';
         UPDATE throttle.cap SET overage_pct = 50, warn_at = '{100}' WHERE name = 'sendblue_account/blue/account:sb-blue/monthly';
         UPDATE throttle.queue_cap SET max_waiting = 1000 WHERE name = 'sendblue_line/standard/sender:+15550002/queue';",
    )
    .expect("override");

    for ((profile, scope, id, class), was) in plan.iter().zip(&first) {
        let again = apply(&mut c, profile, scope, id, *class);
        let expect: Vec<Applied> = was
            .iter()
            .map(|a| Applied {
                created: false,
                ..a.clone()
            })
            .collect();
        assert_eq!(again, expect, "{profile} again");
    }
    assert_eq!(
        limit_rows(&mut c),
        before,
        "nothing created the second time"
    );
    let r = rate_row(&mut c, "att_10dlc/A/campaign:C1/sms");
    assert_eq!(
        (r.rate, r.burst),
        (4000, Some(100)),
        "the rate override is kept"
    );
    assert!(
        !rate_row(&mut c, "att_10dlc/Y/campaign:C2/sms").each_sender,
        "the each_sender override is kept"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT cap FROM throttle.cap WHERE name = 'tmobile_brand/low_mid/brand:acme/daily'"
        ),
        12000,
        "the cap override is kept"
    );
    let r = cap_row(&mut c, "sendblue_account/blue/account:sb-blue/monthly");
    assert_eq!(
        (r.4, r.5),
        (50, vec![100]),
        "the overage and warn_at override is kept"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT max_waiting FROM throttle.queue_cap WHERE name = 'sendblue_line/standard/sender:+15550002/queue'"
        ),
        1000,
        "the queue cap override is kept"
    );
    // A deleted rule comes back, alone, as shipped.
    c.batch_execute(
        "DELETE FROM throttle.rate_limit WHERE name = 'att_10dlc/A/campaign:C1/mms';
         DELETE FROM throttle.cap WHERE name = 'sendblue_account/sapphire/account:sb-sapphire/monthly';",
    )
    .expect("delete");
    let got = apply(&mut c, "att_10dlc", "campaign", "C1", Some("A"));
    let created: Vec<&str> = got
        .iter()
        .filter(|a| a.created)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(created, vec!["att_10dlc/A/campaign:C1/mms"]);
    assert_eq!(
        rate_row(&mut c, "att_10dlc/A/campaign:C1/mms"),
        exact(
            "campaign",
            "C1",
            Some("att"),
            Some("mms"),
            None,
            2400,
            60_000,
            false
        )
    );
    let got = apply(
        &mut c,
        "sendblue_account",
        "account",
        "sb-sapphire",
        Some("sapphire"),
    );
    let created: Vec<&str> = got
        .iter()
        .filter(|a| a.created)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(
        created,
        vec!["sendblue_account/sapphire/account:sb-sapphire/monthly"]
    );
    assert_eq!(limit_rows(&mut c), before);
}

#[test]
fn tmobile_score_62_is_a_40000_daily_cap_at_midnight_los_angeles_deferred_to_eight() {
    let server = Server::start("profiles-tmobile", &[]);
    let mut c = server.connect();
    let got = apply(&mut c, "tmobile_brand", "brand", "acme", Some("62"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, "cap");
    assert_eq!(got[0].name, "tmobile_brand/high_mid/brand:acme/daily");
    assert!(got[0].created);
    let r = c
        .query_one(
            "SELECT cap_id, scope::text, scope_id, local_time::text, error_code
               FROM throttle.cap WHERE name = 'tmobile_brand/high_mid/brand:acme/daily'",
            &[],
        )
        .expect("cap");
    let id: i64 = r.get(0);
    assert_eq!(id, got[0].id);
    let (scope, scope_id, local_time, code): (String, String, String, Option<String>) =
        (r.get(1), r.get(2), r.get(3), r.get(4));
    assert_eq!(
        (scope.as_str(), scope_id.as_str(), local_time.as_str(), code),
        ("brand", "acme", "08:00:00", some("542"))
    );
    // No channel: SMS and MMS count against the same cap, in cost (an MMS costs 1).
    assert_eq!(
        cap_row(&mut c, "tmobile_brand/high_mid/brand:acme/daily"),
        (
            40000,
            "day".into(),
            "00:00:00".into(),
            "America/Los_Angeles".into(),
            0,
            vec![75, 90, 100],
            "defer_local".into(),
            some("tmobile"),
            None
        )
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profile_rule
              WHERE profile = 'tmobile_brand' AND note LIKE '%SMS segments and MMS messages%MMS with cost 1%'"
        ),
        4
    );
    // Every tier, by name and by the edges of its vetting scores (Russell 3000 = high).
    for (class, cap) in [
        ("0", 2000i64),
        ("24", 2000),
        ("low", 2000),
        ("25", 10000),
        ("49", 10000),
        ("low_mid", 10000),
        ("50", 40000),
        ("74", 40000),
        ("high_mid", 40000),
        ("75", 200000),
        ("100", 200000),
        ("high", 200000),
    ] {
        let brand = format!("brand-{class}");
        let got = apply(&mut c, "tmobile_brand", "brand", &brand, Some(class));
        assert_eq!(got.len(), 1, "{class}");
        assert_eq!(
            count(
                &mut c,
                &format!("SELECT cap FROM throttle.cap WHERE cap_id = {}", got[0].id)
            ),
            cap,
            "class {class}"
        );
    }
    // The cap's window in cap_state ends at midnight in Los Angeles.
    let midnight: bool = c
        .query_one(
            "SELECT (window_end AT TIME ZONE 'America/Los_Angeles')::time = '00:00'
               FROM throttle.cap_state WHERE name = 'tmobile_brand/high_mid/brand:acme/daily'",
            &[],
        )
        .expect("cap_state")
        .get(0);
    assert!(midnight);
}

#[test]
fn sendblue_account_default_and_plans_blue_and_sapphire() {
    let server = Server::start("profiles-sendblue-account", &[]);
    let mut c = server.connect();
    // The default class (seed 004): 2,000 an hour and 4,000 a day (03:00 New York), deferred.
    let got = apply(&mut c, "sendblue_account", "account", "sb", None);
    assert_eq!(
        sorted_names(&got),
        vec![
            (
                "cap".into(),
                "sendblue_account/default/account:sb/daily".into(),
                true
            ),
            (
                "cap".into(),
                "sendblue_account/default/account:sb/hourly".into(),
                true
            ),
        ]
    );
    let ny = || "America/New_York".to_string();
    let warn = || vec![75, 90, 100];
    assert_eq!(
        cap_row(&mut c, "sendblue_account/default/account:sb/hourly"),
        (
            2000,
            "hour".into(),
            "00:00:00".into(),
            ny(),
            0,
            warn(),
            "defer".into(),
            None,
            None
        )
    );
    assert_eq!(
        cap_row(&mut c, "sendblue_account/default/account:sb/daily"),
        (
            4000,
            "day".into(),
            "03:00:00".into(),
            ny(),
            0,
            warn(),
            "defer".into(),
            None,
            None
        )
    );
    // The plans (seed 002): a daily throttle, and a monthly limit that may reach 120 % with
    // notices at 75, 90 and 100 %.
    for (class, account, n) in [("blue", "sb-b", 2000i64), ("Sapphire", "sb-s", 6000)] {
        let lower = class.to_lowercase();
        let got = apply(&mut c, "sendblue_account", "account", account, Some(class));
        assert_eq!(
            sorted_names(&got),
            vec![
                (
                    "cap".into(),
                    format!("sendblue_account/{lower}/account:{account}/daily"),
                    true
                ),
                (
                    "cap".into(),
                    format!("sendblue_account/{lower}/account:{account}/monthly"),
                    true
                ),
            ]
        );
        assert_eq!(
            cap_row(
                &mut c,
                &format!("sendblue_account/{lower}/account:{account}/daily")
            ),
            (
                n,
                "day".into(),
                "03:00:00".into(),
                ny(),
                0,
                warn(),
                "defer".into(),
                None,
                None
            ),
            "{class} daily"
        );
        assert_eq!(
            cap_row(
                &mut c,
                &format!("sendblue_account/{lower}/account:{account}/monthly")
            ),
            (
                n,
                "month".into(),
                "03:00:00".into(),
                ny(),
                20,
                warn(),
                "defer".into(),
                None,
                None
            ),
            "{class} monthly"
        );
        // cap_state: the month allows 120 %, and its window starts on the 1st in New York.
        let r = c
            .query_one(
                "SELECT allowed, extract(day FROM window_start AT TIME ZONE 'America/New_York')::int8
                   FROM throttle.cap_state WHERE name = $1",
                &[&format!("sendblue_account/{lower}/account:{account}/monthly")],
            )
            .expect("cap_state");
        let (allowed, day): (i64, i64) = (r.get(0), r.get(1));
        assert_eq!((allowed, day), (n * 120 / 100, 1), "{class}");
    }
    // Discovery shows the overage and the notices.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profiles
              WHERE profile = 'sendblue_account' AND rule = 'monthly'
                AND summary LIKE '%/month%overage 20 %%warn at 75/90/100 %%' AND note LIKE '%seed 002%'"
        ),
        2
    );
    // One plan per account: another class on the same account is refused.
    let e = try_apply(
        &mut c,
        "sendblue_account",
        "account",
        "sb-b",
        Some("sapphire"),
    )
    .expect_err("stack");
    assert_eq!(sqlstate(&e), "22023");
    assert_eq!(limit_rows(&mut c), (0, 6, 0));
}

#[test]
fn the_other_profiles_create_the_rules_of_their_providers() {
    let server = Server::start("profiles-others", &[]);
    let mut c = server.connect();
    // WhatsApp: standard by default (80/s), high 1,000/s; Meta counts inbound as well.
    let got = apply(&mut c, "whatsapp", "sender", "+15550100", None);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "whatsapp/standard/sender:+15550100/rate");
    assert_eq!(
        rate_row(&mut c, "whatsapp/standard/sender:+15550100/rate"),
        exact("sender", "+15550100", None, None, None, 80, 1000, false)
    );
    apply(&mut c, "whatsapp", "sender", "+15550101", Some("high"));
    assert_eq!(
        rate_row(&mut c, "whatsapp/high/sender:+15550101/rate"),
        exact("sender", "+15550101", None, None, None, 1000, 1000, false)
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.rate_limit
              WHERE name LIKE 'whatsapp/%' AND note LIKE '%Meta counts%inbound messages as well as%outbound%'"
        ),
        2
    );
    // Twilio short code: 100 MPS.
    apply(&mut c, "twilio_short_code", "sender", "12345", None);
    assert_eq!(
        rate_row(&mut c, "twilio_short_code/sender:12345/rate"),
        exact("sender", "12345", None, None, None, 100, 1000, false)
    );
    // Twilio account: per sender type and channel, and a 4-hour queue (error 30001).
    let got = apply(&mut c, "twilio_account", "account", "acme", None);
    assert_eq!(got.len(), 5);
    for (rule, sender_type, channel, rate) in [
        ("sms_short_code", "short_code", "sms", 500),
        ("sms_toll_free", "toll_free", "sms", 100),
        ("mms_short_code", "short_code", "mms", 100),
        ("mms_toll_free", "toll_free", "mms", 25),
    ] {
        assert_eq!(
            rate_row(&mut c, &format!("twilio_account/account:acme/{rule}")),
            exact(
                "account",
                "acme",
                None,
                Some(channel),
                Some(sender_type),
                rate,
                1000,
                false
            ),
            "{rule}"
        );
    }
    let q = c
        .query_one(
            "SELECT queue_cap_id, max_waiting, (extract(epoch FROM validity))::int8, error_code
               FROM throttle.queue_cap WHERE name = 'twilio_account/account:acme/queue' AND scope = 'account' AND scope_id = 'acme'",
            &[],
        )
        .expect("queue cap");
    let (qid, max_waiting, validity, code): (i64, Option<i64>, i64, Option<String>) =
        (q.get(0), q.get(1), q.get(2), q.get(3));
    assert!(got.iter().any(|a| a.kind == "queue_cap" && a.id == qid));
    assert_eq!((max_waiting, validity, code), (None, 14_400, some("30001")));
    // Sendblue line: 1/s, 1,500 queued (standard, the default) or 6,000 (expanded).
    let got = apply(&mut c, "sendblue_line", "sender", "+15550200", None);
    let mut names: Vec<&str> = got.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "sendblue_line/sender:+15550200/rate",
            "sendblue_line/standard/sender:+15550200/queue"
        ]
    );
    assert_eq!(
        rate_row(&mut c, "sendblue_line/sender:+15550200/rate"),
        exact("sender", "+15550200", None, None, None, 1, 1000, false)
    );
    apply(
        &mut c,
        "sendblue_line",
        "sender",
        "+15550201",
        Some("expanded"),
    );
    for (name, max) in [
        ("sendblue_line/standard/sender:+15550200/queue", 1500i64),
        ("sendblue_line/expanded/sender:+15550201/queue", 6000),
    ] {
        let r = c
            .query_one(
                "SELECT max_waiting, error_code FROM throttle.queue_cap WHERE name = $1",
                &[&name],
            )
            .expect(name);
        let (m, e): (Option<i64>, Option<String>) = (r.get(0), r.get(1));
        assert_eq!((m, e), (Some(max), some("429")), "{name}");
    }
    // The Twilio queue's size is its slowest rate (25 MPS) x 4 h: an enqueue by a sender of
    // the account has the worker count it.
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account, sender_type) VALUES ('tw-1', 'acme', 'short_code')",
    )
    .expect("sender");
    when_counted(&mut c, "SELECT throttle.enqueue('tw-1', 'att')").expect("enqueue");
    assert_eq!(
        count(
            &mut c,
            "SELECT max_waiting FROM throttle.queue_cap_state
              WHERE name = 'twilio_account/account:acme/queue' AND counted"
        ),
        25 * 14_400
    );
    // Every profile is listed for discovery, with its one scope; every rate is window-exact.
    let listed: Vec<(String, String)> = c
        .query(
            "SELECT DISTINCT profile, scope::text FROM throttle.profiles ORDER BY 1",
            &[],
        )
        .expect("profiles")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, String)> = PROFILES
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    assert_eq!(listed, want);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profiles WHERE summary IS NULL OR summary = ''"
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profile_rule WHERE kind = 'rate' AND burst IS NOT NULL"
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profiles WHERE kind = 'rate' AND summary NOT LIKE '%window-exact%'"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.profile_rule"),
        SHIPPED_RULES
    );
}

/// The upgrade script from 0.1.0 replaces the shipped rules with the same statements as a fresh
/// install (sql/profiles.sql), and gives profile_rule the same constraints. (apply_profile and
/// the view changed after 0.2.0: their bodies are compared by tests/upgrade.rs.)
#[test]
fn the_upgrade_from_0_1_0_ships_the_same_profiles_as_a_fresh_install() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
    let fresh = std::fs::read_to_string(dir.join("profiles.sql")).expect("profiles.sql");
    let upgrade = std::fs::read_to_string(dir.join("pg_throttle--0.1.0--0.2.0.sql"))
        .expect("pg_throttle--0.1.0--0.2.0.sql");
    let between = |text: &str, begin: &str, end: &str| -> String {
        let b = text
            .find(begin)
            .unwrap_or_else(|| panic!("{begin:?} missing"));
        let e = text[b..]
            .find(end)
            .unwrap_or_else(|| panic!("{end:?} missing"));
        text[b..b + e + end.len()].to_string()
    };
    let shipped = between(
        &fresh,
        "-- BEGIN shipped profiles\n",
        "-- END shipped profiles\n",
    );
    let section = between(&upgrade, "-- BEGIN profiles\n", "-- END profiles\n");
    // Every statement that inserts shipped rules, in order.
    let rules = |text: &str| -> Vec<String> {
        text.split("INSERT INTO throttle.profile_rule")
            .skip(1)
            .map(|s| s.split(";\n").next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(rules(&shipped).len(), 9);
    assert_eq!(
        rules(&section),
        rules(&shipped),
        "the upgrade's profiles section must insert sql/profiles.sql's shipped rules verbatim"
    );
    assert!(section.contains("DELETE FROM throttle.profile_rule;"));
    // The table's 0.2.0 columns and constraints, the same in both (whitespace aside).
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (fresh_flat, section_flat) = (flat(&fresh), flat(&section));
    for (begin, end) in [
        ("profile_rule_columns CHECK (", "END)"),
        ("profile_rule_each_sender CHECK (", "'sender'))"),
        ("each_sender boolean", "false"),
        ("warn_at integer[] CHECK (", "1100 >= ALL (warn_at))"),
    ] {
        let f = between(&fresh_flat, begin, end);
        let u = between(&section_flat, begin, end);
        assert_eq!(f, u, "{begin}");
    }
}

#[test]
fn bad_arguments_are_refused_with_the_valid_choices_and_change_nothing() {
    let server = Server::start("profiles-bad", &[]);
    let mut c = server.connect();
    apply(&mut c, "att_10dlc", "campaign", "C1", Some("E"));
    apply(&mut c, "tmobile_brand", "brand", "acme", Some("low"));
    c.batch_execute(
        "INSERT INTO throttle.rate_limit (name, scope, scope_id, rate)
         VALUES ('whatsapp/high/sender:+15550300/rate', 'sender', 'someone-else', 5)",
    )
    .expect("a row with a profile's name");
    let before = limit_rows(&mut c);
    let att_classes = "A, B, C, D, E, F, T, G, P, S, K, X, Z, Y, W, N";
    let tiers = "low, low_mid, high_mid, high";
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        &'a str,
        Vec<String>,
    );
    let cases: Vec<Case> = vec![
        // (profile, scope, class, scope_id, SQLSTATE, what the hint must list)
        (
            "att_100dlc",
            "campaign",
            Some("E"),
            "C2",
            "22023",
            PROFILES.iter().map(|(p, _)| p.to_string()).collect(),
        ),
        (
            "att_10dlc",
            "campaign",
            None,
            "C2",
            "22023",
            vec![att_classes.into()],
        ),
        (
            "att_10dlc",
            "campaign",
            Some(""),
            "C2",
            "22023",
            vec![att_classes.into()],
        ),
        (
            "att_10dlc",
            "campaign",
            Some("Q"),
            "C2",
            "22023",
            vec![att_classes.into()],
        ),
        (
            "att_10dlc",
            "campaign",
            Some("5"),
            "C2",
            "22023",
            vec![att_classes.into()],
        ),
        (
            "att_10dlc",
            "sender",
            Some("E"),
            "C2",
            "22023",
            vec!["campaign".into()],
        ),
        (
            "tmobile_brand",
            "brand",
            None,
            "b2",
            "22023",
            vec![tiers.into(), "75-100 high".into()],
        ),
        (
            "tmobile_brand",
            "brand",
            Some("101"),
            "b2",
            "22023",
            vec![tiers.into(), "0-24 low".into()],
        ),
        (
            "tmobile_brand",
            "brand",
            Some("premium"),
            "b2",
            "22023",
            vec![tiers.into()],
        ),
        (
            "tmobile_brand",
            "campaign",
            Some("low"),
            "b2",
            "22023",
            vec!["brand".into()],
        ),
        (
            "whatsapp",
            "sender",
            Some("ultra"),
            "+1",
            "22023",
            vec!["standard, high".into()],
        ),
        (
            "sendblue_line",
            "account",
            None,
            "a",
            "22023",
            vec!["sender".into()],
        ),
        (
            "twilio_short_code",
            "sender",
            Some("x"),
            "1",
            "22023",
            vec!["none".into()],
        ),
        (
            "twilio_account",
            "sender",
            None,
            "1",
            "22023",
            vec!["account".into()],
        ),
        (
            "sendblue_account",
            "account",
            Some("gold"),
            "sb",
            "22023",
            vec!["default, blue, sapphire".into()],
        ),
        (
            "verizon_10dlc",
            "sender",
            None,
            "+1",
            "22023",
            vec!["campaign".into()],
        ),
        ("whatsapp", "sender", None, "", "22023", vec![]),
        // Another class of the same profile on the same scope: the rows to delete are named.
        ("att_10dlc", "campaign", Some("A"), "C1", "22023", vec![]),
        (
            "tmobile_brand",
            "brand",
            Some("80"),
            "acme",
            "22023",
            vec![],
        ),
        // The name is taken by a row of another scope.
        (
            "whatsapp",
            "sender",
            Some("high"),
            "+15550300",
            "22023",
            vec![],
        ),
    ];
    for (profile, scope, class, scope_id, code, hint_has) in cases {
        let what = format!("apply_profile({profile}, {scope}, {scope_id}, {class:?})");
        let e = try_apply(&mut c, profile, scope, scope_id, class).expect_err(&what);
        assert_eq!(sqlstate(&e), code, "{what}: {e}");
        let db = e.as_db_error().expect("db error");
        let hint = db.hint().unwrap_or_default();
        assert!(!hint.is_empty(), "{what}: no hint");
        for h in &hint_has {
            assert!(
                hint.contains(h.as_str()),
                "{what}: hint {hint:?} lacks {h:?}"
            );
        }
        assert_eq!(limit_rows(&mut c), before, "{what} changed nothing");
    }
    // The stacking refusal names the rows in place.
    let e = try_apply(&mut c, "att_10dlc", "campaign", "C1", Some("A")).expect_err("stack");
    let detail = e
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("att_10dlc/E/campaign:C1/sms")
            && detail.contains("att_10dlc/E/campaign:C1/mms"),
        "{detail}"
    );
    // NULL arguments: 22004.
    for sql in [
        "SELECT * FROM throttle.apply_profile(NULL, 'sender', 'x')",
        "SELECT * FROM throttle.apply_profile('whatsapp', NULL, 'x')",
        "SELECT * FROM throttle.apply_profile('whatsapp', 'sender', NULL)",
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), "22004", "{sql}: {e}");
    }
    assert_eq!(limit_rows(&mut c), before);
    // Applying is for the owner; reading the profiles is for everyone.
    c.batch_execute("CREATE ROLE profiles_app LOGIN")
        .expect("role");
    let mut app = Client::connect(
        &server
            .conninfo()
            .replace("user=postgres", "user=profiles_app"),
        postgres::NoTls,
    )
    .expect("connect as profiles_app");
    let e = app
        .batch_execute("SELECT * FROM throttle.apply_profile('whatsapp', 'sender', 'x')")
        .expect_err("not for PUBLIC");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM throttle.profiles"),
        SHIPPED_RULES
    );
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM throttle.profile_rule"),
        SHIPPED_RULES
    );
    assert_eq!(limit_rows(&mut c), before);
}

/// A line under the sendblue_line profile releases one message a second, and its queue holds
/// 1,500 (HTTP 429 beyond).
#[test]
fn a_sendblue_line_releases_one_message_a_second_and_queues_at_most_1500() {
    let server = Server::start("profiles-sendblue", &[]);
    let mut c = server.connect();
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('sb-line'), ('sb-full')")
        .expect("senders");
    apply(&mut c, "sendblue_line", "sender", "sb-line", None);
    apply(
        &mut c,
        "sendblue_line",
        "sender",
        "sb-full",
        Some("standard"),
    );
    // 1,501 at once do not fit in 1,500 places (counted at enqueue, before any release).
    let e = when_counted(
        &mut c,
        "SELECT throttle.enqueue('sb-full', 'att') FROM generate_series(1, 1501)",
    )
    .expect_err("over the cap");
    assert_eq!(sqlstate(&e), "PT429", "{e}");
    let detail = e
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("max_waiting: 1500") && detail.contains("429"),
        "{detail}"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.pending"),
        0,
        "nothing changed"
    );

    // Five messages on the line: one at once, then one a second.
    when_counted(
        &mut c,
        "SELECT throttle.enqueue('sb-line', 'att') FROM generate_series(1, 5)",
    )
    .expect("enqueue");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready WHERE sender = 'sb-line'",
        Duration::from_secs(15),
        |n| n == 5,
    );
    assert_eq!(n, 5);
    let mut times: Vec<i64> = c
        .query(
            "SELECT (extract(epoch FROM released_at) * 1000000)::int8 FROM throttle.ready WHERE sender = 'sb-line'",
            &[],
        )
        .expect("ready")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_bound("sb-line", &times, 1, 1_000_000, 1);
    times.sort();
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (1_000_000..=1_300_000).contains(&gap),
            "gap {gap} µs: outside 1.0–1.3 s"
        );
    }
}

/// Limits applied from 0.1.0's profiles survive `ALTER EXTENSION pg_throttle UPDATE` as they
/// are; the update warns about those whose rule changed, renames 0.1.0's sendblue_account rows
/// to its default class, and applying the profiles again then adds only the new rules.
#[test]
fn limits_applied_under_0_1_0_are_kept_and_the_update_says_which_rules_changed() {
    let server = Server::start("profiles-upgrade", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    c.batch_execute(
        "DROP EXTENSION pg_throttle;
         CREATE EXTENSION pg_throttle VERSION '0.1.0';",
    )
    .expect("install 0.1.0");
    for (profile, scope, id, class) in [
        ("att_10dlc", "campaign", "C-E", Some("E")),
        ("att_10dlc", "campaign", "C-G", Some("G")),
        ("att_10dlc", "campaign", "C-A", Some("A")),
        ("sendblue_account", "account", "sb", None),
        ("tmobile_brand", "brand", "acme", Some("low")),
    ] {
        apply(&mut c, profile, scope, id, class);
    }
    let before = limit_rows(&mut c);
    let caps_before: Vec<(i64, String)> = c
        .query("SELECT cap_id, name FROM throttle.cap ORDER BY cap_id", &[])
        .expect("caps")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // Update through a connection that keeps the warnings.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut config: postgres::Config = server.conninfo().parse().expect("conninfo");
    config.notice_callback(move |n| {
        seen.lock().unwrap().push(format!(
            "{} {} | {} | {}",
            n.severity(),
            n.message(),
            n.detail().unwrap_or_default(),
            n.hint().unwrap_or_default()
        ))
    });
    let mut u = config.connect(postgres::NoTls).expect("connect");
    u.batch_execute("ALTER EXTENSION pg_throttle UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    drop(u);
    let notices = notices.lock().unwrap().clone();
    let warning: Vec<&String> = notices
        .iter()
        .filter(|n| n.contains("changed the provider rules"))
        .collect();
    assert_eq!(warning.len(), 1, "{notices:?}");
    assert!(
        warning[0].starts_with("WARNING")
            && warning[0].contains("behind 2 limits")
            && warning[0].contains("att_10dlc/E/campaign:C-E/mms")
            && warning[0].contains("att_10dlc/G/campaign:C-G/sms")
            && warning[0].contains("apply its profile again"),
        "{}",
        warning[0]
    );

    // Nothing was created or deleted; the applied rows keep their 0.1.0 numbers.
    assert_eq!(limit_rows(&mut c), before);
    assert_eq!(
        rate_row(&mut c, "att_10dlc/E/campaign:C-E/mms"),
        exact(
            "campaign",
            "C-E",
            Some("att"),
            Some("mms"),
            None,
            150,
            60_000,
            false
        )
    );
    assert!(!rate_row(&mut c, "att_10dlc/G/campaign:C-G/sms").each_sender);
    // 0.1.0's sendblue_account rows are its default class now: same ids, new names.
    let caps_after: Vec<(i64, String)> = c
        .query("SELECT cap_id, name FROM throttle.cap ORDER BY cap_id", &[])
        .expect("caps")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let renamed: Vec<(i64, String)> = caps_before
        .iter()
        .map(|(id, name)| {
            (
                *id,
                name.replace(
                    "sendblue_account/account:",
                    "sendblue_account/default/account:",
                ),
            )
        })
        .collect();
    assert_eq!(caps_after, renamed);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.profile_rule"),
        SHIPPED_RULES
    );

    // Applying again creates only the rules 0.1.0 did not have (class G's MMS).
    let mut created = Vec::new();
    for (profile, scope, id, class) in [
        ("att_10dlc", "campaign", "C-E", Some("E")),
        ("att_10dlc", "campaign", "C-G", Some("G")),
        ("att_10dlc", "campaign", "C-A", Some("A")),
        ("sendblue_account", "account", "sb", None),
        ("tmobile_brand", "brand", "acme", Some("low")),
    ] {
        created.extend(
            apply(&mut c, profile, scope, id, class)
                .into_iter()
                .filter(|a| a.created)
                .map(|a| a.name),
        );
    }
    assert_eq!(created, vec!["att_10dlc/G/campaign:C-G/mms".to_string()]);
    // A deleted row comes back with the new rule.
    c.batch_execute("DELETE FROM throttle.rate_limit WHERE name = 'att_10dlc/E/campaign:C-E/mms'")
        .expect("delete");
    apply(&mut c, "att_10dlc", "campaign", "C-E", Some("E"));
    assert_eq!(
        rate_row(&mut c, "att_10dlc/E/campaign:C-E/mms"),
        exact(
            "campaign",
            "C-E",
            Some("att"),
            Some("mms"),
            None,
            50,
            60_000,
            false
        )
    );
}

/// `apply_profile` over many scopes at once: set-based, all or nothing, the same rows the
/// one-scope form makes, kept when they exist.
#[test]
fn a_profile_goes_on_many_scopes_at_once_all_or_nothing() {
    let server = Server::start("profiles-many", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) SELECT 'pm-' || g, 'pm-camp' FROM generate_series(1, 5) g;
         INSERT INTO throttle.sender (sender) VALUES ('pm-solo');",
    )
    .expect("senders");
    let rows = c
        .query(
            "SELECT scope_id, kind, name, created FROM throttle.apply_profile('sendblue_line', 'sender',
                    ARRAY(SELECT sender FROM throttle.sender WHERE campaign = 'pm-camp'))",
            &[],
        )
        .expect("every sender of the campaign");
    assert_eq!(
        rows.len(),
        10,
        "a rate and a queue cap for each of five lines"
    );
    assert!(rows.iter().all(|r| r.get::<_, bool>(3)));
    let first: (String, String, String) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!(
        first,
        (
            "pm-1".into(),
            "rate".into(),
            "sendblue_line/sender:pm-1/rate".into()
        )
    );
    // The same rows as the one-scope form makes.
    let one: Vec<(String, String)> = c
        .query(
            "SELECT kind, name FROM throttle.apply_profile('sendblue_line', 'sender', 'pm-solo')",
            &[],
        )
        .expect("one scope")
        .iter()
        .map(|r| (r.get(0), r.get::<_, String>(1).replace("pm-solo", "pm-1")))
        .collect();
    let many: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.get::<_, String>(0) == "pm-1")
        .map(|r| (r.get(1), r.get(2)))
        .collect();
    assert_eq!(one, many);
    // Again, with one more scope: only its rows are created; duplicates count once.
    let created = count(
        &mut c,
        "SELECT count(*) FILTER (WHERE created) FROM throttle.apply_profile('sendblue_line', 'sender',
                ARRAY['pm-1', 'pm-2', 'pm-2', 'pm-solo'])",
    );
    assert_eq!(created, 0);
    let before = count(&mut c, "SELECT count(*) FROM throttle.queue_cap");
    // Another class on a set that holds one line of the first: refused, nothing created.
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('pm-new')")
        .expect("one more line");
    let e = c
        .query(
            "SELECT * FROM throttle.apply_profile('sendblue_line', 'sender', ARRAY['pm-new', 'pm-3'], 'expanded')",
            &[],
        )
        .expect_err("pm-3 has the standard class");
    assert_eq!(sqlstate(&e), "22023", "{e}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.queue_cap"),
        before
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.rate_limit WHERE scope_id = 'pm-new'"
        ),
        0
    );
    for (args, state) in [
        ("ARRAY['pm-new', NULL]", "22023"),
        ("ARRAY['pm-new', '']", "22023"),
        ("NULL::text[]", "22004"),
    ] {
        let e = c
            .query(
                &format!("SELECT * FROM throttle.apply_profile('sendblue_line', 'sender', {args})"),
                &[],
            )
            .expect_err(args);
        assert_eq!(sqlstate(&e), state, "{args}: {e}");
    }
    let e = c
        .query(
            "SELECT * FROM throttle.apply_profile('sendblue_line', 'campaign', ARRAY['pm-camp'])",
            &[],
        )
        .expect_err("a line profile on a campaign");
    assert_eq!(sqlstate(&e), "22023", "{e}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.queue_cap"),
        before
    );
}
