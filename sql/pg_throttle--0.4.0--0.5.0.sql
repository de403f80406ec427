-- pg_throttle 0.4.0 -> 0.5.0: conversation-aware limits of a line (contact rules): distinct
-- new and follow-up contacts per day or rolling window, the reply window, unanswered
-- messages per contact, consecutive outbound per line, and a per-recipient pair rate;
-- throttle.inbound() records inbound messages; messages a rule holds carry held_rule; sticky
-- number pools (pending.pool) and throttle.plan_lines().

CREATE TYPE throttle.contact_rule_kind AS ENUM
    ('new_contacts', 'follow_up_contacts', 'unanswered', 'line_streak', 'pair_rate');
-- What the worker does with a message over a rule: hold it until the rule allows it (the
-- window's reset, or an inbound message), or dead-letter it.
CREATE TYPE throttle.contact_action AS ENUM ('hold', 'refuse');

CREATE TABLE throttle.contact_rule (
    rule_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text UNIQUE CHECK (name <> ''),
    scope        throttle.scope NOT NULL,
    scope_id     text NOT NULL CHECK (scope_id <> ''),
    channel      text CHECK (channel ~ '^[a-z0-9_]+$'),
    kind         throttle.contact_rule_kind NOT NULL,
    max_count    integer NOT NULL CHECK (max_count BETWEEN 1 AND 1000000000),
    -- Contact caps and the pair rate count over `per` (rolling) or, when it is NULL, over
    -- calendar days resetting at reset_at in time_zone.
    per          interval CHECK (per > interval '0' AND per <= interval '31 days'),
    reset_at     time NOT NULL DEFAULT '03:00',
    time_zone    text NOT NULL DEFAULT 'America/New_York',
    reply_window interval NOT NULL DEFAULT '24 hours'
                 CHECK (reply_window >= interval '0' AND reply_window <= interval '31 days'),
    at_limit     throttle.contact_action NOT NULL DEFAULT 'hold',
    error_code   text,
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contact_rule_scope_idx ON throttle.contact_rule (scope, scope_id);

CREATE FUNCTION throttle.check_contact_rule() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.max_count IS NULL OR NEW.max_count < 1 OR NEW.max_count > 1000000000 THEN
        RAISE EXCEPTION 'max_count must be between 1 and 1000000000, got %', coalesce(NEW.max_count::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'for example 50 new contacts a day, 5 messages without a reply, 1 message per 6 seconds to a recipient';
    END IF;
    IF NEW.time_zone IS NULL OR NOT throttle.is_time_zone(NEW.time_zone) THEN
        RAISE EXCEPTION 'unknown time zone %', coalesce(quote_literal(NEW.time_zone), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use an IANA zone name such as ''America/New_York'' or ''UTC''';
    END IF;
    IF NEW.kind = 'pair_rate' AND NEW.per IS NULL THEN
        RAISE EXCEPTION 'a pair_rate rule needs per (the window it counts messages to one recipient in)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'for example max_count 1, per ''6 seconds''';
    END IF;
    IF NEW.per IS NOT NULL AND (NEW.per <= interval '0' OR NEW.per > interval '31 days'
                                OR NEW.per < interval '1 millisecond') THEN
        RAISE EXCEPTION 'per must be between 1 millisecond and 31 days, got %', NEW.per
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '''24 hours'' for a rolling day; NULL for calendar days resetting at reset_at in time_zone';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER contact_rule_check BEFORE INSERT OR UPDATE ON throttle.contact_rule
    FOR EACH ROW EXECUTE FUNCTION throttle.check_contact_rule();

-- Inbound messages recorded by the provider's message id (a webhook delivered twice counts
-- once), kept for a week.
CREATE TABLE throttle.inbound_message (
    message_id  text PRIMARY KEY,
    sender      text NOT NULL,
    contact     text NOT NULL,
    received_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_message_recorded_idx ON throttle.inbound_message (recorded_at);

-- Each contact's last inbound message to each line (written by throttle.inbound() only).
CREATE TABLE throttle.contact_inbound (
    sender          text NOT NULL,
    contact         text NOT NULL,
    last_inbound_at timestamptz NOT NULL,
    PRIMARY KEY (sender, contact)
);
-- A line's last inbound message from anyone (the line streak resets on it).
CREATE INDEX contact_inbound_line_idx ON throttle.contact_inbound (sender, last_inbound_at DESC);
-- Pruning, oldest first (throttle.contact_retention).
CREATE INDEX contact_inbound_age_idx ON throttle.contact_inbound (last_inbound_at);

-- What each line sent each contact, as the contact rules count it (written by the release
-- worker only, in the transaction that releases).
CREATE TABLE throttle.contact_sent (
    sender           text NOT NULL,
    contact          text NOT NULL,
    counted_as       smallint CHECK (counted_as IN (1, 2)),   -- 1 new, 2 follow-up
    counted_at       timestamptz,
    unanswered       integer NOT NULL DEFAULT 0,
    unanswered_since timestamptz,     -- the inbound message the streak counts after
    recent           timestamptz[] NOT NULL DEFAULT '{}',     -- the last sends (pair rate)
    last_sent_at     timestamptz NOT NULL,
    PRIMARY KEY (sender, contact)
);
-- Contacts counted in a window, per line and kind.
CREATE INDEX contact_sent_counted_idx ON throttle.contact_sent (sender, counted_as, counted_at)
    WHERE counted_as IS NOT NULL;
-- Pruning, oldest first.
CREATE INDEX contact_sent_last_idx ON throttle.contact_sent (last_sent_at);

-- Each line's consecutive outbound messages (written by the release worker only).
CREATE TABLE throttle.line_sent (
    sender       text PRIMARY KEY,
    streak       integer NOT NULL,
    streak_since timestamptz,         -- the inbound message the streak counts after
    updated_at   timestamptz NOT NULL
);

-- Messages held by a contact rule: the rule, and the line and recipient to find them by
-- when the recipient writes.
ALTER TABLE throttle.pending ADD COLUMN held_rule bigint;
CREATE INDEX pending_held_rule_idx ON throttle.pending (sender, recipient) WHERE held_rule IS NOT NULL;

-- Sticky number pools: a message may name a pool (pending.pool) instead of a sender. A
-- recipient's first message through a pool picks the pool's line with the most headroom (the
-- fewest recipients assigned to it in the last 24 hours: the new contacts it has taken on);
-- every later message to that recipient goes through the same line, even when another is
-- idle, unless that line has left the pool (then the recipient is reassigned once, and the
-- previous line recorded). Assignments are rows: they survive restarts.
CREATE TABLE throttle.pool (
    pool       text PRIMARY KEY CHECK (pool <> ''),
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE throttle.pool_line (
    pool     text NOT NULL REFERENCES throttle.pool ON DELETE CASCADE,
    sender   text NOT NULL CHECK (sender <> ''),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, sender)
);
CREATE TABLE throttle.pool_assignment (
    pool          text NOT NULL REFERENCES throttle.pool ON DELETE CASCADE,
    recipient     text NOT NULL,
    sender        text NOT NULL,
    assigned_at   timestamptz NOT NULL DEFAULT now(),
    previous      text,          -- the line it had before it was reassigned
    reassigned_at timestamptz,
    PRIMARY KEY (pool, recipient)
);
-- Recipients each line took on recently (the headroom of a line).
CREATE INDEX pool_assignment_line_idx ON throttle.pool_assignment (pool, sender, assigned_at);

ALTER TABLE throttle.pending ADD COLUMN pool text;

-- The line of a message named by its pool (before the message's other checks; as the owner:
-- applications do not write assignments). Concurrent first messages to one recipient agree
-- on one line: the assignment's primary key decides, and the others read what it chose.
CREATE FUNCTION throttle.pending_assign_pool() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_line text;
    v_prev text;
BEGIN
    IF NEW.sender IS NOT NULL THEN
        RAISE EXCEPTION 'a message names a pool or a sender, not both (pool %, sender %)',
                        quote_literal(NEW.pool), quote_literal(NEW.sender)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'leave sender out: the pool picks the recipient''s line';
    END IF;
    IF NEW.recipient IS NULL OR btrim(NEW.recipient) = '' THEN
        RAISE EXCEPTION 'a message to pool % needs a recipient', quote_literal(NEW.pool)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a pool keeps each recipient on one line: it needs to know the recipient';
    END IF;
    FOR attempt IN 1..3 LOOP
        SELECT a.sender INTO v_line FROM throttle.pool_assignment a
         WHERE a.pool = NEW.pool AND a.recipient = NEW.recipient;
        IF FOUND AND EXISTS (SELECT 1 FROM throttle.pool_line l WHERE l.pool = NEW.pool AND l.sender = v_line) THEN
            NEW.sender := v_line;
            RETURN NEW;
        END IF;
        v_prev := v_line;
        SELECT l.sender INTO v_line FROM throttle.pool_line l
         WHERE l.pool = NEW.pool
         ORDER BY (SELECT count(*) FROM throttle.pool_assignment a
                    WHERE a.pool = l.pool AND a.sender = l.sender
                      AND a.assigned_at > now() - interval '24 hours'),
                  hashtext(NEW.recipient || chr(1) || l.sender)
         LIMIT 1;
        IF NOT FOUND THEN
            IF EXISTS (SELECT 1 FROM throttle.pool p WHERE p.pool = NEW.pool) THEN
                RAISE EXCEPTION 'pool % has no lines', quote_literal(NEW.pool)
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = format('add lines: INSERT INTO throttle.pool_line (pool, sender) VALUES (%L, ''+1555...'')', NEW.pool);
            END IF;
            RAISE EXCEPTION 'unknown pool %', quote_literal(NEW.pool)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'SELECT * FROM throttle.pool lists the pools';
        END IF;
        IF v_prev IS NULL THEN
            INSERT INTO throttle.pool_assignment (pool, recipient, sender)
            VALUES (NEW.pool, NEW.recipient, v_line)
            ON CONFLICT ON CONSTRAINT pool_assignment_pkey DO NOTHING;
        ELSE
            UPDATE throttle.pool_assignment a
               SET sender = v_line, previous = v_prev, reassigned_at = now(), assigned_at = now()
             WHERE a.pool = NEW.pool AND a.recipient = NEW.recipient AND a.sender = v_prev;
        END IF;
        IF FOUND THEN
            NEW.sender := v_line;
            RETURN NEW;
        END IF;
        -- Another session assigned (or reassigned) the recipient first: read what it chose.
    END LOOP;
    RAISE EXCEPTION 'the line of recipient % in pool % keeps changing', quote_literal(NEW.recipient), quote_literal(NEW.pool)
        USING ERRCODE = 'serialization_failure', HINT = 'retry the transaction';
END
$$;
-- Named to run before pending_check (triggers fire in name order), which checks the sender.
CREATE TRIGGER pending_assign_pool BEFORE INSERT ON throttle.pending
    FOR EACH ROW WHEN (NEW.pool IS NOT NULL) EXECUTE FUNCTION throttle.pending_assign_pool();

-- Enqueue one message through a pool; returns its id (and the line is in pending.sender).
CREATE FUNCTION throttle.enqueue_pool(
    pool text, carrier text, recipient text, payload jsonb DEFAULT NULL,
    channel text DEFAULT 'sms', cost integer DEFAULT 1, priority smallint DEFAULT 0,
    not_before timestamptz DEFAULT NULL, expires_at timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO throttle.pending (pool, carrier, channel, recipient, cost, priority, payload, not_before, expires_at)
    VALUES (pool, carrier, channel, recipient, cost, priority, payload, not_before, expires_at)
    RETURNING id
$$;

-- How many lines like `sender` a volume of distinct contacts a day needs under its contact
-- rules (Sendblue: 10,000 new contacts a day at 50 per line: 200 lines).
CREATE FUNCTION throttle.plan_lines(
    sender text, new_contacts bigint, follow_ups bigint DEFAULT 0
) RETURNS TABLE (rule_name text, kind throttle.contact_rule_kind, per_line_per_day double precision,
                 volume bigint, lines_needed bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF plan_lines.sender IS NULL OR coalesce(plan_lines.new_contacts, -1) < 0 OR coalesce(plan_lines.follow_ups, -1) < 0 THEN
        RAISE EXCEPTION 'plan_lines: a sender and volumes of at least 0'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'for example throttle.plan_lines(''+15550001111'', 10000) for 10,000 new contacts a day';
    END IF;
    RETURN QUERY
    SELECT coalesce(r.name, r.kind::text || ' (rule ' || r.rule_id || ')'), r.kind,
           v.per_day, v.volume, ceil(v.volume / v.per_day)::bigint
      FROM throttle.contact_rule r
      LEFT JOIN throttle.sender s ON s.sender = plan_lines.sender
      CROSS JOIN LATERAL (
          SELECT CASE r.kind WHEN 'new_contacts' THEN plan_lines.new_contacts
                             ELSE plan_lines.follow_ups END AS volume,
                 -- contacts a line may take on per day: per calendar day, or per rolling `per`
                 r.max_count * CASE WHEN r.per IS NULL THEN 1::float8
                                    ELSE 86400 / extract(epoch FROM r.per)::float8 END AS per_day) v
     WHERE r.kind IN ('new_contacts', 'follow_up_contacts')
       AND ((r.scope = 'sender' AND r.scope_id = plan_lines.sender)
            OR (r.scope = 'campaign' AND r.scope_id = s.campaign)
            OR (r.scope = 'brand' AND r.scope_id = s.brand)
            OR (r.scope = 'account' AND r.scope_id = s.account))
     ORDER BY 5 DESC, 1;
END
$$;

-- The time that stands for "until an inbound message" in pending.not_before.
CREATE FUNCTION throttle.until_reply() RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '9999-12-31 00:00:00+00'::timestamptz $$;

-- The advisory lock key of a line with contact rules. Admissions and inbound messages wait
-- for it; the release worker only ever tries it, before it reads the line's state, and
-- leaves a line whose lock a client holds to a later tick.
CREATE FUNCTION throttle.line_lock_key(sender text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.hashtextextended(sender, 7368)
$$;

-- Record an inbound message, as the owner for the role the ticket names (see take_for).
CREATE FUNCTION throttle.inbound_for(
    sender text, contact text, received_at timestamptz, message_id text, ticket bigint
) RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    caller    oid := throttle.ticket_role(ticket);
    v_sender  text := inbound_for.sender;
    v_contact text := inbound_for.contact;
    v_at      timestamptz := inbound_for.received_at;
    v_id      text := inbound_for.message_id;
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.inbound(sender, contact, ...)'
              USING ERRCODE = '42501';
    END IF;
    IF v_sender IS NULL OR btrim(v_sender) = '' OR v_contact IS NULL OR btrim(v_contact) = '' THEN
        RAISE EXCEPTION 'inbound: sender and contact must be given'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'for example throttle.inbound(''+15550001111'', ''+15552223333'', now(), ''provider-message-id'')';
    END IF;
    IF v_at IS NULL OR NOT isfinite(v_at) THEN
        RAISE EXCEPTION 'inbound: received_at must be a real time, got %', coalesce(v_at::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the time the provider received the message; now() if unknown';
    END IF;
    IF v_id IS NOT NULL AND v_id = '' THEN
        RAISE EXCEPTION 'inbound: message_id must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the provider''s message id makes a retried webhook count once; NULL for none';
    END IF;
    IF NOT throttle.acts_for(caller, v_sender) THEN
        RAISE EXCEPTION 'role % does not act for sender %', caller::regrole, quote_literal(v_sender)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'throttle.account_role maps roles to the accounts whose senders they act for';
    END IF;
    -- The line's lock, before anything is written: a tick of the worker that holds the line
    -- ends first (and this then sees what it held for a reply), and no tick reads the line
    -- until this commits.
    PERFORM pg_catalog.pg_advisory_xact_lock(throttle.line_lock_key(v_sender));
    IF v_id IS NOT NULL THEN
        INSERT INTO throttle.inbound_message (message_id, sender, contact, received_at)
        VALUES (v_id, v_sender, v_contact, v_at)
        ON CONFLICT ON CONSTRAINT inbound_message_pkey DO NOTHING;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        -- A few of those older than a week go with each new one (no sweep ever scans all).
        DELETE FROM throttle.inbound_message m
         WHERE m.message_id IN (SELECT o.message_id FROM throttle.inbound_message o
                                 WHERE o.recorded_at < now() - interval '7 days'
                                 ORDER BY o.recorded_at LIMIT 4);
    END IF;
    INSERT INTO throttle.contact_inbound AS c (sender, contact, last_inbound_at)
    VALUES (v_sender, v_contact, v_at)
    ON CONFLICT ON CONSTRAINT contact_inbound_pkey
    DO UPDATE SET last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at);
    -- Messages held until a reply (this contact's, and the line's streak) go back to their
    -- queues, to be judged again. Only those: the worker never reads them, so this lock on
    -- them never stalls it.
    UPDATE throttle.pending p SET not_before = NULL, held_rule = NULL
     WHERE p.sender = v_sender AND p.held_rule IS NOT NULL
       AND p.not_before = throttle.until_reply()
       AND (p.recipient = v_contact
            OR EXISTS (SELECT 1 FROM throttle.contact_rule r
                        WHERE r.rule_id = p.held_rule AND r.kind = 'line_streak'));
    RETURN true;
END
$$;

-- Record an inbound message from `contact` to the line `sender` (from a webhook handler, in
-- the transaction of the application's own write): it opens the reply window, resets the
-- contact's and the line's streaks, and lets go the messages held until a reply. With the
-- provider's message id, recording it twice counts once (false the second time).
CREATE FUNCTION throttle.inbound(
    sender text, contact text, received_at timestamptz DEFAULT now(), message_id text DEFAULT NULL
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT throttle.inbound_for(sender, contact, received_at, message_id, throttle.consumer_ticket())
$$;

SELECT pg_catalog.pg_extension_config_dump('throttle.contact_rule', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.inbound_message', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.contact_inbound', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.contact_sent', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.line_sent', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.pool', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.pool_line', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.pool_assignment', '');

-- throttle_admit for a message to a recipient (contact rules judged and counted).
CREATE FUNCTION throttle.throttle_admit(
    sender text, carrier text, ts timestamptz, cost integer, channel text, recipient text
) RETURNS throttle.admission
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_admit_to';

-- Contact rules (sql/contacts.sql): a change tells every session and the worker to read them
-- again; held messages are judged again under the new rules.
CREATE TRIGGER contact_rule_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.contact_rule
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();

-- Every contact rule with the line state it reads, per sender it applies to.
CREATE VIEW throttle.contact_rule_state AS
SELECT s.sender, r.rule_id, r.name, r.kind, r.max_count, r.per, r.reset_at, r.time_zone,
       r.reply_window, r.at_limit, r.channel,
       CASE WHEN r.kind IN ('new_contacts', 'follow_up_contacts') THEN
           (SELECT count(*) FROM throttle.contact_sent c
             WHERE c.sender = s.sender
               AND c.counted_as = CASE r.kind WHEN 'new_contacts' THEN 1 ELSE 2 END
               AND c.counted_at >= CASE WHEN r.per IS NOT NULL THEN now() - r.per
                                        ELSE (SELECT w.window_start FROM throttle.cap_window('day', r.reset_at, r.time_zone, now()) w) END)
       WHEN r.kind = 'line_streak' THEN
           (SELECT CASE WHEN l.streak_since IS NOT DISTINCT FROM
                             (SELECT max(i.last_inbound_at) FROM throttle.contact_inbound i WHERE i.sender = s.sender)
                        THEN l.streak ELSE 0 END
              FROM throttle.line_sent l WHERE l.sender = s.sender)
       END AS used,
       (SELECT count(*) FROM throttle.pending p WHERE p.sender = s.sender AND p.held_rule = r.rule_id) AS held
  FROM throttle.contact_rule r
  JOIN throttle.sender s
    ON (r.scope = 'sender' AND s.sender = r.scope_id)
    OR (r.scope = 'campaign' AND s.campaign = r.scope_id)
    OR (r.scope = 'brand' AND s.brand = r.scope_id)
    OR (r.scope = 'account' AND s.account = r.scope_id);

GRANT SELECT ON throttle.contact_rule, throttle.contact_rule_state TO PUBLIC;
GRANT SELECT ON throttle.pool, throttle.pool_line TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_assign_pool() FROM PUBLIC;
COMMENT ON TABLE throttle.pool IS 'Sticky number pools: a message naming a pool goes through its recipient''s line';
COMMENT ON TABLE throttle.pool_line IS 'The lines (senders) of each pool';
COMMENT ON TABLE throttle.pool_assignment IS 'Each recipient''s line in each pool (and the line before a reassignment)';
COMMENT ON FUNCTION throttle.pending_assign_pool() IS 'Internal: the line of a message named by its pool (the recipient''s, or the one with the most headroom)';
COMMENT ON FUNCTION throttle.enqueue_pool(text, text, text, jsonb, text, integer, smallint, timestamptz, timestamptz) IS 'Enqueue one message through a sticky pool; returns its id';
COMMENT ON FUNCTION throttle.throttle_admit(text, text, timestamptz, integer, text, text) IS
    'throttle_admit() of a message to a recipient: the line''s contact rules first (at ts, under the line''s lock), counted with the admission';
COMMENT ON FUNCTION throttle.plan_lines(text, bigint, bigint) IS 'Lines like a sender needed for a volume of new and follow-up contacts a day under its contact rules';
REVOKE ALL ON FUNCTION throttle.inbound_for(text, text, timestamptz, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION throttle.inbound_for(text, text, timestamptz, text, bigint) TO PUBLIC;
COMMENT ON TABLE throttle.contact_rule IS 'Conversation-aware limits of each line: new and follow-up contacts per day or rolling window, unanswered messages per contact, consecutive outbound per line, messages per recipient (pair rate); over one, hold or refuse';
COMMENT ON TABLE throttle.inbound_message IS 'Inbound messages recorded by the provider''s message id (a retried webhook counts once), kept a week';
COMMENT ON TABLE throttle.contact_inbound IS 'Each contact''s last inbound message to each line';
COMMENT ON TABLE throttle.contact_sent IS 'What each line sent each contact, as the contact rules count it (written by the worker)';
COMMENT ON TABLE throttle.line_sent IS 'Each line''s consecutive outbound messages since its last inbound one (written by the worker)';
COMMENT ON VIEW throttle.contact_rule_state IS 'Every contact rule per line it applies to: contacts counted in its window (or the line streak) and messages it holds';
COMMENT ON FUNCTION throttle.inbound(text, text, timestamptz, text) IS 'Record an inbound message to a line: opens the reply window, resets streaks, lets go messages held for a reply; idempotent on the provider''s message id';
COMMENT ON FUNCTION throttle.inbound_for(text, text, timestamptz, text, bigint) IS 'Internal: inbound() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.until_reply() IS 'The not_before of a message held until the recipient (or for a line streak, anyone) writes';
COMMENT ON FUNCTION throttle.line_lock_key(text) IS 'Internal: the advisory lock key of a line with contact rules (admissions and inbound messages wait for it; the worker only tries it)';
COMMENT ON FUNCTION throttle.check_contact_rule() IS 'Internal: validates throttle.contact_rule rows (22023 with a hint)';
COMMENT ON TYPE throttle.contact_rule_kind IS 'What a contact rule limits';
COMMENT ON TYPE throttle.contact_action IS 'What the worker does with a message over a contact rule: hold (until the reset or a reply) or refuse (dead-letter)';

-- Profiles of contact rules: profile_rule rows of kind 'contact'; apply_profile creates them.
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

-- Tables a fresh install made before its REVOKE ALL ... FROM PUBLIC: the same rights here.
REVOKE ALL ON throttle.contact_inbound, throttle.contact_sent, throttle.inbound_message, throttle.line_sent,
              throttle.pool_assignment
    FROM PUBLIC;

-- The worker and every session read the configuration again (the worker learns that this
-- database has contact rules now).
SELECT throttle.note_config_change();
