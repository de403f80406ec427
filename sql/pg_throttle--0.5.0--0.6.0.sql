-- pg_throttle 0.5.0 -> 0.6.0: at-least-once delivery, provider feedback and configuration as
-- code. Consumers read() released messages with a visibility timeout and ack() each with its
-- outcome (sent, failed, rejected); the worker puts back what was not acknowledged in time and
-- what failed (after a back-off, through the limits again), dead after throttle.max_attempts;
-- throttle.sent keeps what was sent. A failed message's error code can slow the limit it came
-- through, or hold its scope until the reset (throttle.feedback_rule); limit_state shows the
-- slowed limits. export_config() and import_config() write and read the configuration as JSON.

-- Internal: wakes the worker for a message in flight that falls due sooner than it knew.
CREATE FUNCTION throttle.note_inflight_due(at timestamptz) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'note_inflight_due_wrapper';

-- The configuration as one JSON document, and back (src/config_doc.rs).
CREATE FUNCTION throttle.export_config() RETURNS jsonb
STRICT STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'export_config_wrapper';
CREATE FUNCTION throttle.import_config(doc jsonb, dry_run bool DEFAULT false)
RETURNS TABLE (action text, kind text, key text, detail text)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'import_config_wrapper';

-- Messages read and not yet acknowledged, or failed and waiting for their retry.
CREATE TABLE throttle.inflight (
    id          bigint PRIMARY KEY,
    sender      text NOT NULL,
    carrier     text NOT NULL,
    channel     text NOT NULL,
    recipient   text,
    cost        integer NOT NULL,
    priority    smallint NOT NULL,
    payload     jsonb,
    not_before  timestamptz,
    expires_at  timestamptz,
    enqueued_at timestamptz NOT NULL,
    released_at timestamptz NOT NULL,
    attempt     integer NOT NULL,       -- 1 the first time the message is read
    read_at     timestamptz NOT NULL,
    visible_at  timestamptz NOT NULL,   -- back to its queue then, unless acknowledged
    last_error  text                    -- set by a failed ack: it waits for its retry
);
-- The worker finds what is due by this index alone (never a scan of the table).
CREATE INDEX inflight_visible_idx ON throttle.inflight (visible_at);

-- Attempts of messages that went back to their queue (read again, they carry on counting).
CREATE TABLE throttle.attempt (
    id         bigint PRIMARY KEY,
    attempts   integer NOT NULL,
    last_error text
);

-- What was sent: one row per acknowledged message, pruned by the worker after
-- throttle.sent_retention (a batch at a time, by sent_at).
CREATE TABLE throttle.sent (
    id                  bigint PRIMARY KEY,
    sender              text NOT NULL,
    carrier             text NOT NULL,
    channel             text NOT NULL,
    recipient           text,
    cost                integer NOT NULL,
    enqueued_at         timestamptz NOT NULL,
    released_at         timestamptz NOT NULL,
    sent_at             timestamptz NOT NULL,
    attempts            integer NOT NULL,
    provider_message_id text
);
CREATE INDEX sent_at_idx ON throttle.sent (sent_at);
-- "What did we send to this number today?"
CREATE INDEX sent_recipient_idx ON throttle.sent (recipient, sent_at) WHERE recipient IS NOT NULL;

-- Read up to n released messages of the senders the calling role acts for (oldest first),
-- invisible to other readers for `visibility`. Runs as the owner for the role the ticket
-- names (see take_for). A rollback puts them back in throttle.ready.
CREATE FUNCTION throttle.read_for(n integer, visibility interval, ticket bigint)
RETURNS SETOF throttle.inflight
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller  oid := throttle.ticket_role(ticket);
    v_until timestamptz;
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.read(n, visibility)'
              USING ERRCODE = '42501';
    END IF;
    IF n IS NULL OR n < 1 OR n > 100000 THEN
        RAISE EXCEPTION 'read: n must be between 1 and 100000, got %', coalesce(n::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the most messages to read at once, for example throttle.read(100, ''30 seconds'')';
    END IF;
    IF visibility IS NULL OR visibility <= interval '0' OR visibility > interval '12 hours' THEN
        RAISE EXCEPTION 'read: visibility must be more than 0 and at most 12 hours, got %',
                        coalesce(visibility::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'how long the messages stay yours before they go back to their queue: longer than a provider call, for example ''30 seconds''';
    END IF;
    v_until := pg_catalog.clock_timestamp() + visibility;
    RETURN QUERY
    WITH taken AS (
        DELETE FROM throttle.ready
         WHERE id = ANY (ARRAY(
                   SELECT m.id FROM throttle.ready m
                    WHERE NOT EXISTS (SELECT 1 FROM throttle.account_role)
                       OR EXISTS (SELECT 1
                                    FROM throttle.sender s
                                    JOIN throttle.account_role a ON a.account = s.account
                                    JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                                   WHERE s.sender = m.sender
                                     AND pg_catalog.pg_has_role(caller, r.oid, 'MEMBER'))
                    ORDER BY m.id LIMIT n FOR UPDATE SKIP LOCKED))
        RETURNING *)
    INSERT INTO throttle.inflight AS f
           (id, sender, carrier, channel, recipient, cost, priority, payload, not_before,
            expires_at, enqueued_at, released_at, attempt, read_at, visible_at, last_error)
    SELECT t.id, t.sender, t.carrier, t.channel, t.recipient, t.cost, t.priority, t.payload,
           t.not_before, t.expires_at, t.enqueued_at, t.released_at,
           coalesce(a.attempts, 0) + 1, pg_catalog.clock_timestamp(), v_until, NULL
      FROM taken t LEFT JOIN throttle.attempt a ON a.id = t.id
    RETURNING f.*;
    IF FOUND THEN
        PERFORM throttle.note_inflight_due(v_until);
    END IF;
END
$$;

-- Read up to n released messages, yours for `visibility`: acknowledge each with ack().
CREATE FUNCTION throttle.read(n integer DEFAULT 100, visibility interval DEFAULT '30 seconds')
RETURNS SETOF throttle.inflight
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM throttle.read_for(n, visibility, throttle.consumer_ticket());
END
$$;

-- Acknowledge message `id` with its outcome, as the owner for the role the ticket names.
CREATE FUNCTION throttle.ack_for(
    id bigint, outcome text, provider_message_id text, error_code text,
    retry_after interval, attempt integer, ticket bigint
) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    caller    oid := throttle.ticket_role(ticket);
    v_id      bigint := ack_for.id;
    v_attempt integer := ack_for.attempt;
    f         throttle.inflight;
    s         throttle.sent;
    v_owner   text;
    -- The tenant model applies (else every role acts for every sender: no check per call).
    tenants   boolean := EXISTS (SELECT 1 FROM throttle.account_role);
    max_attempts integer := coalesce(nullif(pg_catalog.current_setting('throttle.max_attempts', true), '')::integer, 5);
    backoff   interval := coalesce(nullif(pg_catalog.current_setting('throttle.retry_backoff', true), '')::interval,
                                   interval '30 seconds');
    wait      interval;
    feedback  text;   -- what a feedback rule did about a failed message's error code
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.ack(id, outcome, ...)'
              USING ERRCODE = '42501';
    END IF;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'ack: id must be given' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'the id of a message returned by throttle.read()';
    END IF;
    IF outcome IS NULL OR outcome NOT IN ('sent', 'failed', 'rejected') THEN
        RAISE EXCEPTION 'ack: outcome must be sent, failed or rejected, got %', coalesce(quote_literal(outcome), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'sent: the provider accepted it; failed: try again later; rejected: never (it goes to throttle.dead)';
    END IF;
    IF retry_after IS NOT NULL AND (outcome <> 'failed' OR retry_after < interval '0' OR retry_after > interval '7 days') THEN
        RAISE EXCEPTION 'ack: retry_after is for a failed outcome, between 0 and 7 days, got %', retry_after
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the provider''s Retry-After, for example ''5 seconds''; NULL for the back-off of throttle.retry_backoff';
    END IF;
    SELECT * INTO f FROM throttle.inflight i WHERE i.id = v_id FOR UPDATE;
    IF FOUND THEN
        IF tenants AND NOT throttle.acts_for(caller, f.sender) THEN
            RAISE EXCEPTION 'role % does not act for sender %', caller::regrole, quote_literal(f.sender)
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'throttle.account_role maps roles to the accounts whose senders they act for';
        END IF;
        IF outcome <> 'sent' AND (f.last_error IS NOT NULL OR (v_attempt IS NOT NULL AND v_attempt <> f.attempt)) THEN
            RETURN 'stale';  -- an earlier read's outcome, or one already given
        END IF;
        DELETE FROM throttle.attempt a WHERE a.id = v_id AND outcome <> 'failed';
        IF outcome = 'sent' THEN
            DELETE FROM throttle.inflight i WHERE i.id = v_id;
            INSERT INTO throttle.sent (id, sender, carrier, channel, recipient, cost, enqueued_at,
                                       released_at, sent_at, attempts, provider_message_id)
            VALUES (f.id, f.sender, f.carrier, f.channel, f.recipient, f.cost, f.enqueued_at,
                    f.released_at, pg_catalog.clock_timestamp(), f.attempt, provider_message_id);
            RETURN 'sent';
        END IF;
        -- A throttling answer (a feedback rule has its code) slows the limit the message came
        -- through, or holds its scope (sql/feedback.sql); it is not the message's fault: that
        -- attempt does not count, and the message goes back at once (the slower limit, or the
        -- hold, paces it), or after the provider's retry_after.
        IF outcome = 'failed' THEN
            feedback := throttle.feedback_for(f.sender, f.carrier, f.channel, error_code);
        END IF;
        IF outcome = 'rejected' OR (f.attempt >= max_attempts AND feedback IS NULL) THEN
            DELETE FROM throttle.inflight i WHERE i.id = v_id;
            INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                                       not_before, expires_at, enqueued_at, died_at, reason, error_code)
            VALUES (f.id, f.sender, f.carrier, f.channel, f.recipient, f.cost, f.priority, f.payload,
                    f.not_before, f.expires_at, f.enqueued_at, pg_catalog.clock_timestamp(),
                    CASE WHEN outcome = 'rejected' THEN format('rejected by the provider (attempt %s)', f.attempt)
                         ELSE format('failed %s times', f.attempt) END,
                    error_code);
            DELETE FROM throttle.attempt a WHERE a.id = v_id;
            RETURN 'dead';
        END IF;
        -- Back to its queue after the back-off (doubling per attempt, at most an hour), by
        -- the worker, through the limits again.
        wait := coalesce(retry_after,
                         CASE WHEN feedback IS NOT NULL THEN interval '0' END,
                         least(backoff * (2::float8 ^ least(f.attempt - 1, 30)), interval '1 hour'));
        UPDATE throttle.inflight i
           SET visible_at = pg_catalog.clock_timestamp() + wait, last_error = coalesce(error_code, 'failed'),
               attempt = CASE WHEN feedback IS NULL THEN i.attempt ELSE i.attempt - 1 END
         WHERE i.id = v_id;
        PERFORM throttle.note_inflight_due(pg_catalog.clock_timestamp() + wait);
        RETURN 'retry';
    END IF;
    -- Not in flight.
    SELECT t.sender INTO v_owner FROM throttle.sent t WHERE t.id = v_id;
    IF v_owner IS NOT NULL THEN
        IF tenants AND NOT throttle.acts_for(caller, v_owner) THEN
            RAISE EXCEPTION 'role % does not act for sender %', caller::regrole, quote_literal(v_owner)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN CASE WHEN outcome = 'sent' THEN 'sent' ELSE 'stale' END;
    END IF;
    IF outcome = 'sent' THEN
        -- Acknowledged after its visibility timeout: it went back to its queue. It was sent:
        -- take it out, so that it is not sent twice.
        DELETE FROM throttle.pending m WHERE m.id = v_id AND throttle.acts_for(caller, m.sender)
        RETURNING m.id, m.sender, m.carrier, m.channel, m.recipient, m.cost, m.enqueued_at
             INTO s.id, s.sender, s.carrier, s.channel, s.recipient, s.cost, s.enqueued_at;
        IF s.id IS NULL THEN
            DELETE FROM throttle.ready m WHERE m.id = v_id AND throttle.acts_for(caller, m.sender)
            RETURNING m.id, m.sender, m.carrier, m.channel, m.recipient, m.cost, m.enqueued_at, m.released_at
                 INTO s.id, s.sender, s.carrier, s.channel, s.recipient, s.cost, s.enqueued_at, s.released_at;
        END IF;
        IF s.id IS NOT NULL THEN
            INSERT INTO throttle.sent (id, sender, carrier, channel, recipient, cost, enqueued_at,
                                       released_at, sent_at, attempts, provider_message_id)
            SELECT s.id, s.sender, s.carrier, s.channel, s.recipient, s.cost, s.enqueued_at,
                   coalesce(s.released_at, pg_catalog.clock_timestamp()), pg_catalog.clock_timestamp(),
                   coalesce(a.attempts, 1), provider_message_id
              FROM (SELECT 1) one LEFT JOIN throttle.attempt a ON a.id = v_id;
            DELETE FROM throttle.attempt a WHERE a.id = v_id;
            RETURN 'sent';
        END IF;
    ELSIF EXISTS (SELECT 1 FROM throttle.pending m WHERE m.id = v_id AND throttle.acts_for(caller, m.sender))
       OR EXISTS (SELECT 1 FROM throttle.ready m WHERE m.id = v_id AND throttle.acts_for(caller, m.sender))
       OR EXISTS (SELECT 1 FROM throttle.dead m WHERE m.id = v_id AND throttle.acts_for(caller, m.sender)) THEN
        RETURN 'stale';  -- it went back to its queue (or died) already
    END IF;
    RAISE EXCEPTION 'ack: no message % in flight for this role', v_id
        USING ERRCODE = 'no_data_found',
              HINT = 'acknowledge the ids throttle.read() returned, as a role that acts for their sender';
END
$$;

-- Acknowledge a message read with read(): 'sent' (with the provider's message id), 'failed'
-- (with the provider's error code: back to its queue after a back-off, or dead after
-- throttle.max_attempts) or 'rejected' (dead now). Returns what became of it: sent, retry,
-- dead, or stale (the message was read again since, or already acknowledged).
CREATE FUNCTION throttle.ack(
    id bigint, outcome text DEFAULT 'sent', provider_message_id text DEFAULT NULL,
    error_code text DEFAULT NULL, retry_after interval DEFAULT NULL, attempt integer DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN throttle.ack_for(id, outcome, provider_message_id, error_code, retry_after, attempt,
                            throttle.consumer_ticket());
END
$$;

-- Internal: record the messages `ids` (in flight, of senders the ticket's role acts for) as
-- sent, in one statement; returns the ids recorded. ack_many() acks the others one by one.
CREATE FUNCTION throttle.ack_sent_for(ids bigint[], provider_message_ids text[], ticket bigint)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller oid := throttle.ticket_role(ticket);
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.ack_many(ids, outcomes, ...)'
              USING ERRCODE = '42501';
    END IF;
    RETURN QUERY
    WITH given AS (SELECT u.id, u.pid FROM unnest(ids, provider_message_ids) AS u(id, pid)),
    gone AS (
        DELETE FROM throttle.inflight f USING given g
         WHERE f.id = g.id
           AND (NOT EXISTS (SELECT 1 FROM throttle.account_role) OR throttle.acts_for(caller, f.sender))
        RETURNING f.id, f.sender, f.carrier, f.channel, f.recipient, f.cost, f.enqueued_at,
                  f.released_at, f.attempt, g.pid),
    forgotten AS (
        DELETE FROM throttle.attempt a USING gone WHERE a.id = gone.id),
    recorded AS (
        INSERT INTO throttle.sent (id, sender, carrier, channel, recipient, cost, enqueued_at,
                                   released_at, sent_at, attempts, provider_message_id)
        SELECT gone.id, gone.sender, gone.carrier, gone.channel, gone.recipient, gone.cost,
               gone.enqueued_at, gone.released_at, pg_catalog.clock_timestamp(), gone.attempt, gone.pid
          FROM gone
        RETURNING sent.id)
    SELECT recorded.id FROM recorded;
END
$$;

-- ack() many at once (one statement for a batch): the same outcome for every id, or one per
-- id (outcomes, provider_message_ids and error_codes as long as ids, or NULL). Those sent are
-- recorded in one statement; the rest as ack() would, one by one.
CREATE FUNCTION throttle.ack_many(
    ids bigint[], outcomes text[], provider_message_ids text[] DEFAULT NULL, error_codes text[] DEFAULT NULL
) RETURNS TABLE (id bigint, result text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    i    integer;
    one  boolean;
    sent bigint[];
BEGIN
    IF ids IS NULL OR outcomes IS NULL
       OR cardinality(outcomes) NOT IN (1, cardinality(ids))
       OR cardinality(coalesce(provider_message_ids, ids::text[])) <> cardinality(ids)
       OR cardinality(coalesce(error_codes, ids::text[])) <> cardinality(ids) THEN
        RAISE EXCEPTION 'ack_many: ids and outcomes must be given, and every array as long as ids (outcomes may have one entry for all)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'for example throttle.ack_many(ARRAY[1,2,3], ARRAY[''sent''], ARRAY[''m1'',''m2'',''m3''])';
    END IF;
    one := cardinality(outcomes) = 1;
    sent := ARRAY(SELECT throttle.ack_sent_for(
                      ARRAY(SELECT ids[k] FROM generate_subscripts(ids, 1) k
                             WHERE outcomes[CASE WHEN one THEN 1 ELSE k END] = 'sent'),
                      ARRAY(SELECT provider_message_ids[k] FROM generate_subscripts(ids, 1) k
                             WHERE outcomes[CASE WHEN one THEN 1 ELSE k END] = 'sent'),
                      throttle.consumer_ticket()));
    FOR i IN 1 .. cardinality(ids) LOOP
        id := ids[i];
        IF ids[i] = ANY (sent) THEN
            result := 'sent';
        ELSE
            result := throttle.ack_for(ids[i], outcomes[CASE WHEN one THEN 1 ELSE i END],
                                       provider_message_ids[i], error_codes[i], NULL, NULL,
                                       throttle.consumer_ticket());
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Keep a message in flight for `visibility` more from now (a slow provider call).
CREATE FUNCTION throttle.extend_for(id bigint, visibility interval, ticket bigint) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    caller  oid := throttle.ticket_role(ticket);
    v_until timestamptz;
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.extend(id, visibility)'
              USING ERRCODE = '42501';
    END IF;
    IF visibility IS NULL OR visibility <= interval '0' OR visibility > interval '12 hours' THEN
        RAISE EXCEPTION 'extend: visibility must be more than 0 and at most 12 hours, got %',
                        coalesce(visibility::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE throttle.inflight i SET visible_at = pg_catalog.clock_timestamp() + visibility
     WHERE i.id = extend_for.id AND i.last_error IS NULL AND throttle.acts_for(caller, i.sender)
    RETURNING i.visible_at INTO v_until;
    IF v_until IS NULL THEN
        RAISE EXCEPTION 'extend: no message % in flight for this role', extend_for.id
            USING ERRCODE = 'no_data_found',
                  HINT = 'a message goes back to its queue at its visibility timeout; extend it before';
    END IF;
    PERFORM throttle.note_inflight_due(v_until);
    RETURN v_until;
END
$$;

CREATE FUNCTION throttle.extend(id bigint, visibility interval DEFAULT '30 seconds') RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN throttle.extend_for(id, visibility, throttle.consumer_ticket());
END
$$;

-- Monitoring: per sender, what is in flight, waiting for a retry, sent and dead lately.
CREATE VIEW throttle.delivery_state WITH (security_invoker = true) AS
SELECT coalesce(f.sender, s.sender) AS sender,
       coalesce(f.in_flight, 0) AS in_flight,
       coalesce(f.retrying, 0) AS retrying,
       f.oldest_read_at,
       coalesce(s.sent_last_hour, 0) AS sent_last_hour,
       s.last_sent_at
  FROM (SELECT i.sender, count(*) FILTER (WHERE i.last_error IS NULL) AS in_flight,
               count(*) FILTER (WHERE i.last_error IS NOT NULL) AS retrying,
               min(i.read_at) AS oldest_read_at
          FROM throttle.inflight i GROUP BY i.sender) f
  FULL JOIN (SELECT t.sender, count(*) AS sent_last_hour, max(t.sent_at) AS last_sent_at
               FROM throttle.sent t WHERE t.sent_at > now() - interval '1 hour'
              GROUP BY t.sender) s ON s.sender = f.sender;

ALTER TABLE throttle.inflight ENABLE ROW LEVEL SECURITY;
ALTER TABLE throttle.sent ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_senders ON throttle.inflight
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = inflight.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));
CREATE POLICY own_senders ON throttle.sent
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = sent.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));

SELECT pg_catalog.pg_extension_config_dump('throttle.inflight', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.attempt', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.sent', '');

-- ignore: a row of yours that turns a shipped rule off (for its code, carrier and channel).
CREATE TYPE throttle.feedback_action AS ENUM ('slow_down', 'hold_until_reset', 'ignore');

CREATE TABLE throttle.feedback_rule (
    rule_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text UNIQUE CHECK (name <> ''),
    error_code text NOT NULL CHECK (error_code <> ''),
    -- The messages whose errors it reads (NULL: any carrier, any channel).
    carrier    text CHECK (carrier <> ''),
    channel    text CHECK (channel ~ '^[a-z0-9_]+$'),
    -- Which of the message's limits: its sender's, its campaign's, brand's or account's.
    scope      throttle.scope NOT NULL DEFAULT 'sender',
    action     throttle.feedback_action NOT NULL DEFAULT 'slow_down',
    -- slow_down: the rate is multiplied by `factor` (again on each error after a cool-down,
    -- never below `min_factor` of the configured rate), stays there for `cool_down` after
    -- the last error, then comes back to the configured rate in steps over `recovery`.
    factor     float8 NOT NULL DEFAULT 0.5,
    min_factor float8 NOT NULL DEFAULT 0.1,
    cool_down  interval NOT NULL DEFAULT '1 minute',
    recovery   interval NOT NULL DEFAULT '10 minutes',
    -- hold_until_reset: the provider's day resets at reset_at in time_zone.
    reset_at   time NOT NULL DEFAULT '00:00',
    time_zone  text NOT NULL DEFAULT 'America/Los_Angeles',
    profile    text,  -- the profile whose provider answers with this code (for shipped rows)
    note       text,
    -- Shipped with the extension (pg_dump leaves these out: CREATE EXTENSION makes them).
    shipped    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_rule_code_idx ON throttle.feedback_rule (error_code);

-- Friendly errors (22023 with a hint) for bad rows.
CREATE FUNCTION throttle.check_feedback_rule() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.factor IS NULL OR NOT (NEW.factor > 0 AND NEW.factor < 1) THEN
        RAISE EXCEPTION 'factor must be more than 0 and less than 1, got %', coalesce(NEW.factor::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the share of the rate left after one error: 0.5 halves it';
    END IF;
    IF NEW.min_factor IS NULL OR NOT (NEW.min_factor > 0 AND NEW.min_factor <= 1) THEN
        RAISE EXCEPTION 'min_factor must be more than 0 and at most 1, got %', coalesce(NEW.min_factor::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the least share of the configured rate errors can bring a limit to, for example 0.1';
    END IF;
    IF NEW.cool_down IS NULL OR NEW.cool_down < interval '1 second' OR NEW.cool_down > interval '1 day' THEN
        RAISE EXCEPTION 'cool_down must be between 1 second and 1 day, got %', coalesce(NEW.cool_down::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.recovery IS NULL OR NEW.recovery < interval '0' OR NEW.recovery > interval '7 days' THEN
        RAISE EXCEPTION 'recovery must be between 0 and 7 days, got %', coalesce(NEW.recovery::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.time_zone IS NULL OR NOT throttle.is_time_zone(NEW.time_zone) THEN
        RAISE EXCEPTION 'time_zone % is not a known time zone', quote_literal(NEW.time_zone)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'an IANA name such as America/Los_Angeles (SELECT name FROM pg_timezone_names)';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER feedback_rule_check BEFORE INSERT OR UPDATE ON throttle.feedback_rule
    FOR EACH ROW EXECUTE FUNCTION throttle.check_feedback_rule();

-- Limits slowed by provider errors, and how they come back.
CREATE TABLE throttle.limit_feedback (
    limit_id         bigint PRIMARY KEY REFERENCES throttle.rate_limit ON DELETE CASCADE,
    configured_rate  bigint NOT NULL,
    configured_burst bigint,
    applied_rate     bigint NOT NULL,  -- the rate set here (a change by anyone else ends the slow-down)
    factor           float8 NOT NULL,  -- of the configured rate, now
    low_factor       float8 NOT NULL,  -- the lowest, where recovery starts from
    rule_id          bigint REFERENCES throttle.feedback_rule ON DELETE SET NULL,
    error_code       text NOT NULL,
    sender           text,             -- whose message brought the last error
    errors           integer NOT NULL DEFAULT 1,
    slowed_at        timestamptz NOT NULL,
    recover_from     timestamptz NOT NULL,
    recovered_by     timestamptz NOT NULL,
    next_step_at     timestamptz NOT NULL
);
CREATE INDEX limit_feedback_next_idx ON throttle.limit_feedback (next_step_at);

-- Scopes held until their reset by a "done for the day" error: each is a calendar cap of 1
-- already used (at_cap defer), deleted by the worker at the reset.
CREATE TABLE throttle.feedback_hold (
    cap_id     bigint PRIMARY KEY REFERENCES throttle.cap ON DELETE CASCADE,
    rule_id    bigint REFERENCES throttle.feedback_rule ON DELETE SET NULL,
    scope      throttle.scope NOT NULL,
    scope_id   text NOT NULL,
    carrier    text,
    channel    text,
    error_code text NOT NULL,
    sender     text,
    held_at    timestamptz NOT NULL,
    until      timestamptz NOT NULL
);
CREATE INDEX feedback_hold_until_idx ON throttle.feedback_hold (until);
CREATE INDEX feedback_hold_scope_idx ON throttle.feedback_hold (scope, scope_id);

-- Internal (from ack_for, as the owner): what the feedback rules do about `code` on a
-- message of (sender, carrier, channel). Returns what it did (NULL: no rule has the code).
-- It never waits for a lock: a limit another session is changing right now is left alone.
CREATE FUNCTION throttle.feedback_for(sender text, carrier text, channel text, code text)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_sender  text := feedback_for.sender;
    v_carrier text := feedback_for.carrier;
    v_channel text := feedback_for.channel;
    rule      throttle.feedback_rule;
    s         throttle.sender;
    v_scope_id text;
    l         record;
    fb        throttle.limit_feedback;
    v_factor  float8;
    v_rate    bigint;
    v_conf    bigint;
    v_burst   bigint;
    v_now     timestamptz := pg_catalog.clock_timestamp();
    v_win     record;
    v_cap     bigint;
    done      text[] := '{}';
BEGIN
    IF code IS NULL THEN
        RETURN NULL;
    END IF;
    -- The most specific rule for the code; of those, yours before the shipped ones, the
    -- newest first.
    SELECT * INTO rule FROM throttle.feedback_rule r
     WHERE r.error_code = code
       AND (r.carrier IS NULL OR r.carrier = v_carrier)
       AND (r.channel IS NULL OR r.channel = v_channel)
     ORDER BY r.carrier IS NULL, r.channel IS NULL, r.shipped, r.rule_id DESC LIMIT 1;
    IF NOT FOUND OR rule.action = 'ignore' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO s FROM throttle.sender x WHERE x.sender = v_sender;
    v_scope_id := CASE rule.scope WHEN 'sender' THEN v_sender WHEN 'campaign' THEN s.campaign
                                  WHEN 'brand' THEN s.brand ELSE s.account END;
    IF v_scope_id IS NULL THEN
        RETURN format('error %s: sender %s has no %s', code, v_sender, rule.scope);
    END IF;
    IF rule.action = 'hold_until_reset' THEN
        IF EXISTS (SELECT 1 FROM throttle.feedback_hold h
                    WHERE h.scope = rule.scope AND h.scope_id = v_scope_id
                      AND h.carrier IS NOT DISTINCT FROM rule.carrier
                      AND h.channel IS NOT DISTINCT FROM rule.channel AND h.until > v_now) THEN
            RETURN format('error %s: %s %s is held already', code, rule.scope, v_scope_id);
        END IF;
        SELECT * INTO v_win FROM throttle.cap_window('day', rule.reset_at, rule.time_zone, v_now);
        INSERT INTO throttle.cap (name, scope, scope_id, carrier, channel, cap, period, reset_at,
                                  time_zone, at_cap, error_code, note)
        VALUES (format('feedback/%s/%s:%s/%s/%s', code, rule.scope, v_scope_id,
                       coalesce(rule.carrier, rule.channel, 'all'), v_win.window_start),
                rule.scope, v_scope_id, rule.carrier, rule.channel, 1, 'day', rule.reset_at,
                rule.time_zone, 'defer', code,
                format('held by provider error %s (a message of %s) until the reset', code, v_sender))
        ON CONFLICT (name) DO NOTHING
        RETURNING cap_id INTO v_cap;
        IF v_cap IS NULL THEN
            RETURN format('error %s: %s %s is held already', code, rule.scope, v_scope_id);
        END IF;
        INSERT INTO throttle.cap_usage (cap_id, window_start, window_end, used)
        VALUES (v_cap, v_win.window_start, v_win.window_end, 1);
        INSERT INTO throttle.feedback_hold (cap_id, rule_id, scope, scope_id, carrier, channel,
                                            error_code, sender, held_at, until)
        VALUES (v_cap, rule.rule_id, rule.scope, v_scope_id, rule.carrier, rule.channel, code,
                v_sender, v_now, v_win.window_end);
        PERFORM pg_catalog.pg_notify('throttle_feedback', json_build_object(
            'event', 'held', 'error_code', code, 'scope', rule.scope, 'scope_id', v_scope_id,
            'carrier', rule.carrier, 'channel', rule.channel, 'sender', v_sender,
            'until', v_win.window_end)::text);
        RETURN format('error %s: held %s %s until %s', code, rule.scope, v_scope_id, v_win.window_end);
    END IF;
    -- slow_down: every rate limit of that scope the message came through.
    FOR l IN
        SELECT t.* FROM throttle.rate_limit t
         WHERE t.scope = rule.scope AND t.scope_id = v_scope_id
           AND (t.carrier IS NULL OR t.carrier = v_carrier)
           AND (t.channel IS NULL OR t.channel = v_channel)
           AND (t.sender_type IS NULL OR t.sender_type = s.sender_type)
         ORDER BY t.limit_id
           FOR UPDATE OF t SKIP LOCKED
    LOOP
        SELECT * INTO fb FROM throttle.limit_feedback f WHERE f.limit_id = l.limit_id FOR UPDATE;
        IF FOUND AND l.rate <> fb.applied_rate THEN
            -- Someone changed the limit since: that is its configured rate now.
            DELETE FROM throttle.limit_feedback f WHERE f.limit_id = l.limit_id;
            fb := NULL;
        END IF;
        IF fb.limit_id IS NOT NULL AND fb.slowed_at > v_now - rule.cool_down THEN
            -- Slowed less than a cool-down ago: the error is what that rate still let through.
            UPDATE throttle.limit_feedback f SET errors = f.errors + 1 WHERE f.limit_id = l.limit_id;
            done := done || format('%s kept at %s', coalesce(l.name, 'limit ' || l.limit_id), l.rate);
            CONTINUE;
        END IF;
        v_conf := coalesce(fb.configured_rate, l.rate);
        v_burst := CASE WHEN fb.limit_id IS NOT NULL THEN fb.configured_burst ELSE l.burst END;
        v_factor := greatest(rule.min_factor, coalesce(fb.factor, 1) * rule.factor);
        v_rate := greatest(1, floor(v_conf * v_factor))::bigint;
        UPDATE throttle.rate_limit t
           SET rate = v_rate,
               burst = CASE WHEN v_burst IS NULL THEN NULL ELSE greatest(1, floor(v_burst * v_factor))::bigint END
         WHERE t.limit_id = l.limit_id;
        INSERT INTO throttle.limit_feedback AS f
               (limit_id, configured_rate, configured_burst, applied_rate, factor, low_factor, rule_id,
                error_code, sender, errors, slowed_at, recover_from, recovered_by, next_step_at)
        VALUES (l.limit_id, v_conf, v_burst, v_rate, v_factor, v_factor, rule.rule_id, code, v_sender, 1,
                v_now, v_now + rule.cool_down, v_now + rule.cool_down + rule.recovery, v_now + rule.cool_down)
        ON CONFLICT (limit_id) DO UPDATE
           SET applied_rate = excluded.applied_rate, factor = excluded.factor, low_factor = excluded.low_factor,
               rule_id = excluded.rule_id, error_code = excluded.error_code, sender = excluded.sender,
               errors = f.errors + 1, slowed_at = excluded.slowed_at, recover_from = excluded.recover_from,
               recovered_by = excluded.recovered_by, next_step_at = excluded.next_step_at;
        PERFORM pg_catalog.pg_notify('throttle_feedback', json_build_object(
            'event', 'slowed', 'error_code', code, 'limit_id', l.limit_id, 'name', l.name,
            'rate', v_rate, 'configured_rate', v_conf, 'per', l.per, 'sender', v_sender,
            'recover_from', v_now + rule.cool_down)::text);
        done := done || format('%s slowed to %s (configured %s)', coalesce(l.name, 'limit ' || l.limit_id), v_rate, v_conf);
    END LOOP;
    RETURN format('error %s: %s', code,
                  CASE WHEN cardinality(done) = 0 THEN format('no rate limit of %s %s to slow', rule.scope, v_scope_id)
                       ELSE array_to_string(done, '; ') END);
END
$$;

-- Internal (the release worker, when due): bring slowed limits back towards their configured
-- rate, in five steps over their recovery, and end holds whose reset came. Skips whatever
-- another session holds locked (tried again later). Returns when it is next due.
CREATE FUNCTION throttle.feedback_step() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r        record;
    v_now    timestamptz := pg_catalog.clock_timestamp();
    v_frac   float8;
    v_factor float8;
    v_rate   bigint;
    v_span   interval;
BEGIN
    FOR r IN
        SELECT h.cap_id, h.scope, h.scope_id, h.error_code FROM throttle.feedback_hold h
          JOIN throttle.cap c ON c.cap_id = h.cap_id
         WHERE h.until <= v_now
           FOR UPDATE OF h, c SKIP LOCKED
    LOOP
        DELETE FROM throttle.cap c WHERE c.cap_id = r.cap_id;
        PERFORM pg_catalog.pg_notify('throttle_feedback', json_build_object(
            'event', 'hold_ended', 'error_code', r.error_code, 'scope', r.scope, 'scope_id', r.scope_id)::text);
    END LOOP;
    FOR r IN
        SELECT f.*, t.rate, t.name FROM throttle.limit_feedback f
          JOIN throttle.rate_limit t ON t.limit_id = f.limit_id
         WHERE f.next_step_at <= v_now
           FOR UPDATE OF f, t SKIP LOCKED
    LOOP
        IF r.rate <> r.applied_rate THEN
            DELETE FROM throttle.limit_feedback f WHERE f.limit_id = r.limit_id;
            CONTINUE;  -- changed by someone else since: theirs is the configured rate now
        END IF;
        v_span := r.recovered_by - r.recover_from;
        v_frac := CASE WHEN v_span <= interval '0' THEN 1
                       ELSE least(1, greatest(0, extract(epoch FROM v_now - r.recover_from)
                                                 / extract(epoch FROM v_span))) END;
        -- Five equal steps: the one this time falls in.
        v_frac := floor(v_frac * 5 + 1e-9) / 5;
        IF v_frac >= 1 THEN
            UPDATE throttle.rate_limit t SET rate = r.configured_rate, burst = r.configured_burst
             WHERE t.limit_id = r.limit_id;
            DELETE FROM throttle.limit_feedback f WHERE f.limit_id = r.limit_id;
            PERFORM pg_catalog.pg_notify('throttle_feedback', json_build_object(
                'event', 'recovered', 'limit_id', r.limit_id, 'name', r.name,
                'rate', r.configured_rate)::text);
            CONTINUE;
        END IF;
        v_factor := r.low_factor + (1 - r.low_factor) * v_frac;
        v_rate := greatest(1, floor(r.configured_rate * v_factor))::bigint;
        IF v_rate <> r.rate THEN
            UPDATE throttle.rate_limit t
               SET rate = v_rate,
                   burst = CASE WHEN r.configured_burst IS NULL THEN NULL
                                ELSE greatest(1, floor(r.configured_burst * v_factor))::bigint END
             WHERE t.limit_id = r.limit_id;
        END IF;
        UPDATE throttle.limit_feedback f
           SET applied_rate = v_rate, factor = v_factor,
               next_step_at = r.recover_from + v_span * (v_frac + 0.2)
         WHERE f.limit_id = r.limit_id;
    END LOOP;
    RETURN least((SELECT min(f.next_step_at) FROM throttle.limit_feedback f),
                 (SELECT min(h.until) FROM throttle.feedback_hold h));
END
$$;

-- What providers' errors mean, for the shipped profiles' providers (edit, delete or add).
INSERT INTO throttle.feedback_rule (name, error_code, carrier, channel, scope, action, profile, note, shipped) VALUES
    ('http_429', '429', NULL, NULL, 'sender', 'slow_down', 'sendblue_line',
     'HTTP 429 Too Many Requests (Sendblue per line, Twilio): the sender''s limit', true),
    ('att_541', '541', 'att', NULL, 'campaign', 'slow_down', 'att_10dlc',
     'AT&T 541: the campaign''s class throughput exceeded (seed 001)', true),
    ('twilio_30001', '30001', NULL, NULL, 'sender', 'slow_down', 'twilio_account',
     'Twilio 30001: queue overflow (seed 003)', true),
    ('whatsapp_130429', '130429', NULL, 'whatsapp', 'sender', 'slow_down', 'whatsapp',
     'WhatsApp 130429: the number''s throughput reached', true);
INSERT INTO throttle.feedback_rule (name, error_code, carrier, scope, action, reset_at, time_zone, profile, note, shipped) VALUES
    ('tmobile_542', '542', 'tmobile', 'brand', 'hold_until_reset', '00:00', 'America/Los_Angeles', 'tmobile_brand',
     'T-Mobile 542: the brand''s daily cap reached, done for the day (seed 001)', true);

SELECT pg_catalog.pg_extension_config_dump('throttle.feedback_rule', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('throttle.limit_feedback', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.feedback_hold', '');

-- Monitoring: limit_state shows the configured rate and why a limit is slowed.
CREATE OR REPLACE VIEW throttle.limit_state AS
SELECT l.limit_id, l.name, l.scope, l.scope_id, l.carrier, l.channel, l.sender_type,
       l.rate, l.per, l.burst,
       coalesce(b.available, l.burst, l.rate) AS available,
       coalesce(b.next_room_at, now()) AS next_room_at,
       b.full_at,
       b.limit_id IS NOT NULL AS in_memory,
       l.each_sender,
       coalesce(f.configured_rate, l.rate) AS configured_rate,
       CASE WHEN f.limit_id IS NOT NULL THEN
           pg_catalog.format('slowed to %s (%s %% of %s) by provider error %s (%s errors, the last at %s); back to %s in steps from %s to %s',
                             l.rate, round((100 * f.factor)::numeric), f.configured_rate, f.error_code,
                             f.errors, f.slowed_at, f.configured_rate, f.recover_from, f.recovered_by)
       END AS slowed
  FROM throttle.rate_limit l
  LEFT JOIN throttle.bucket_state() b
         ON b.limit_id = l.limit_id AND b.sub_key = 0
        AND b.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  LEFT JOIN throttle.limit_feedback f ON f.limit_id = l.limit_id;

-- Delivery (sql/delivery.sql): consumers see what is in flight and what was sent of their own
-- senders (row-level security), and change it only through read(), ack() and extend().
GRANT SELECT ON throttle.inflight, throttle.sent, throttle.delivery_state TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.note_inflight_due(timestamptz) FROM PUBLIC;
COMMENT ON TABLE throttle.inflight IS 'Messages read with throttle.read() and not yet acknowledged, or failed and waiting for their retry (visible_at: back to their queue then)';
COMMENT ON TABLE throttle.attempt IS 'Attempts of messages that went back to their queue after a failed or missing acknowledgement';
COMMENT ON TABLE throttle.sent IS 'What was sent: every message acknowledged as sent, with the provider''s message id (pruned after throttle.sent_retention)';
COMMENT ON VIEW throttle.delivery_state IS 'Per sender: messages in flight, waiting for a retry, and sent in the last hour';
COMMENT ON FUNCTION throttle.read(integer, interval) IS 'Read up to n released messages, yours for the visibility timeout: acknowledge each with ack(), or it goes back to its queue';
COMMENT ON FUNCTION throttle.ack(bigint, text, text, text, interval, integer) IS 'Acknowledge a message read with read(): sent, failed (retried after a back-off, dead after throttle.max_attempts) or rejected (dead); returns sent, retry, dead or stale';
COMMENT ON FUNCTION throttle.ack_many(bigint[], text[], text[], text[]) IS 'Acknowledge many messages in one statement (one outcome for all, or one per id)';
COMMENT ON FUNCTION throttle.extend(bigint, interval) IS 'Keep a message in flight for longer (from now)';
COMMENT ON FUNCTION throttle.read_for(integer, interval, bigint) IS 'Internal: read() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.ack_for(bigint, text, text, text, interval, integer, bigint) IS 'Internal: ack() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.extend_for(bigint, interval, bigint) IS 'Internal: extend() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.ack_sent_for(bigint[], text[], bigint) IS 'Internal: ack_many() of the messages sent, in one statement, as the owner for the role its ticket names';
COMMENT ON FUNCTION throttle.note_inflight_due(timestamptz) IS 'Internal: wakes the release worker for a message in flight that falls due sooner than it knew';

-- Provider feedback (sql/feedback.sql): rules are configuration (read by all), the state of
-- slowed limits and held scopes is monitoring (read by all); only ack() changes them.
GRANT SELECT ON throttle.feedback_rule, throttle.limit_feedback, throttle.feedback_hold TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.feedback_for(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.feedback_step() FROM PUBLIC;
COMMENT ON TABLE throttle.feedback_rule IS 'What a provider''s error code on a failed message does: slow the limit it came through (then recover), hold its scope until the reset, or nothing (ignore)';
COMMENT ON TABLE throttle.limit_feedback IS 'Rate limits slowed by provider errors: the configured rate, the rate now, why, and when it comes back';
COMMENT ON TABLE throttle.feedback_hold IS 'Scopes held until their reset by a "done for the day" provider error (each a calendar cap of 1 already used)';
COMMENT ON TYPE throttle.feedback_action IS 'What a feedback rule does: slow_down, hold_until_reset, or ignore (turn a shipped rule off)';
COMMENT ON FUNCTION throttle.feedback_for(text, text, text, text) IS 'Internal: what the feedback rules do about an error code on a failed message (from ack())';
COMMENT ON FUNCTION throttle.feedback_step() IS 'Internal: the release worker''s recovery steps of slowed limits and ends of holds';
COMMENT ON FUNCTION throttle.check_feedback_rule() IS 'Internal: validates throttle.feedback_rule rows (22023 with a hint)';

-- Configuration as code (src/config_doc.rs): anyone may export what they may read; only the
-- owner (or whom the owner grants it) imports.
REVOKE ALL ON FUNCTION throttle.import_config(jsonb, boolean) FROM PUBLIC;
COMMENT ON FUNCTION throttle.export_config() IS 'The whole configuration (senders, account roles, rate limits, caps with exemptions, queue caps, contact rules, pools with lines, your feedback rules) as one JSON document';
COMMENT ON FUNCTION throttle.import_config(jsonb, boolean) IS 'Make the configuration what a document of export_config() says, in one transaction (dry_run: only say what would change); rows that did not change are not touched';

-- Tables a fresh install made before its REVOKE ALL ... FROM PUBLIC: the same rights here.
REVOKE ALL ON throttle.attempt FROM PUBLIC;

-- The worker and every session read the configuration again (the worker learns that this
-- database has throttle.inflight and throttle.limit_feedback now).
SELECT throttle.note_config_change();
