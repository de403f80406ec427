-- The release queue: applications INSERT into throttle.pending (in the same transaction as
-- their own writes); the background worker moves rows to throttle.ready exactly as fast as
-- the limits allow; sender processes consume throttle.ready. A row is in exactly one of
-- pending, ready and dead at every instant: every move is one DELETE ... INSERT statement.

CREATE TABLE throttle.pending (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender      text NOT NULL CHECK (sender <> ''),
    carrier     text NOT NULL CHECK (carrier <> ''),
    channel     text NOT NULL DEFAULT 'sms' CHECK (channel ~ '^[a-z0-9_]+$'),
    recipient   text,
    cost        integer NOT NULL DEFAULT 1 CHECK (cost BETWEEN 1 AND 1000000),
    priority    smallint NOT NULL DEFAULT 0,
    payload     jsonb,
    not_before  timestamptz,
    expires_at  timestamptz,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    held_by     bigint,     -- the calendar cap (defer_local) that set not_before: it lets go when raised
    -- Every time is a real one (the pending_check trigger says so first, with 22023; this
    -- holds for rows written without triggers too).
    CONSTRAINT pending_times_finite CHECK (isfinite(enqueued_at) AND isfinite(coalesce(not_before, enqueued_at))
                                           AND isfinite(coalesce(expires_at, enqueued_at)))
);
-- Messages a cap holds until a local time, found again when the configuration changes.
CREATE INDEX pending_held_idx ON throttle.pending (held_by) WHERE held_by IS NOT NULL;
-- One queue per (sender, carrier, channel), in release order: the worker reads the head of
-- each queue it releases from and nothing else, from this index alone where it can.
CREATE INDEX pending_queue_idx ON throttle.pending (sender, carrier, channel, priority DESC, id)
    INCLUDE (cost, not_before, expires_at);
CREATE INDEX pending_expiry_idx ON throttle.pending (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE throttle.ready (
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
    released_at timestamptz NOT NULL   -- the time the release was judged at
);

-- Messages that will never be released, with why: never silently dropped.
CREATE TABLE throttle.dead (
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
    died_at     timestamptz NOT NULL,
    reason      text NOT NULL,
    error_code  text
);

-- Enqueue one message; returns its id. Same as an INSERT into throttle.pending.
CREATE FUNCTION throttle.enqueue(
    sender text, carrier text, recipient text DEFAULT NULL, payload jsonb DEFAULT NULL,
    channel text DEFAULT 'sms', cost integer DEFAULT 1, priority smallint DEFAULT 0,
    not_before timestamptz DEFAULT NULL, expires_at timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO throttle.pending (sender, carrier, channel, recipient, cost, priority, payload, not_before, expires_at)
    VALUES (sender, carrier, channel, recipient, cost, priority, payload, not_before, expires_at)
    RETURNING id
$$;

-- Messages are data: pg_dump keeps them.
SELECT pg_catalog.pg_extension_config_dump('throttle.pending', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.pending_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.ready', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.dead', '');
