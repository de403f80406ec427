-- pg_throttle 0.6.0 -> 0.7.0
--
-- Sticky pools pick a new recipient's line by its headroom: room under its new-contact caps,
-- then the shortest wait behind what it has queued at its own rate (0.6.0 counted only the
-- recipients each line took on in 24 hours). throttle.pool_headroom() shows the order.

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
CREATE OR REPLACE FUNCTION throttle.pending_assign_pool() RETURNS trigger
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

REVOKE ALL ON FUNCTION throttle.pool_headroom(text, text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION throttle.pool_headroom(text, text, text, text) IS 'The lines of a pool in the order a new recipient''s first message picks them: room under new-contact caps, wait behind what each has queued at its own rate, recipients taken on in 24 hours';

-- The worker and every session read the configuration again.
SELECT throttle.note_config_change();
