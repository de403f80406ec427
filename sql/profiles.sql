-- Provider profiles: the throughput rules of the providers and carriers in the product brief,
-- shipped as data, and throttle.apply_profile() to turn one profile into rows of
-- throttle.rate_limit, throttle.cap and throttle.queue_cap for a sender, campaign, brand or
-- account. The created rows are ordinary rows: change or delete them like any other; applying
-- the profile again creates only what is missing and never touches a row that exists.
--
-- Runs inside CREATE EXTENSION after schema.sql and caps.sql (types throttle.scope,
-- throttle.cap_period, throttle.cap_action).
--
-- Every rate rule is window-exact (burst NULL): at most `rate` in every window of `per`, the
-- first after an idle spell included, which is what a carrier counting per minute or per
-- second sees. Costs are what the carriers count: an SMS costs its segments, an MMS costs 1.
--
-- The rules between "BEGIN shipped profiles" and "END shipped profiles" are repeated verbatim
-- in the upgrade script from 0.1.0 (tests/profiles.rs checks it), so that an upgraded
-- database ends with the same rules as a fresh install; the functions and the view are
-- replaced by each later upgrade script where they changed (tests/upgrade.rs compares every
-- function's body with a fresh install's).

-- One row per rule of each profile. `class` '' marks a rule every class of the profile gets;
-- a profile with classes other than '' needs one (or has a default_class). The columns
-- each_sender and warn_at come last because 0.2.0 added them (an upgraded table has them
-- there too).
CREATE TABLE throttle.profile_rule (
    profile       text NOT NULL CHECK (profile ~ '^[a-z0-9_]+$'),
    class         text NOT NULL DEFAULT '' CHECK (class ~ '^[A-Za-z0-9_]*$'),
    rule          text NOT NULL CHECK (rule ~ '^[a-z0-9_]+$'),
    kind          text NOT NULL CHECK (kind IN ('rate', 'cap', 'queue_cap')),
    scope         throttle.scope NOT NULL,
    carrier       text CHECK (carrier <> ''),
    channel       text CHECK (channel ~ '^[a-z0-9_]+$'),
    sender_type   text CHECK (sender_type ~ '^[a-z0-9_]+$'),
    -- kind 'rate': throttle.rate_limit (burst NULL: window-exact)
    rate          bigint CHECK (rate BETWEEN 1 AND 1000000000),
    per           interval,
    burst         bigint CHECK (burst BETWEEN 1 AND 1000000000),
    -- kind 'cap': throttle.cap
    cap           bigint CHECK (cap BETWEEN 1 AND 1000000000000),
    period        throttle.cap_period,
    reset_at      time,
    time_zone     text,
    at_cap        throttle.cap_action,
    local_time    time,
    overage_pct   integer CHECK (overage_pct BETWEEN 0 AND 1000),
    -- kind 'queue_cap': throttle.queue_cap
    max_waiting   bigint CHECK (max_waiting BETWEEN 1 AND 1000000000000),
    validity      interval CHECK (validity > interval '0' AND validity <= interval '31 days'),
    -- cap (at_cap 'refuse') and queue_cap: the provider's error code
    error_code    text,
    -- classes: display order, the class used when none is given, vetting scores it stands for
    ord           integer NOT NULL DEFAULT 0,
    default_class boolean NOT NULL DEFAULT false,
    min_score     integer CHECK (min_score BETWEEN 0 AND 100),
    max_score     integer CHECK (max_score BETWEEN 0 AND 100),
    note          text NOT NULL,  -- the rule and its source
    -- kind 'rate' of a campaign, brand or account: each sender of the group has the limit on
    -- its own (throttle.rate_limit.each_sender)
    each_sender   boolean NOT NULL DEFAULT false,
    -- kind 'cap': the percentages of the cap announced (throttle.cap.warn_at)
    warn_at       integer[] CHECK (array_position(warn_at, NULL) IS NULL
                                   AND 1 <= ALL (warn_at) AND 1100 >= ALL (warn_at)),
    PRIMARY KEY (profile, class, rule),
    CONSTRAINT profile_rule_columns CHECK (CASE kind
        WHEN 'rate' THEN rate IS NOT NULL AND per IS NOT NULL
                         AND num_nulls(cap, period, reset_at, time_zone, at_cap, local_time,
                                       overage_pct, warn_at, max_waiting, validity) = 10
        WHEN 'cap' THEN num_nonnulls(cap, period, reset_at, time_zone, at_cap, local_time,
                                     overage_pct, warn_at) = 8
                        AND num_nulls(rate, per, burst, max_waiting, validity) = 5
        WHEN 'queue_cap' THEN num_nonnulls(max_waiting, validity) >= 1
                              AND num_nulls(rate, per, burst, cap, period, reset_at, time_zone,
                                            at_cap, local_time, overage_pct, warn_at, sender_type) = 12
        END),
    CONSTRAINT profile_rule_class_flags CHECK (
        (class <> '' OR (NOT default_class AND min_score IS NULL))
        AND (min_score IS NULL) = (max_score IS NULL) AND min_score <= max_score),
    CONSTRAINT profile_rule_each_sender CHECK (NOT each_sender OR (kind = 'rate' AND scope <> 'sender'))
);

-- 0.5.0: contact rules (throttle.contact_rule) in profiles, kind 'contact'.
ALTER TABLE throttle.profile_rule
    ADD COLUMN contact_kind throttle.contact_rule_kind,
    ADD COLUMN max_count    integer CHECK (max_count BETWEEN 1 AND 1000000000),
    ADD COLUMN at_limit     throttle.contact_action,
    ADD COLUMN reply_window interval,
    DROP CONSTRAINT profile_rule_kind_check,
    ADD CONSTRAINT profile_rule_kind_check CHECK (kind IN ('rate', 'cap', 'queue_cap', 'contact')),
    ADD CONSTRAINT profile_rule_contact CHECK (
        (kind = 'contact') = (contact_kind IS NOT NULL)
        AND (kind <> 'contact'
             OR (num_nonnulls(max_count, at_limit, reply_window, reset_at, time_zone) = 5
                 AND num_nulls(rate, burst, cap, period, at_cap, local_time, overage_pct, warn_at,
                               max_waiting, validity, sender_type, carrier) = 12)));

-- BEGIN shipped profiles
-- WhatsApp Cloud API through 360dialog, per number (seed 000).
INSERT INTO throttle.profile_rule (profile, class, rule, kind, scope, rate, per, ord, default_class, note)
VALUES
    ('whatsapp', 'standard', 'rate', 'rate', 'sender', 80, '1 second', 1, true,
     'WhatsApp Cloud API standard throughput: up to 80 messages per second per number, at most 80 in every second; the default (360dialog "Higher Throughput", seed 000). Meta counts the number''s inbound messages as well as its outbound ones against it: this limit sees only what you send, so lower the rate by the inbound rate you expect'),
    ('whatsapp', 'high', 'rate', 'rate', 'sender', 1000, '1 second', 2, false,
     'WhatsApp Cloud API higher throughput: up to 1,000 messages per second per upgraded number, at most 1,000 in every second (360dialog "Higher Throughput", seed 000). Meta counts the number''s inbound messages as well as its outbound ones against it: this limit sees only what you send, so lower the rate by the inbound rate you expect');

-- Twilio short code, per number (seed 003).
INSERT INTO throttle.profile_rule (profile, rule, kind, scope, rate, per, note)
VALUES
    ('twilio_short_code', 'rate', 'rate', 'sender', 100, '1 second',
     'Twilio short code: 100 MPS, message segments per second, at most 100 in every second (Twilio "Account Based Throughput Overview", seed 003); enqueue or admit with cost = segments');

-- Twilio account-based throughput, per account by sender type and channel (seed 003).
INSERT INTO throttle.profile_rule (profile, rule, kind, scope, sender_type, channel, rate, per, note)
VALUES
    ('twilio_account', 'sms_short_code', 'rate', 'account', 'short_code', 'sms', 500, '1 second',
     'Twilio account-based throughput, SMS short codes: 500 MPS (segments), at most 500 in every second, shared by every number of the account (seed 003 example)'),
    ('twilio_account', 'sms_toll_free', 'rate', 'account', 'toll_free', 'sms', 100, '1 second',
     'Twilio account-based throughput, SMS toll-free: 100 MPS (segments), at most 100 in every second, shared by every number of the account (seed 003 example)'),
    ('twilio_account', 'mms_short_code', 'rate', 'account', 'short_code', 'mms', 100, '1 second',
     'Twilio account-based throughput, MMS short codes: 100 MPS (an MMS costs 1), at most 100 in every second, shared by every number of the account (seed 003 example)'),
    ('twilio_account', 'mms_toll_free', 'rate', 'account', 'toll_free', 'mms', 25, '1 second',
     'Twilio account-based throughput, MMS toll-free: 25 MPS (an MMS costs 1), at most 25 in every second, shared by every number of the account (seed 003 example)');
INSERT INTO throttle.profile_rule (profile, rule, kind, scope, validity, error_code, note)
VALUES
    ('twilio_account', 'queue', 'queue_cap', 'account', '4 hours', '30001',
     'Twilio: messages persist in the account queue for at most 4 hours, so the queue holds MPS x 14,400 s; overflow is error 30001 (seed 003). One cap for the account: its size is the slowest of the account''s rates x 4 h');

-- AT&T 10DLC by message class, SMS and MMS per minute separately, counted in segments (seed
-- 001). Per campaign (all its numbers share the limit), except classes G, N and Y, which AT&T
-- enforces per number: each sender of the campaign has its own. Since 11 October 2023 only
-- classes A, B, C, D, S, K, X and P send MMS at the seed's MMS rate; the others at 50 a minute.
INSERT INTO throttle.profile_rule (profile, class, rule, kind, scope, carrier, channel, rate, per, each_sender, ord, note)
SELECT 'att_10dlc', c.class, ch.channel, 'rate', 'campaign', 'att', ch.channel, ch.rate, '1 minute', c.per_number, c.ord,
       format('AT&T 10DLC message class %s (%s; %s): %s %s %s, at most that in every minute (Infobip "Throughput", seed 001)',
              c.class, c.use_case, c.campaign_type, to_char(ch.rate, 'FM999,999,999'),
              CASE ch.channel WHEN 'sms' THEN 'SMS segments per minute' ELSE 'MMS per minute' END,
              CASE WHEN c.per_number THEN 'for each number of the campaign on its own'
                   ELSE 'per campaign, shared by all its numbers' END)
       || CASE WHEN c.per_number
               THEN '; AT&T enforces classes G, N and Y per number, not per campaign (Convey "10DLC Carrier Throughputs and Daily Limits")'
               ELSE '' END
       || CASE WHEN ch.channel = 'sms' THEN ''
               WHEN f.full_mms
               THEN '; MMS at this rate since 11 October 2023 (Bandwidth "Increase to AT&T MMS throughputs")'
               ELSE format('; since 11 October 2023 only classes A, B, C, D, S, K, X and P send MMS at their full rate, the others at 50 a minute (Bandwidth "Increase to AT&T MMS throughputs"); seed 001 lists %s',
                           coalesce(to_char(c.seed_mms, 'FM999,999,999'), 'n/a')) END
  FROM (VALUES
        ('A',  1, 4500,  2400, 'STANDARD', 'Declared Use Case', false),
        ('B',  2, 4500,  2400, 'STANDARD', 'Mixed/Marketing', false),
        ('C',  3, 2400,  1200, 'STANDARD', 'Declared Use Case', false),
        ('D',  4, 2400,  1200, 'STANDARD', 'Mixed/Marketing', false),
        ('E',  5, 240,   150,  'STANDARD', 'Declared Use Case', false),
        ('F',  6, 240,   150,  'STANDARD', 'Mixed/Marketing', false),
        ('T',  7, 75,    50,   'Low-volume Mixed', 'Low Volume Mixed', false),
        ('G',  8, 60,    NULL, 'Group Messaging', 'Special', true),
        ('P',  9, 2400,  1200, 'Charity', 'Special: non-commercial', false),
        ('S', 10, 60000, 2400, 'Social Engagement', 'Special', false),
        ('K', 11, 3000,  2400, 'Election Campaigns', 'Special', false),
        ('X', 12, 4500,  2400, 'Emergency Services / Public Safety', 'Special', false),
        ('Z', 13, 6,     50,   'Large CSP Free Trial Offers', 'Special', false),
        ('Y', 14, 720,   50,   'Exemption by Carrier (trusted)', 'Special', true),
        ('W', 15, 15,    50,   'Exemption by Carrier (less trusted)', 'Special', false),
        ('N', 16, 60,    50,   'Agents, franchise, local branches, CSPs by vertical', 'Special', true))
       AS c(class, ord, sms, seed_mms, use_case, campaign_type, per_number)
 CROSS JOIN LATERAL (SELECT c.class IN ('A', 'B', 'C', 'D', 'S', 'K', 'X', 'P') AS full_mms) f
 CROSS JOIN LATERAL (VALUES ('sms', c.sms::bigint),
                            ('mms', CASE WHEN f.full_mms THEN c.seed_mms ELSE 50 END::bigint)) AS ch(channel, rate);

-- Verizon 10DLC, per number (Convey support page; not in the seeds). Applied to a campaign,
-- each of its numbers gets its own limits.
INSERT INTO throttle.profile_rule (profile, rule, kind, scope, carrier, channel, rate, per, each_sender, note)
VALUES
    ('verizon_10dlc', 'sms', 'rate', 'campaign', 'verizon', 'sms', 6000, '1 minute', true,
     'Verizon 10DLC: 6,000 SMS transactions per minute per long code, for each number of the campaign on its own, at most 6,000 in every minute (Convey "10DLC Carrier Throughputs and Daily Limits"; Bandwidth "Verizon 10DLC": measured per number); not in the seeds'),
    ('verizon_10dlc', 'mms', 'rate', 'campaign', 'verizon', 'mms', 25, '1 second', true,
     'Verizon 10DLC: 25 MMS transactions per second per long code, for each number of the campaign on its own, at most 25 in every second (Convey "10DLC Carrier Throughputs and Daily Limits"; Bandwidth "Verizon 10DLC": measured per number); not in the seeds');

-- T-Mobile 10DLC, per brand for all its campaigns: a daily cap by vetting score (seed 001),
-- counting SMS segments and MMS messages: a cap counts cost, and an MMS costs 1.
INSERT INTO throttle.profile_rule (profile, class, rule, kind, scope, carrier, cap, period, reset_at, time_zone,
                                   at_cap, local_time, overage_pct, warn_at, error_code, ord, min_score, max_score, note)
SELECT 'tmobile_brand', t.class, 'daily', 'cap', 'brand', 'tmobile', t.cap, 'day', '00:00', 'America/Los_Angeles',
       'defer_local', '08:00', 0, '{75,90,100}', '542', t.ord, t.min_score, t.max_score,
       format('T-Mobile 10DLC brand daily cap, vetting score %s-%s (%s): %s per day for all the brand''s campaigns, reset at midnight Pacific; over the cap Infobip sends at 08:00 the next day in the recipient''s zone instead of error 542 (seed 001). T-Mobile counts SMS segments and MMS messages (Convey "10DLC Carrier Throughputs and Daily Limits"): enqueue an SMS with cost = its segments and an MMS with cost 1. Political campaigns are exempt: add them to throttle.cap_exemption',
              t.min_score, t.max_score, t.label, to_char(t.cap, 'FM999,999,999'))
  FROM (VALUES
        ('low',      1, 2000,   0,  24, 'Low'),
        ('low_mid',  2, 10000,  25, 49, 'Low Mid'),
        ('high_mid', 3, 40000,  50, 74, 'High Mid'),
        ('high',     4, 200000, 75, 100, 'High; also Russell 3000 brands'))
       AS t(class, ord, cap, min_score, max_score, label);

-- Sendblue, per line (seeds 002 and 004).
INSERT INTO throttle.profile_rule (profile, class, rule, kind, scope, rate, per, max_waiting, error_code, ord, default_class, note)
VALUES
    ('sendblue_line', '', 'rate', 'rate', 'sender', 1, '1 second', NULL, NULL, 0, false,
     'Sendblue: 1 message per second per line, at most one in every second, queued and sent one at a time (seeds 002, 004)'),
    ('sendblue_line', 'standard', 'queue', 'queue_cap', 'sender', NULL, NULL, 1500, '429', 1, true,
     'Sendblue: up to 1,500 queued messages, then HTTP 429 Too Many Requests (seed 004)'),
    ('sendblue_line', 'expanded', 'queue', 'queue_cap', 'sender', NULL, NULL, 6000, '429', 2, false,
     'Sendblue: up to 6,000 queued messages, then HTTP 429 Too Many Requests (seed 002)');

-- Sendblue, per account: the default limits (seed 004), or the Blue and Sapphire plans' daily
-- throttle and monthly limit with its soft overage and notices (seed 002).
INSERT INTO throttle.profile_rule (profile, class, rule, kind, scope, cap, period, reset_at, time_zone, at_cap, local_time,
                                   overage_pct, warn_at, ord, default_class, note)
VALUES
    ('sendblue_account', 'default', 'hourly', 'cap', 'account', 2000, 'hour', '00:00', 'America/New_York', 'defer', '08:00',
     0, '{75,90,100}', 1, true,
     'Sendblue: 2,000 messages per hour by default, per account; over it, wait for the next hour (seed 004)'),
    ('sendblue_account', 'default', 'daily', 'cap', 'account', 4000, 'day', '03:00', 'America/New_York', 'defer', '08:00',
     0, '{75,90,100}', 1, true,
     'Sendblue: 4,000 messages per day by default, per account, reset daily at 3am Eastern (seed 004)'),
    ('sendblue_account', 'blue', 'daily', 'cap', 'account', 2000, 'day', '03:00', 'America/New_York', 'defer', '08:00',
     0, '{75,90,100}', 2, false,
     'Sendblue Blue plan: throttled to 2,000 messages per day per account (seed 002); reset at 3am Eastern like Sendblue''s other daily limits (seed 004)'),
    ('sendblue_account', 'blue', 'monthly', 'cap', 'account', 2000, 'month', '03:00', 'America/New_York', 'defer', '08:00',
     20, '{75,90,100}', 2, false,
     'Sendblue Blue plan: 2,000 messages per month, not enforced as a hard limit: up to 120 % (2,400) free of charge, with emails at 75, 90 and 100 % (seed 002); past 2,400 held until the next month. The seed gives no reset day: the month starts on the 1st at 3am Eastern'),
    ('sendblue_account', 'sapphire', 'daily', 'cap', 'account', 6000, 'day', '03:00', 'America/New_York', 'defer', '08:00',
     0, '{75,90,100}', 3, false,
     'Sendblue Sapphire plan: throttled to 6,000 messages per day per account (seed 002); reset at 3am Eastern like Sendblue''s other daily limits (seed 004)'),
    ('sendblue_account', 'sapphire', 'monthly', 'cap', 'account', 6000, 'month', '03:00', 'America/New_York', 'defer', '08:00',
     20, '{75,90,100}', 3, false,
     'Sendblue Sapphire plan: 6,000 messages per month, not enforced as a hard limit: up to 120 % (7,200) free of charge, with emails at 75, 90 and 100 % (seed 002); past 7,200 held until the next month. The seed gives no reset day: the month starts on the 1st at 3am Eastern');

-- The shipped data is consistent: one scope per profile, one default class at most, classes
-- distinct regardless of case, vetting scores that do not overlap, every rate window-exact.
DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(DISTINCT profile, ', ') INTO bad FROM (
        SELECT profile FROM throttle.profile_rule GROUP BY profile
        HAVING count(DISTINCT scope) > 1
            OR count(DISTINCT class) FILTER (WHERE default_class) > 1
            OR count(DISTINCT class) <> count(DISTINCT lower(class))
        UNION ALL
        SELECT a.profile FROM throttle.profile_rule a JOIN throttle.profile_rule b
            ON a.profile = b.profile AND a.class < b.class
           AND a.min_score IS NOT NULL AND b.min_score IS NOT NULL
           AND int4range(a.min_score, a.max_score, '[]') && int4range(b.min_score, b.max_score, '[]')
        UNION ALL
        SELECT profile FROM throttle.profile_rule GROUP BY profile, class
        HAVING count(DISTINCT default_class) > 1 OR count(DISTINCT (min_score, max_score)) > 1
        UNION ALL
        SELECT profile FROM throttle.profile_rule WHERE kind = 'rate' AND burst IS NOT NULL) p;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'inconsistent throttle.profile_rule data in profiles %', bad;
    END IF;
END
$$;

-- Apply a profile to one sender, campaign, brand or account.
-- A profile's canonical name and the class to apply (given by name, any case, or by vetting
-- score, or the default), checked against the scope; every error says what is valid.
CREATE OR REPLACE FUNCTION throttle.resolve_profile(
    profile text, scope throttle.scope, class text,
    OUT profile_name text, OUT class_name text
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_profile  text := resolve_profile.profile;
    v_scope    throttle.scope := resolve_profile.scope;
    v_class    text := pg_catalog.btrim(resolve_profile.class);
    v_name     text;     -- the profile's canonical name
    v_pscope   throttle.scope;
    v_cls      text;     -- the class applied ('' for a profile without classes)
    v_classes  text;     -- the profile's classes, for hints
    v_scores   text;     -- the vetting scores they stand for, for hints
    v_default  text;
BEGIN
    IF v_profile IS NULL OR v_scope IS NULL THEN
        RAISE EXCEPTION 'apply_profile: profile, scope and scope_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for example throttle.apply_profile(''att_10dlc'', ''campaign'', ''C123'', ''E''); SELECT * FROM throttle.profiles lists the profiles';
    END IF;

    SELECT p.profile, p.scope INTO v_name, v_pscope
      FROM throttle.profile_rule p
     WHERE p.profile = pg_catalog.lower(pg_catalog.btrim(v_profile))
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown profile %', pg_catalog.quote_literal(v_profile)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'valid profiles: ' || (SELECT pg_catalog.string_agg(p.profile || ' (' || p.scope::text || ')', ', ' ORDER BY p.profile)
                                                  FROM (SELECT DISTINCT p.profile, p.scope FROM throttle.profile_rule p) p)
                         || '; SELECT * FROM throttle.profiles lists their rules';
    END IF;
    IF v_pscope <> v_scope THEN
        RAISE EXCEPTION 'profile % applies to a %, not a %', v_name, v_pscope, v_scope
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('valid scope for %s: %s, as in throttle.apply_profile(%L, %L, ...)',
                                           v_name, v_pscope, v_name, v_pscope);
    END IF;

    -- The class: given (by name, any case, or by vetting score), or the default.
    SELECT pg_catalog.string_agg(c.class, ', ' ORDER BY c.ord, c.class),
           pg_catalog.string_agg(c.min_score || '-' || c.max_score || ' ' || c.class, ', ' ORDER BY c.min_score),
           pg_catalog.min(c.class) FILTER (WHERE c.default_class)
      INTO v_classes, v_scores, v_default
      FROM (SELECT p.class, pg_catalog.min(p.ord) AS ord, pg_catalog.bool_or(p.default_class) AS default_class,
                   pg_catalog.min(p.min_score) AS min_score, pg_catalog.max(p.max_score) AS max_score
              FROM throttle.profile_rule p
             WHERE p.profile = v_name AND p.class <> ''
             GROUP BY p.class) c;
    IF v_classes IS NULL THEN
        IF coalesce(v_class, '') <> '' THEN
            RAISE EXCEPTION 'profile % has no classes, got class %', v_name, pg_catalog.quote_literal(v_class)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('valid classes for %s: none; leave class NULL', v_name);
        END IF;
        v_cls := '';
    ELSIF coalesce(v_class, '') = '' THEN
        v_cls := v_default;
        IF v_cls IS NULL THEN
            RAISE EXCEPTION 'profile % needs a class', v_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('valid classes for %s: %s', v_name, v_classes)
                             || coalesce('; or a vetting score (' || v_scores || ')', '');
        END IF;
    ELSE
        SELECT p.class INTO v_cls
          FROM throttle.profile_rule p
         WHERE p.profile = v_name AND p.class <> '' AND pg_catalog.lower(p.class) = pg_catalog.lower(v_class)
         LIMIT 1;
        IF v_cls IS NULL AND v_class ~ '^[0-9]{1,3}$' THEN
            SELECT p.class INTO v_cls
              FROM throttle.profile_rule p
             WHERE p.profile = v_name AND v_class::integer BETWEEN p.min_score AND p.max_score
             LIMIT 1;
        END IF;
        IF v_cls IS NULL THEN
            RAISE EXCEPTION 'unknown class % for profile %', pg_catalog.quote_literal(v_class), v_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('valid classes for %s: %s', v_name, v_classes)
                             || coalesce('; or a vetting score (' || v_scores || ')', '');
        END IF;
    END IF;

    profile_name := v_name;
    class_name := v_cls;
END
$$;
REVOKE EXECUTE ON FUNCTION throttle.resolve_profile(text, throttle.scope, text) FROM PUBLIC;
COMMENT ON FUNCTION throttle.resolve_profile(text, throttle.scope, text) IS
    'The canonical name of a profile and the class apply_profile applies (given by name or vetting score, or the default), checked against the scope';

CREATE OR REPLACE FUNCTION throttle.apply_profile(
    profile text, scope throttle.scope, scope_id text, class text DEFAULT NULL
) RETURNS TABLE (kind text, name text, id bigint, created boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_profile  text := apply_profile.profile;
    v_scope    throttle.scope := apply_profile.scope;
    v_scope_id text := apply_profile.scope_id;
    v_class    text := pg_catalog.btrim(apply_profile.class);
    v_name     text;     -- the profile's canonical name
    v_cls      text;     -- the class applied ('' for a profile without classes)
    v_other    text;     -- another class of the profile applied to this scope
    v_taken    text;     -- its rows
    v_id       bigint;
    r          record;
BEGIN
    IF v_profile IS NULL OR v_scope IS NULL OR v_scope_id IS NULL THEN
        RAISE EXCEPTION 'apply_profile: profile, scope and scope_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for example throttle.apply_profile(''att_10dlc'', ''campaign'', ''C123'', ''E''); SELECT * FROM throttle.profiles lists the profiles';
    END IF;
    IF v_scope_id = '' THEN
        RAISE EXCEPTION 'apply_profile: scope_id must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the sender, campaign, brand or account the limits are for, as in throttle.sender';
    END IF;
    SELECT r.profile_name, r.class_name INTO v_name, v_cls
      FROM throttle.resolve_profile(v_profile, v_scope, v_class) r;

    -- Before changing anything: another class of this profile must not be applied to the same
    -- scope (its limits would stack with these), and a row with one of our names must be for
    -- this scope. (Two transactions applying different classes to one scope at the same time
    -- can both pass: the stricter limits then win. No lock is taken, so a transaction may apply
    -- a profile to any number of scopes.)
    SELECT pg_catalog.string_agg(DISTINCT x.class, ', '), pg_catalog.string_agg(x.row_name, ', ' ORDER BY x.row_name)
      INTO v_other, v_taken
      FROM (SELECT p.class, n.row_name
              FROM throttle.profile_rule p
             CROSS JOIN LATERAL (SELECT p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
                                        || v_scope::text || ':' || v_scope_id || '/' || p.rule AS row_name) n
             WHERE p.profile = v_name AND p.class NOT IN ('', v_cls)
               AND CASE p.kind
                   WHEN 'rate' THEN EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = n.row_name)
                   WHEN 'cap' THEN EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = n.row_name)
                   WHEN 'contact' THEN EXISTS (SELECT 1 FROM throttle.contact_rule t WHERE t.name = n.row_name)
                   ELSE EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = n.row_name) END) x;
    IF v_taken IS NOT NULL THEN
        RAISE EXCEPTION 'class % of profile % is already applied to % %', v_other, v_name, v_scope, v_scope_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('its rows: %s; applying class %s as well would stack both classes'' limits', v_taken, v_cls),
                  HINT = 'delete the rows named in the detail from throttle.rate_limit, throttle.cap, throttle.queue_cap and throttle.contact_rule (a deleted cap forgets its usage), then apply the profile again';
    END IF;
    FOR r IN
        SELECT p.kind, n.row_name
          FROM throttle.profile_rule p
         CROSS JOIN LATERAL (SELECT p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
                                    || v_scope::text || ':' || v_scope_id || '/' || p.rule AS row_name) n
         WHERE p.profile = v_name AND p.class IN ('', v_cls)
           AND CASE p.kind
               WHEN 'rate' THEN EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = n.row_name
                                           AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id))
               WHEN 'cap' THEN EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = n.row_name
                                          AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id))
               WHEN 'contact' THEN EXISTS (SELECT 1 FROM throttle.contact_rule t WHERE t.name = n.row_name
                                          AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id))
               ELSE EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = n.row_name
                               AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id)) END
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'the name % is taken in throttle.% by a row of another scope', r.row_name,
                        CASE r.kind WHEN 'rate' THEN 'rate_limit' WHEN 'contact' THEN 'contact_rule' ELSE r.kind END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rename or delete that row, then apply the profile again';
    END LOOP;

    -- Create what is missing; keep what exists (an override survives).
    FOR r IN
        SELECT p.*, n.row_name,
               pg_catalog.format('profile %s%s: %s', p.profile, CASE WHEN p.class = '' THEN '' ELSE ' class ' || p.class END,
                                 p.note) AS row_note
          FROM throttle.profile_rule p
         CROSS JOIN LATERAL (SELECT p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
                                    || v_scope::text || ':' || v_scope_id || '/' || p.rule AS row_name) n
         WHERE p.profile = v_name AND p.class IN ('', v_cls)
         ORDER BY p.class <> '', CASE p.kind WHEN 'rate' THEN 1 WHEN 'cap' THEN 2 WHEN 'queue_cap' THEN 3 ELSE 4 END, p.rule
    LOOP
        v_id := NULL;
        IF r.kind = 'rate' THEN
            INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, channel, sender_type, rate, per, burst,
                                             each_sender, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.carrier, r.channel, r.sender_type, r.rate, r.per, r.burst,
                    r.each_sender, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING limit_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.limit_id INTO v_id FROM throttle.rate_limit t WHERE t.name = r.row_name;
            END IF;
        ELSIF r.kind = 'cap' THEN
            INSERT INTO throttle.cap (name, scope, scope_id, carrier, channel, sender_type, cap, period, reset_at,
                                      time_zone, overage_pct, warn_at, at_cap, local_time, error_code, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.carrier, r.channel, r.sender_type, r.cap, r.period, r.reset_at,
                    r.time_zone, r.overage_pct, r.warn_at, r.at_cap, r.local_time, r.error_code, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING cap_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.cap_id INTO v_id FROM throttle.cap t WHERE t.name = r.row_name;
            END IF;
        ELSIF r.kind = 'contact' THEN
            INSERT INTO throttle.contact_rule (name, scope, scope_id, channel, kind, max_count, per, reset_at, time_zone,
                                              reply_window, at_limit, error_code, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.channel, r.contact_kind, r.max_count, r.per, r.reset_at,
                    r.time_zone, r.reply_window, r.at_limit, r.error_code, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING rule_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.rule_id INTO v_id FROM throttle.contact_rule t WHERE t.name = r.row_name;
            END IF;
        ELSE
            INSERT INTO throttle.queue_cap (name, scope, scope_id, carrier, channel, max_waiting, validity, error_code, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.carrier, r.channel, r.max_waiting, r.validity, r.error_code, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING queue_cap_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.queue_cap_id INTO v_id FROM throttle.queue_cap t WHERE t.name = r.row_name;
            END IF;
        END IF;
        IF v_id IS NULL THEN
            -- Deleted by another transaction after our insert found it (or not visible to a
            -- repeatable-read snapshot): say so rather than return no id.
            RAISE EXCEPTION 'the row % changed concurrently', r.row_name
                USING ERRCODE = 'serialization_failure',
                      HINT = 'apply the profile again';
        END IF;
        kind := r.kind;
        name := r.row_name;
        id := v_id;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION throttle.apply_profile(text, throttle.scope, text, text) FROM PUBLIC;

-- The same for many scopes at once, set-based (100,000 lines in seconds, not one call each):
-- every scope's rows checked first (all or nothing), created in one statement per kind.
-- Every sender of a campaign: scope_ids => ARRAY(SELECT sender FROM throttle.sender WHERE
-- campaign = 'C1').
CREATE OR REPLACE FUNCTION throttle.apply_profile(
    profile text, scope throttle.scope, scope_ids text[], class text DEFAULT NULL
) RETURNS TABLE (scope_id text, kind text, name text, id bigint, created boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_scope    throttle.scope := apply_profile.scope;
    v_ids      text[];
    v_name     text;
    v_cls      text;
    v_other    text;
    v_taken    text;
BEGIN
    IF apply_profile.profile IS NULL OR v_scope IS NULL OR apply_profile.scope_ids IS NULL THEN
        RAISE EXCEPTION 'apply_profile: profile, scope and scope_ids must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for example throttle.apply_profile(''sendblue_line'', ''sender'', ARRAY(SELECT sender FROM throttle.sender WHERE campaign = ''C1''))';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.unnest(apply_profile.scope_ids) u WHERE u IS NULL OR u = '') THEN
        RAISE EXCEPTION 'apply_profile: every scope_id must be a non-empty string'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the senders, campaigns, brands or accounts the limits are for, as in throttle.sender';
    END IF;
    SELECT r.profile_name, r.class_name INTO v_name, v_cls
      FROM throttle.resolve_profile(apply_profile.profile, v_scope, apply_profile.class) r;
    v_ids := ARRAY(SELECT DISTINCT u FROM pg_catalog.unnest(apply_profile.scope_ids) u);

    CREATE TEMP TABLE IF NOT EXISTS pg_throttle_apply (
        sid text, cls text, rule text, kind text, row_name text, row_note text, rule_id bigint) ON COMMIT DROP;
    TRUNCATE pg_throttle_apply;
    -- Every scope's rows of every rule of the profile (and of its other classes, to refuse).
    INSERT INTO pg_throttle_apply
    SELECT s.u, p.class, p.rule, CASE WHEN p.class IN ('', v_cls) THEN p.kind END,
           p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
               || v_scope::text || ':' || s.u || '/' || p.rule,
           pg_catalog.format('profile %s%s: %s', p.profile,
                             CASE WHEN p.class = '' THEN '' ELSE ' class ' || p.class END, p.note),
           NULL
      FROM pg_catalog.unnest(v_ids) s(u)
     CROSS JOIN throttle.profile_rule p
     WHERE p.profile = v_name;

    -- Another class of the profile applied to one of these scopes: its limits would stack.
    SELECT pg_catalog.string_agg(a.row_name, ', ' ORDER BY a.row_name)
      INTO v_taken
      FROM pg_throttle_apply a
     WHERE a.kind IS NULL
       AND (EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = a.row_name)
            OR EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = a.row_name)
            OR EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = a.row_name)
            OR EXISTS (SELECT 1 FROM throttle.contact_rule t WHERE t.name = a.row_name));
    IF v_taken IS NOT NULL THEN
        RAISE EXCEPTION 'another class of profile % is already applied to some of these scopes', v_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('its rows: %s; applying class %s as well would stack both classes'' limits', v_taken, v_cls),
                  HINT = 'delete the rows named in the detail from throttle.rate_limit, throttle.cap, throttle.queue_cap and throttle.contact_rule (a deleted cap forgets its usage), then apply the profile again';
    END IF;
    DELETE FROM pg_throttle_apply a WHERE a.kind IS NULL;
    -- A name of ours taken by a row of another scope.
    SELECT a.row_name, a.kind INTO v_taken, v_other
      FROM pg_throttle_apply a
     WHERE CASE a.kind
           WHEN 'rate' THEN EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = a.row_name
                                       AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid))
           WHEN 'cap' THEN EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = a.row_name
                                      AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid))
           WHEN 'contact' THEN EXISTS (SELECT 1 FROM throttle.contact_rule t WHERE t.name = a.row_name
                                      AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid))
           ELSE EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = a.row_name
                           AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid)) END
     LIMIT 1;
    IF v_taken IS NOT NULL THEN
        RAISE EXCEPTION 'the name % is taken in throttle.% by a row of another scope', v_taken,
                        CASE v_other WHEN 'rate' THEN 'rate_limit' WHEN 'contact' THEN 'contact_rule' ELSE v_other END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rename or delete that row, then apply the profile again';
    END IF;

    -- Create what is missing, one statement per kind; keep what exists (an override survives).
    WITH want AS (
        SELECT a.sid, a.row_name, a.row_note, p.*
          FROM pg_throttle_apply a
          JOIN throttle.profile_rule p ON p.profile = v_name AND p.class = a.cls AND p.rule = a.rule),
    r AS (
        INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, channel, sender_type, rate, per, burst,
                                         each_sender, note)
        SELECT w.row_name, v_scope, w.sid, w.carrier, w.channel, w.sender_type, w.rate, w.per, w.burst,
               w.each_sender, w.row_note
          FROM want w WHERE w.kind = 'rate'
        ON CONFLICT (name) DO NOTHING
        RETURNING rate_limit.name, rate_limit.limit_id AS made),
    c AS (
        INSERT INTO throttle.cap (name, scope, scope_id, carrier, channel, sender_type, cap, period, reset_at,
                                  time_zone, overage_pct, warn_at, at_cap, local_time, error_code, note)
        SELECT w.row_name, v_scope, w.sid, w.carrier, w.channel, w.sender_type, w.cap, w.period, w.reset_at,
               w.time_zone, w.overage_pct, w.warn_at, w.at_cap, w.local_time, w.error_code, w.row_note
          FROM want w WHERE w.kind = 'cap'
        ON CONFLICT (name) DO NOTHING
        RETURNING cap.name, cap.cap_id AS made),
    q AS (
        INSERT INTO throttle.queue_cap (name, scope, scope_id, carrier, channel, max_waiting, validity, error_code, note)
        SELECT w.row_name, v_scope, w.sid, w.carrier, w.channel, w.max_waiting, w.validity, w.error_code, w.row_note
          FROM want w WHERE w.kind = 'queue_cap'
        ON CONFLICT (name) DO NOTHING
        RETURNING queue_cap.name, queue_cap.queue_cap_id AS made),
    k AS (
        INSERT INTO throttle.contact_rule (name, scope, scope_id, channel, kind, max_count, per, reset_at, time_zone,
                                          reply_window, at_limit, error_code, note)
        SELECT w.row_name, v_scope, w.sid, w.channel, w.contact_kind, w.max_count, w.per, w.reset_at, w.time_zone,
               w.reply_window, w.at_limit, w.error_code, w.row_note
          FROM want w WHERE w.kind = 'contact'
        ON CONFLICT (name) DO NOTHING
        RETURNING contact_rule.name, contact_rule.rule_id AS made)
    UPDATE pg_throttle_apply a SET rule_id = m.made
      FROM (SELECT * FROM r UNION ALL SELECT * FROM c UNION ALL SELECT * FROM q UNION ALL SELECT * FROM k) m
     WHERE a.row_name = m.name;

    RETURN QUERY
    SELECT a.sid, a.kind, a.row_name,
           coalesce(a.rule_id,
                    CASE a.kind
                    WHEN 'rate' THEN (SELECT t.limit_id FROM throttle.rate_limit t WHERE t.name = a.row_name)
                    WHEN 'cap' THEN (SELECT t.cap_id FROM throttle.cap t WHERE t.name = a.row_name)
                    WHEN 'contact' THEN (SELECT t.rule_id FROM throttle.contact_rule t WHERE t.name = a.row_name)
                    ELSE (SELECT t.queue_cap_id FROM throttle.queue_cap t WHERE t.name = a.row_name) END),
           a.rule_id IS NOT NULL
      FROM pg_throttle_apply a
     ORDER BY a.sid, CASE a.kind WHEN 'rate' THEN 1 WHEN 'cap' THEN 2 WHEN 'queue_cap' THEN 3 ELSE 4 END, a.row_name;
END
$$;
REVOKE EXECUTE ON FUNCTION throttle.apply_profile(text, throttle.scope, text[], text) FROM PUBLIC;

-- Discovery: every rule of every profile in one line.
CREATE OR REPLACE VIEW throttle.profiles AS
SELECT p.profile, p.class, p.scope, p.rule, p.kind,
       CASE p.kind
       WHEN 'rate' THEN pg_catalog.format('rate %s/%s', p.rate,
                            CASE p.per WHEN interval '1 second' THEN 's' WHEN interval '1 minute' THEN 'min'
                                       WHEN interval '1 hour' THEN 'h' ELSE p.per::text END)
                        || coalesce(', burst ' || p.burst, ', window-exact')
                        || CASE WHEN p.each_sender THEN ', each sender on its own' ELSE '' END
       WHEN 'cap' THEN pg_catalog.format('cap %s/%s, reset %s %s, at cap %s', p.cap, p.period,
                            pg_catalog.to_char(p.reset_at, 'HH24:MI'), p.time_zone, p.at_cap)
                       || CASE WHEN p.at_cap = 'defer_local' THEN ' ' || pg_catalog.to_char(p.local_time, 'HH24:MI') || ' recipient''s time' ELSE '' END
                       || CASE WHEN p.overage_pct > 0 THEN pg_catalog.format(', overage %s %%', p.overage_pct) ELSE '' END
                       || CASE WHEN pg_catalog.cardinality(p.warn_at) > 0
                               THEN ', warn at ' || pg_catalog.array_to_string(p.warn_at, '/') || ' %' ELSE '' END
       WHEN 'contact' THEN pg_catalog.format('contact rule %s %s', p.contact_kind, p.max_count)
                           || CASE WHEN p.contact_kind IN ('new_contacts', 'follow_up_contacts', 'pair_rate')
                                   THEN coalesce(' per ' || p.per::text,
                                                 ' a day from ' || pg_catalog.to_char(p.reset_at, 'HH24:MI') || ' ' || p.time_zone)
                                   ELSE '' END
                           || ', at limit ' || p.at_limit
       ELSE 'queue cap ' || coalesce(p.max_waiting || ' waiting', 'the scope''s slowest rate x validity ' || p.validity::text)
            || coalesce(', validity ' || CASE WHEN p.max_waiting IS NOT NULL THEN p.validity::text END, '')
       END
       || coalesce(', error ' || p.error_code, '')
       || coalesce('; carrier ' || p.carrier, '')
       || coalesce('; channel ' || p.channel, '')
       || coalesce('; sender type ' || p.sender_type, '')
       || CASE WHEN p.class <> '' AND p.min_score IS NOT NULL THEN pg_catalog.format('; vetting score %s-%s', p.min_score, p.max_score) ELSE '' END
       || CASE WHEN p.default_class THEN '; default class' ELSE '' END
       AS summary,
       p.default_class,
       p.note
  FROM throttle.profile_rule p
 ORDER BY p.profile, p.ord, p.class, p.rule;

COMMENT ON TABLE throttle.profile_rule IS
    'Provider profiles shipped with pg_throttle: one row per rule (rate, calendar cap, queue cap or contact rule) of each profile and class; throttle.apply_profile() turns them into limits. Do not edit: change the created limits instead';
COMMENT ON FUNCTION throttle.apply_profile(text, throttle.scope, text, text) IS
    'Create the limits of a provider profile (and class) for a sender, campaign, brand or account, named profile/class/scope:id/rule; rows that exist are kept as they are. Returns every rule''s row and whether it was created now';
COMMENT ON FUNCTION throttle.apply_profile(text, throttle.scope, text[], text) IS
    'Create the limits of a provider profile (and class) for many senders, campaigns, brands or accounts at once, set-based: all checked first, then created in one statement per kind; rows that exist are kept. Returns every scope''s rows and whether each was created now';
COMMENT ON VIEW throttle.profiles IS
    'Every rule of every provider profile, with its class, scope and a one-line summary';

-- Reading the profiles is for everyone; applying them is for the owner (or roles it grants
-- EXECUTE, which also need INSERT on the limit tables).
GRANT SELECT ON throttle.profile_rule, throttle.profiles TO PUBLIC;
-- END shipped profiles

-- 0.5.0: contact rules (seed 004, Sendblue; WhatsApp's pair rate, PRODUCT.md), per line.
INSERT INTO throttle.profile_rule (profile, class, rule, kind, scope, channel, contact_kind, max_count, per,
                                   reset_at, time_zone, reply_window, at_limit, ord, default_class, note)
VALUES
    ('sendblue_contacts', '', 'line_streak', 'contact', 'sender', 'sms', 'line_streak', 150, NULL,
     '03:00', 'America/New_York', '24 hours', 'hold', 0, false,
     'Sendblue: at most 150 consecutive outbound SMS per line; cannot be disabled; an inbound message resets it (seed 004)'),
    ('sendblue_contacts', 'blue_ocean', 'new', 'contact', 'sender', NULL, 'new_contacts', 50, NULL,
     '03:00', 'America/New_York', '24 hours', 'hold', 1, true,
     'Sendblue Blue Ocean: 50 contacts a day per line who never texted you, unique contacts, reset daily at 3am Eastern (seed 004)'),
    ('sendblue_contacts', 'blue_ocean', 'follow_up', 'contact', 'sender', NULL, 'follow_up_contacts', 200, NULL,
     '03:00', 'America/New_York', '24 hours', 'hold', 1, true,
     'Sendblue Blue Ocean: 200 contacts a day per line messaged first more than 24 hours after their last message; replies within 24 hours are unlimited (seed 004)'),
    ('sendblue_contacts', 'blue_ocean', 'unanswered', 'contact', 'sender', NULL, 'unanswered', 5, NULL,
     '03:00', 'America/New_York', '24 hours', 'hold', 1, true,
     'Sendblue Blue Ocean: 5 messages to a contact who has not replied (seed 004)'),
    ('sendblue_contacts', 'ai_agent', 'follow_up', 'contact', 'sender', NULL, 'follow_up_contacts', 200, '24 hours',
     '03:00', 'America/New_York', '24 hours', 'hold', 2, false,
     'Sendblue AI Agent plan: 200 follow-up contacts per line in a rolling 24-hour window; replies within 24 hours are unlimited (seed 004)'),
    ('whatsapp_pair', '', 'pair_rate', 'contact', 'sender', 'whatsapp', 'pair_rate', 1, '6 seconds',
     '00:00', 'UTC', '0', 'hold', 0, false,
     'WhatsApp: about one message per 6 seconds to the same recipient from one number (PRODUCT.md)');
