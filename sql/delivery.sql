-- At-least-once delivery: a consumer read()s released messages with a visibility timeout,
-- calls its provider, and ack()s each with the outcome. A message not acknowledged in time
-- goes back to its queue (the release worker moves it, through the limits again: a second
-- send counts like the first); a failed one goes back after a back-off; after
-- throttle.max_attempts, or when the provider rejects it for good, it goes to throttle.dead
-- with the last error. What was sent is kept in throttle.sent for throttle.sent_retention.
-- take() stays, for at-most-once consumers.
--
-- A message is in exactly one of pending, ready, inflight, sent and dead at every instant.

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
