-- Conversation-aware limits of a line (a sender): distinct new and follow-up contacts per day
-- or rolling 24 h, the reply window, unanswered streaks per contact, consecutive outbound
-- messages per line, and a per-(line, recipient) pair rate (Sendblue, seed 004; WhatsApp).
-- Rules are rows, scoped like caps (a sender, or every sender of a campaign, brand or
-- account: each line counts its own). Applications record inbound messages with
-- throttle.inbound(); the release worker judges each message of a line with rules against
-- what the line and the recipient did before, and counts it in the transaction that
-- releases it.

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
-- recipient's first message through a pool picks the pool's line with the most headroom
-- (throttle.pool_headroom: room under its new-contact caps, then the shortest wait behind
-- what it has queued at its own rate); every later message to that recipient goes through
-- the same line, even when another is idle, unless that line has left the pool (then the
-- recipient is reassigned once, and the previous line recorded). Assignments are rows: they
-- survive restarts.
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

-- The lines of `pool` in the order a new recipient's first message picks them, with the
-- headroom each has now:
--   contact_room  the fewest new contacts any of its new_contacts rules (for `channel`) still
--                 allows in its window: the rule's count less the contacts counted in the
--                 window or, if more, the recipients the pool gave the line in it (NULL: no
--                 such rule);
--   queued        messages waiting on the line (counted up to 1,000);
--   wait          how long those take at the line's slowest own rate limit for `carrier` and
--                 `channel` (0 without one);
--   taken_24h     recipients the pool gave the line in the last 24 hours.
-- Lines with contact room (or no contact caps) come first, then the shortest wait, the most
-- contact room, the fewest recipients taken on; a hash of `recipient` breaks ties.
CREATE FUNCTION throttle.pool_headroom(
    pool text, carrier text DEFAULT 'att', channel text DEFAULT 'sms', recipient text DEFAULT ''
) RETURNS TABLE (sender text, contact_room bigint, queued bigint, wait interval, taken_24h bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT l.sender, cr.room, q.n,
           CASE WHEN rl.per_s > 0 THEN make_interval(secs => q.n / rl.per_s) ELSE interval '0' END,
           t.n
      FROM throttle.pool_line l
      LEFT JOIN throttle.sender s ON s.sender = l.sender
     CROSS JOIN LATERAL (
           SELECT count(*) AS n
             FROM (SELECT 1 FROM throttle.pending p WHERE p.sender = l.sender LIMIT 1000) w) q
     CROSS JOIN LATERAL (
           SELECT min(r.rate / extract(epoch FROM r.per)::float8) AS per_s
             FROM throttle.rate_limit r
            WHERE r.scope = 'sender' AND r.scope_id = l.sender
              AND (r.carrier IS NULL OR r.carrier = pool_headroom.carrier)
              AND (r.channel IS NULL OR r.channel = pool_headroom.channel)) rl
     CROSS JOIN LATERAL (
           SELECT min(r.max_count - greatest(
                      (SELECT count(*) FROM throttle.contact_sent c
                        WHERE c.sender = l.sender AND c.counted_as = 1 AND c.counted_at >= w.start),
                      (SELECT count(*) FROM throttle.pool_assignment a
                        WHERE a.pool = l.pool AND a.sender = l.sender AND a.assigned_at >= w.start)))::int8 AS room
             FROM throttle.contact_rule r
            CROSS JOIN LATERAL (
                  SELECT CASE WHEN r.per IS NOT NULL THEN now() - r.per
                              ELSE (date_trunc('day', (now() AT TIME ZONE r.time_zone) - r.reset_at)
                                    + r.reset_at) AT TIME ZONE r.time_zone END AS start) w
            WHERE r.kind = 'new_contacts'
              AND (r.channel IS NULL OR r.channel = pool_headroom.channel)
              AND ((r.scope = 'sender' AND r.scope_id = l.sender)
                   OR (r.scope = 'campaign' AND r.scope_id = s.campaign)
                   OR (r.scope = 'brand' AND r.scope_id = s.brand)
                   OR (r.scope = 'account' AND r.scope_id = s.account))) cr
     CROSS JOIN LATERAL (
           SELECT count(*) AS n FROM throttle.pool_assignment a
            WHERE a.pool = l.pool AND a.sender = l.sender
              AND a.assigned_at > now() - interval '24 hours') t
     WHERE l.pool = pool_headroom.pool
     ORDER BY coalesce(cr.room, 1) > 0 DESC, 4, cr.room DESC NULLS FIRST, t.n,
              hashtext(pool_headroom.recipient || chr(1) || l.sender)
$$;

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
        SELECT h.sender INTO v_line
          FROM throttle.pool_headroom(NEW.pool, NEW.carrier, NEW.channel, NEW.recipient) h
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
