-- Calendar caps (N per hour, day or month, resetting at a wall-clock time in an IANA zone)
-- and queue caps (how many messages may wait for a scope). Usage is kept in tables: a restart
-- or a failover never forgets it.

CREATE TYPE throttle.cap_period AS ENUM ('hour', 'day', 'month');
-- What the release worker does with a message over a cap: hold it until the cap resets, hold
-- it until a local wall-clock time in the recipient's zone after the reset, or dead-letter it.
CREATE TYPE throttle.cap_action AS ENUM ('defer', 'defer_local', 'refuse');

CREATE TABLE throttle.cap (
    cap_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text UNIQUE CHECK (name <> ''),
    scope       throttle.scope NOT NULL,
    scope_id    text NOT NULL CHECK (scope_id <> ''),
    carrier     text CHECK (carrier <> ''),
    channel     text CHECK (channel ~ '^[a-z0-9_]+$'),
    sender_type text CHECK (sender_type ~ '^[a-z0-9_]+$'),
    cap         bigint NOT NULL CHECK (cap BETWEEN 1 AND 1000000000000),
    period      throttle.cap_period NOT NULL DEFAULT 'day',
    reset_at    time NOT NULL DEFAULT '00:00',
    time_zone   text NOT NULL DEFAULT 'UTC',
    overage_pct integer NOT NULL DEFAULT 0 CHECK (overage_pct BETWEEN 0 AND 1000),
    warn_at     integer[] NOT NULL DEFAULT '{75,90,100}',
    at_cap      throttle.cap_action NOT NULL DEFAULT 'defer',
    local_time  time NOT NULL DEFAULT '08:00',
    error_code  text,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cap_scope_idx ON throttle.cap (scope, scope_id);

-- Campaigns a cap does not apply to (T-Mobile does not cap political campaigns).
CREATE TABLE throttle.cap_exemption (
    cap_id   bigint NOT NULL REFERENCES throttle.cap ON DELETE CASCADE,
    campaign text NOT NULL CHECK (campaign <> ''),
    PRIMARY KEY (cap_id, campaign)
);

-- Usage per cap per window: `used` is counted in the transaction that releases the messages,
-- `leased` when capacity is handed to shared memory for throttle_admit(). Both count.
CREATE TABLE throttle.cap_usage (
    cap_id       bigint NOT NULL REFERENCES throttle.cap ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    used         bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    leased       bigint NOT NULL DEFAULT 0 CHECK (leased >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cap_id, window_start)
);

-- Queue caps: at most max_waiting messages pending for a scope, or (max_waiting NULL) as
-- many as its slowest rate limit of the same scope releases within `validity`.
CREATE TABLE throttle.queue_cap (
    queue_cap_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text UNIQUE CHECK (name <> ''),
    scope        throttle.scope NOT NULL,
    scope_id     text NOT NULL CHECK (scope_id <> ''),
    carrier      text CHECK (carrier <> ''),
    channel      text CHECK (channel ~ '^[a-z0-9_]+$'),
    max_waiting  bigint CHECK (max_waiting BETWEEN 1 AND 1000000000000),
    validity     interval CHECK (validity > interval '0' AND validity <= interval '31 days'),
    error_code   text,
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queue_cap_size CHECK (max_waiting IS NOT NULL OR validity IS NOT NULL)
);

CREATE FUNCTION throttle.check_cap() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.cap IS NULL OR NEW.cap < 1 OR NEW.cap > 1000000000000 THEN
        RAISE EXCEPTION 'cap must be between 1 and 1000000000000, got %', coalesce(NEW.cap::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'cap counts messages (or segments) per period: 2000 per ''day''';
    END IF;
    IF NEW.time_zone IS NULL OR NOT throttle.is_time_zone(NEW.time_zone) THEN
        RAISE EXCEPTION 'unknown time zone %', coalesce(quote_literal(NEW.time_zone), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use an IANA zone name such as ''America/Los_Angeles'' or ''UTC''';
    END IF;
    IF NEW.overage_pct IS NULL OR NEW.overage_pct < 0 OR NEW.overage_pct > 1000 THEN
        RAISE EXCEPTION 'overage_pct must be between 0 and 1000, got %', coalesce(NEW.overage_pct::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '20 lets usage reach 120 % of the cap';
    END IF;
    IF NEW.warn_at IS NULL OR array_position(NEW.warn_at, NULL) IS NOT NULL
       OR EXISTS (SELECT 1 FROM unnest(NEW.warn_at) p WHERE p < 1 OR p > 1100) THEN
        RAISE EXCEPTION 'warn_at must be percentages between 1 and 1100, got %', coalesce(NEW.warn_at::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'for example ''{75,90,100}''; ''{}'' for no warnings';
    END IF;
    NEW.warn_at := ARRAY(SELECT DISTINCT p FROM unnest(NEW.warn_at) p ORDER BY p);
    IF TG_OP = 'UPDATE' AND (NEW.period, NEW.reset_at, NEW.time_zone) IS DISTINCT FROM (OLD.period, OLD.reset_at, OLD.time_zone) THEN
        RAISE EXCEPTION 'cannot change the calendar (period, reset_at, time_zone) of cap %', OLD.cap_id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'usage is kept per window: a new calendar would start with none. Create a new cap (and delete this one when its window ends).';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER cap_check BEFORE INSERT OR UPDATE ON throttle.cap
    FOR EACH ROW EXECUTE FUNCTION throttle.check_cap();

-- Queue caps are counted in shared memory, which holds throttle.max_queue_caps of them.
CREATE FUNCTION throttle.check_queue_cap() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    room integer := coalesce(current_setting('throttle.max_queue_caps', true), '10000')::integer;
BEGIN
    IF (SELECT count(*) FROM throttle.queue_cap) > room THEN
        RAISE EXCEPTION 'at most % queue caps (throttle.max_queue_caps)', room
            USING ERRCODE = 'configuration_limit_exceeded',
                  HINT = format('raise throttle.max_queue_caps (now %s; 24 bytes of shared memory each) in postgresql.conf and restart', room);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER queue_cap_check AFTER INSERT ON throttle.queue_cap
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.check_queue_cap();

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

SELECT pg_catalog.pg_extension_config_dump('throttle.cap', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.cap_cap_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.cap_exemption', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.cap_usage', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.queue_cap', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.queue_cap_queue_cap_id_seq', '');
