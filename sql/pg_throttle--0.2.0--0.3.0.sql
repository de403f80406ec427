-- pg_throttle 0.2.0 -> 0.3.0: hardening. One tenant cannot stop the others: ids and times
-- of new messages are checked (and ids given) at enqueue, PUBLIC no longer holds DELETE on
-- throttle.ready (it let any role LOCK it), take() consumes for the calling role, an
-- optional tenant model (throttle.account_role, row-level security), a queue cap sized by
-- validity needs a rate limit, and worker_state() reports liveness and lateness.

-- 1. Messages: every time a real one. Rows 0.2.0 accepted with an infinite time can never be
--    released: they go to throttle.dead, with why.
WITH gone AS (
    DELETE FROM throttle.pending
     WHERE NOT (isfinite(enqueued_at) AND isfinite(coalesce(not_before, enqueued_at))
                AND isfinite(coalesce(expires_at, enqueued_at)))
    RETURNING *)
INSERT INTO throttle.dead (id, sender, carrier, channel, recipient, cost, priority, payload,
                           not_before, expires_at, enqueued_at, died_at, reason, error_code)
SELECT id, sender, carrier, channel, recipient, cost, priority, payload,
       not_before, expires_at, enqueued_at, now(), 'a time out of range (found by the 0.3.0 update)', NULL
  FROM gone;
ALTER TABLE throttle.pending ADD CONSTRAINT pending_times_finite
    CHECK (isfinite(enqueued_at) AND isfinite(coalesce(not_before, enqueued_at))
           AND isfinite(coalesce(expires_at, enqueued_at)));

-- Every new message is checked (22023 for a bad sender, carrier, channel or time) and gets
-- its id from the sequence, whatever the INSERT said (only a superuser's restore keeps ids).
CREATE FUNCTION throttle.pending_check() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_pending_check';
CREATE TRIGGER pending_check BEFORE INSERT ON throttle.pending
    FOR EACH ROW EXECUTE FUNCTION throttle.pending_check();


-- 2. Queue caps sized by validity need a rate limit to be sized by.
-- A queue cap sized by validity needs a rate limit of its scope to be sized by.
CREATE FUNCTION throttle.check_queue_cap_size() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.max_waiting IS NULL AND NEW.validity IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM throttle.rate_limit r WHERE r.scope = NEW.scope AND r.scope_id = NEW.scope_id) THEN
        RAISE EXCEPTION 'queue cap on % % is sized by validity, but that % has no rate limit', NEW.scope, NEW.scope_id, NEW.scope
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'set max_waiting, or add a rate limit of that scope to throttle.rate_limit first';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER queue_cap_size_check BEFORE INSERT OR UPDATE ON throttle.queue_cap
    FOR EACH ROW EXECUTE FUNCTION throttle.check_queue_cap_size();


-- 3. Tenants.
CREATE TABLE throttle.account_role (
    account text NOT NULL CHECK (account <> ''),
    role    name NOT NULL,
    PRIMARY KEY (account, role)
);
CREATE INDEX account_role_role_idx ON throttle.account_role (role);

-- Whether `role` acts for `sender` (for callers outside the policies; the policies below
-- spell the same test out, so that the planner evaluates "no tenant model" once per
-- statement rather than calling a function per row). Every name is qualified.
CREATE FUNCTION throttle.acts_for(role oid, sender text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (SELECT 1 FROM throttle.account_role)
        OR EXISTS (SELECT 1
                     FROM throttle.sender s
                     JOIN throttle.account_role a ON a.account = s.account
                     JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                    WHERE s.sender = $2
                      AND pg_catalog.pg_has_role($1, r.oid, 'MEMBER'))
$$;

ALTER TABLE throttle.pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE throttle.ready ENABLE ROW LEVEL SECURITY;
ALTER TABLE throttle.dead ENABLE ROW LEVEL SECURITY;
-- The current role acts for the row's sender (or no tenant model is configured).
CREATE POLICY own_senders ON throttle.pending
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = pending.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')))
    WITH CHECK (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = pending.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));
CREATE POLICY own_senders ON throttle.ready
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = ready.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));
CREATE POLICY own_senders ON throttle.dead
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = dead.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));

SELECT pg_catalog.pg_extension_config_dump('throttle.account_role', '');

CREATE TRIGGER account_role_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.account_role
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();
ALTER VIEW throttle.queue_state SET (security_invoker = true);
ALTER VIEW throttle.group_queue_state SET (security_invoker = true);

-- 4. Consuming: take() for the calling role (as the owner: PUBLIC holds no DELETE).
DROP FUNCTION throttle.take(integer);
CREATE  FUNCTION "consumer_ticket"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'consumer_ticket_wrapper';

CREATE  FUNCTION "ticket_role"(
	"ticket" bigint /* i64 */
) RETURNS oid /* Option < pg_sys :: Oid > */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'ticket_role_wrapper';
-- Take up to n released messages (oldest first) of the senders the calling role acts for,
-- removing them from throttle.ready. Rows other sessions hold are skipped; a rollback puts
-- the taken rows back. Runs as the owner for the role named by the ticket.
CREATE FUNCTION throttle.take_for(n integer, ticket bigint) RETURNS SETOF throttle.ready
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller oid := throttle.ticket_role(ticket);
BEGIN
    IF caller IS NULL THEN
        RAISE EXCEPTION 'not a ticket of this session: call throttle.take(n)'
              USING ERRCODE = '42501';
    END IF;
    RETURN QUERY
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
    RETURNING *;
END
$$;

CREATE FUNCTION throttle.take(n integer DEFAULT 100) RETURNS SETOF throttle.ready
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM throttle.take_for(n, throttle.consumer_ticket())
$$;
REVOKE ALL ON FUNCTION throttle.ticket_role(bigint) FROM PUBLIC;

-- 5. The worker's liveness and lateness.
DROP FUNCTION throttle.worker_state();
CREATE  FUNCTION "worker_state"() RETURNS TABLE (
	"pid" INT,  /* Option < i32 > */
	"last_tick_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"seconds_since_tick" double precision,  /* Option < f64 > */
	"healthy" bool,  /* bool */
	"ticks" bigint,  /* i64 */
	"failed_ticks" bigint,  /* i64 */
	"released" bigint,  /* i64 */
	"dead" bigint,  /* i64 */
	"queues" bigint,  /* i64 */
	"parked_queues" bigint,  /* i64 */
	"late_ms" double precision,  /* f64 */
	"unseen_enqueues" bigint,  /* i64 */
	"released_per_s" double precision  /* f64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_state_wrapper';

-- 6. Grants and comments.
REVOKE DELETE ON throttle.ready FROM PUBLIC;
GRANT SELECT ON throttle.account_role TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_check() FROM PUBLIC;
COMMENT ON TABLE throttle.ready IS 'Messages released by the worker, to be sent: consume with throttle.take(); LISTEN throttle_ready';
COMMENT ON FUNCTION throttle.take(integer) IS 'Take up to n released messages of the senders the calling role acts for, oldest first';
COMMENT ON FUNCTION throttle.take_for(integer, bigint) IS 'Internal: take() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.consumer_ticket() IS 'Internal: a one-time ticket naming the calling role, for take()';
COMMENT ON FUNCTION throttle.ticket_role(bigint) IS 'Internal: the role a consumer ticket names, once';
COMMENT ON TABLE throttle.account_role IS 'Tenants: the roles that act for each account''s senders (no rows: every role acts for every sender)';
COMMENT ON FUNCTION throttle.acts_for(oid, text) IS 'Whether a role acts for a sender under throttle.account_role';
COMMENT ON FUNCTION throttle.pending_check() IS 'Internal: validates a new message (22023) and gives it its id';
COMMENT ON FUNCTION throttle.check_queue_cap_size() IS 'Internal: a queue cap sized by validity needs a rate limit of its scope (22023)';
COMMENT ON FUNCTION throttle.worker_state() IS 'The release worker: liveness (healthy, seconds since its last tick), released, lateness';
