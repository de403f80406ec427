//! Provider profiles (sql/profiles.sql): throttle.apply_profile() against real servers.

use pg_throttle_tests::{
    assert_window_bound as assert_bound, count, sqlstate, wait_for, Client, Server,
};
use std::time::{Duration, Instant};

/// AT&T 10DLC message classes from seed 001 (Infobip "Throughput"): class, SMS per minute,
/// MMS per minute (None: n/a).
const ATT_CLASSES: [(&str, i64, Option<i64>); 16] = [
    ("A", 4500, Some(2400)),
    ("B", 4500, Some(2400)),
    ("C", 2400, Some(1200)),
    ("D", 2400, Some(1200)),
    ("E", 240, Some(150)),
    ("F", 240, Some(150)),
    ("T", 75, Some(50)),
    ("G", 60, None),
    ("P", 2400, Some(1200)),
    ("S", 60000, Some(2400)),
    ("K", 3000, Some(2400)),
    ("X", 4500, Some(2400)),
    ("Z", 6, Some(50)),
    ("Y", 720, Some(50)),
    ("W", 15, Some(50)),
    ("N", 60, Some(50)),
];

/// The seven shipped profiles and their scopes.
const PROFILES: [(&str, &str); 7] = [
    ("att_10dlc", "campaign"),
    ("sendblue_account", "account"),
    ("sendblue_line", "sender"),
    ("tmobile_brand", "brand"),
    ("twilio_account", "account"),
    ("twilio_short_code", "sender"),
    ("whatsapp", "sender"),
];

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

/// A rate limit as (scope, scope_id, carrier, channel, sender_type, rate, per in ms, burst).
type RateRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

fn rate_row(c: &mut Client, name: &str) -> RateRow {
    let r = c
        .query_one(
            "SELECT scope::text, scope_id, carrier, channel, sender_type, rate,
                    (extract(epoch FROM per) * 1000)::int8, burst
               FROM throttle.rate_limit WHERE name = $1",
            &[&name],
        )
        .unwrap_or_else(|e| panic!("rate limit {name}: {e}"));
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
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn att_class_e_is_240_sms_and_150_mms_a_minute_on_att_for_the_campaign() {
    let server = Server::start("profiles-att-e", &[]);
    let mut c = server.connect();
    let got = apply(&mut c, "att_10dlc", "campaign", "C123", Some("E"));
    let mut names: Vec<(String, String, bool)> = got
        .iter()
        .map(|a| (a.kind.clone(), a.name.clone(), a.created))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("rate".into(), "att_10dlc/E/campaign:C123/mms".into(), true),
            ("rate".into(), "att_10dlc/E/campaign:C123/sms".into(), true),
        ]
    );
    assert_eq!(
        rate_row(&mut c, "att_10dlc/E/campaign:C123/sms"),
        (
            "campaign".into(),
            "C123".into(),
            some("att"),
            some("sms"),
            None,
            240,
            60_000,
            240
        )
    );
    assert_eq!(
        rate_row(&mut c, "att_10dlc/E/campaign:C123/mms"),
        (
            "campaign".into(),
            "C123".into(),
            some("att"),
            some("mms"),
            None,
            150,
            60_000,
            150
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
    // The limits are live: a class-E campaign sender admits 240 SMS to AT&T at once, not 241.
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
           FROM generate_series(1, 151)",
    );
    assert_eq!(mms, 150);
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
fn every_att_class_of_seed_001_is_shipped_with_its_numbers() {
    let server = Server::start("profiles-att-all", &[]);
    let mut c = server.connect();
    // The shipped table holds exactly the seed's classes and numbers.
    let mut shipped: Vec<(String, String, i64, i64, i64, String, String)> = c
        .query(
            "SELECT class, rule, rate, (extract(epoch FROM per) * 1000)::int8, burst, carrier, channel
               FROM throttle.profile_rule WHERE profile = 'att_10dlc' AND kind = 'rate' AND scope = 'campaign'",
            &[],
        )
        .expect("profile_rule")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect();
    shipped.sort();
    let mut want: Vec<(String, String, i64, i64, i64, String, String)> = Vec::new();
    for (class, sms, mms) in ATT_CLASSES {
        want.push((
            class.into(),
            "sms".into(),
            sms,
            60_000,
            sms,
            "att".into(),
            "sms".into(),
        ));
        if let Some(mms) = mms {
            want.push((
                class.into(),
                "mms".into(),
                mms,
                60_000,
                mms,
                "att".into(),
                "mms".into(),
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
        31,
        "16 classes, G without MMS"
    );

    // Applied, each class gives those rows (class names in any case).
    for (class, sms, mms) in ATT_CLASSES {
        let campaign = format!("camp-{class}");
        let asked = if class == "S" {
            "s".to_string()
        } else {
            class.to_string()
        };
        let got = apply(&mut c, "att_10dlc", "campaign", &campaign, Some(&asked));
        assert_eq!(got.len(), 1 + mms.is_some() as usize, "class {class}");
        assert!(
            got.iter().all(|a| a.created && a.kind == "rate"),
            "class {class}"
        );
        assert_eq!(
            rate_row(
                &mut c,
                &format!("att_10dlc/{class}/campaign:{campaign}/sms")
            ),
            (
                "campaign".into(),
                campaign.clone(),
                some("att"),
                some("sms"),
                None,
                sms,
                60_000,
                sms
            ),
            "class {class} SMS"
        );
        let mms_name = format!("att_10dlc/{class}/campaign:{campaign}/mms");
        match mms {
            Some(mms) => assert_eq!(
                rate_row(&mut c, &mms_name),
                (
                    "campaign".into(),
                    campaign.clone(),
                    some("att"),
                    some("mms"),
                    None,
                    mms,
                    60_000,
                    mms
                ),
                "class {class} MMS"
            ),
            None => assert_eq!(
                count(
                    &mut c,
                    &format!("SELECT count(*) FROM throttle.rate_limit WHERE name = '{mms_name}'")
                ),
                0,
                "class {class} has no MMS rule"
            ),
        }
    }
    assert_eq!(limit_rows(&mut c), (31, 0, 0));
    // Discovery lists them too.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.profiles
              WHERE profile = 'att_10dlc' AND scope = 'campaign' AND summary LIKE '%/min%carrier att%'"
        ),
        31
    );
}

#[test]
fn applying_twice_creates_nothing_and_overrides_survive() {
    let server = Server::start("profiles-idempotent", &[]);
    let mut c = server.connect();
    let plan: [(&str, &str, &str, Option<&str>); 8] = [
        ("att_10dlc", "campaign", "C1", Some("A")),
        ("tmobile_brand", "brand", "acme", Some("low_mid")),
        ("twilio_account", "account", "acme", None),
        ("twilio_short_code", "sender", "12345", None),
        ("whatsapp", "sender", "+15550001", Some("high")),
        ("sendblue_line", "sender", "+15550002", None),
        ("sendblue_line", "sender", "+15550003", Some("expanded")),
        ("sendblue_account", "account", "sb", None),
    ];
    let mut first = Vec::new();
    for (profile, scope, id, class) in plan {
        let got = apply(&mut c, profile, scope, id, class);
        assert!(!got.is_empty(), "{profile}");
        assert!(got.iter().all(|a| a.created), "{profile}: {got:?}");
        first.push(got);
    }
    let before = limit_rows(&mut c);
    assert_eq!(before, (2 + 4 + 1 + 1 + 1 + 1, 1 + 2, 1 + 2));

    // Overrides of a rate, a cap and a queue cap.
    c.batch_execute(
        "UPDATE throttle.rate_limit SET rate = 4000, burst = 100 WHERE name = 'att_10dlc/A/campaign:C1/sms';
         UPDATE throttle.cap SET cap = 12000 WHERE name = 'tmobile_brand/low_mid/brand:acme/daily';
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
    assert_eq!((r.5, r.7), (4000, 100), "the rate override is kept");
    assert_eq!(
        count(
            &mut c,
            "SELECT cap FROM throttle.cap WHERE name = 'tmobile_brand/low_mid/brand:acme/daily'"
        ),
        12000,
        "the cap override is kept"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT max_waiting FROM throttle.queue_cap WHERE name = 'sendblue_line/standard/sender:+15550002/queue'"
        ),
        1000,
        "the queue cap override is kept"
    );
    // A deleted rule comes back, alone.
    c.batch_execute("DELETE FROM throttle.rate_limit WHERE name = 'att_10dlc/A/campaign:C1/mms'")
        .expect("delete");
    let got = apply(&mut c, "att_10dlc", "campaign", "C1", Some("A"));
    let created: Vec<&str> = got
        .iter()
        .filter(|a| a.created)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(created, vec!["att_10dlc/A/campaign:C1/mms"]);
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
            "SELECT cap_id, scope::text, scope_id, carrier, channel, cap, period::text, reset_at::text,
                    time_zone, at_cap::text, local_time::text, error_code, overage_pct
               FROM throttle.cap WHERE name = 'tmobile_brand/high_mid/brand:acme/daily'",
            &[],
        )
        .expect("cap");
    let id: i64 = r.get(0);
    assert_eq!(id, got[0].id);
    let row: (
        String,
        String,
        Option<String>,
        Option<String>,
        i64,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        i32,
    ) = (
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
        r.get(10),
        r.get(11),
        r.get(12),
    );
    assert_eq!(
        row,
        (
            "brand".into(),
            "acme".into(),
            some("tmobile"),
            None,
            40000,
            "day".into(),
            "00:00:00".into(),
            "America/Los_Angeles".into(),
            "defer_local".into(),
            "08:00:00".into(),
            some("542"),
            0
        )
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
fn the_other_profiles_create_the_rules_of_their_providers() {
    let server = Server::start("profiles-others", &[]);
    let mut c = server.connect();
    // WhatsApp: standard by default (80/s), high 1,000/s.
    let got = apply(&mut c, "whatsapp", "sender", "+15550100", None);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "whatsapp/standard/sender:+15550100/rate");
    assert_eq!(
        rate_row(&mut c, "whatsapp/standard/sender:+15550100/rate"),
        (
            "sender".into(),
            "+15550100".into(),
            None,
            None,
            None,
            80,
            1000,
            80
        )
    );
    apply(&mut c, "whatsapp", "sender", "+15550101", Some("high"));
    assert_eq!(
        rate_row(&mut c, "whatsapp/high/sender:+15550101/rate").5,
        1000
    );
    // Twilio short code: 100 MPS.
    apply(&mut c, "twilio_short_code", "sender", "12345", None);
    assert_eq!(
        rate_row(&mut c, "twilio_short_code/sender:12345/rate"),
        (
            "sender".into(),
            "12345".into(),
            None,
            None,
            None,
            100,
            1000,
            100
        )
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
            (
                "account".into(),
                "acme".into(),
                None,
                some(channel),
                some(sender_type),
                rate,
                1000,
                rate
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
    // Sendblue line: 1/s burst 1, 1,500 queued (standard, the default) or 6,000 (expanded).
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
        (
            "sender".into(),
            "+15550200".into(),
            None,
            None,
            None,
            1,
            1000,
            1
        )
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
    // Sendblue account: 2,000 an hour and 4,000 a day (03:00 New York), deferred.
    apply(&mut c, "sendblue_account", "account", "sb", None);
    let caps: Vec<(String, i64, String, String, String, String)> = c
        .query(
            "SELECT name, cap, period::text, reset_at::text, time_zone, at_cap::text
               FROM throttle.cap WHERE scope = 'account' AND scope_id = 'sb' ORDER BY name",
            &[],
        )
        .expect("caps")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        caps,
        vec![
            (
                "sendblue_account/account:sb/daily".into(),
                4000,
                "day".into(),
                "03:00:00".into(),
                "America/New_York".into(),
                "defer".into()
            ),
            (
                "sendblue_account/account:sb/hourly".into(),
                2000,
                "hour".into(),
                "00:00:00".into(),
                "America/New_York".into(),
                "defer".into()
            ),
        ]
    );
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
    // Every profile is listed for discovery, with its one scope.
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
    let cases: Vec<(&str, &str, Option<&str>, &str, &str, Vec<String>)> = vec![
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
        48
    );
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM throttle.profile_rule"),
        48
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

    // Five messages on the line: one at once (burst 1), then one a second.
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
