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

-- The time that stands for "until an inbound message" in pending.not_before.
CREATE FUNCTION throttle.until_reply() RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '9999-12-31 00:00:00+00'::timestamptz $$;

-- The advisory lock keys that order an inbound message and the worker's decision to hold a
-- message for one (the worker only ever tries them; see inbound_for).
CREATE FUNCTION throttle.contact_lock_key(sender text, contact text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.hashtextextended(sender || pg_catalog.chr(1) || coalesce(contact, ''), 7368)
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
    -- Ordered with the worker: it holds a message for a reply only under these keys (tried,
    -- never waited for), and reads this contact's inbound state after taking them. Taken
    -- here before the messages held for a reply are looked for (in a statement of its own,
    -- so that it sees every hold the worker committed while this waited).
    PERFORM pg_catalog.pg_advisory_xact_lock(throttle.contact_lock_key(v_sender, v_contact)),
            pg_catalog.pg_advisory_xact_lock(throttle.contact_lock_key(v_sender, NULL));
    -- Messages held until a reply (this contact's, and the line's streak) go back to their
    -- queues, to be judged again. Only those: the worker never reads them, so this lock on
    -- them never stalls it.
    UPDATE throttle.pending p SET not_before = NULL, held_rule = NULL
      FROM throttle.contact_rule r
     WHERE p.sender = v_sender AND p.held_rule IS NOT NULL
       AND p.not_before = throttle.until_reply()
       AND r.rule_id = p.held_rule
       AND (p.recipient = v_contact OR r.kind = 'line_streak');
    -- Held by a rule deleted meanwhile: let go as well.
    UPDATE throttle.pending p SET not_before = NULL, held_rule = NULL
     WHERE p.sender = v_sender AND p.recipient = v_contact AND p.held_rule IS NOT NULL
       AND p.not_before = throttle.until_reply()
       AND NOT EXISTS (SELECT 1 FROM throttle.contact_rule r WHERE r.rule_id = p.held_rule);
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
