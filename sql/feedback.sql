-- Provider feedback: an ack() of a failed message whose error code means "slow down" (429,
-- AT&T 541, Twilio 30001, WhatsApp 130429, ...) slows the rate limit the message came
-- through for a cool-down, then the release worker brings it back towards its configured
-- rate; a code that means "done for the day" (T-Mobile 542) holds that scope until its reset.
-- Which code does what is data: throttle.feedback_rule (rows shipped for the profiles'
-- providers; edit or add your own).
--
-- A slowed limit is its throttle.rate_limit row with a lower rate (and burst): the buckets
-- rebase to it without minting tokens, so nothing ever goes faster than the configured rate,
-- and every backend and the worker follow it like any change to the limits.

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
