-- pg_throttle: configuration tables and types. Limits are data: change a row and the next
-- admission uses it, with no restart and without losing the buckets' state.

CREATE TYPE throttle.scope AS ENUM ('sender', 'campaign', 'brand', 'account');

-- The answer of throttle_admit().
CREATE TYPE throttle.admission AS (
    admitted      boolean,      -- true: every applicable limit had room and was debited
    retry_at      timestamptz,  -- refused: earliest time the same call would pass (NULL: never, cost > burst)
    blocked_limit bigint,       -- refused: the limit that holds the call longest
    blocked_by    text,         -- refused: that limit's name or description
    headroom      bigint,       -- fewest whole tokens left in any applicable limit (NULL: none applies)
    limits        integer       -- how many limits applied
);

-- The registry of senders: a number, short code, WhatsApp number or iMessage line, and the
-- groups it belongs to. A sender must be registered before it can be admitted.
CREATE TABLE throttle.sender (
    sender      text PRIMARY KEY CHECK (sender <> ''),
    campaign    text CHECK (campaign <> ''),
    brand       text CHECK (brand <> ''),
    account     text CHECK (account <> ''),
    sender_type text CHECK (sender_type ~ '^[a-z0-9_]+$'),  -- short_code, toll_free, long_code, whatsapp, imessage, ...
    expiry_error_code text CHECK (expiry_error_code <> ''),  -- for its expired messages (default: throttle.expiry_error_code)
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Its share of a limit it shares with other senders, relative to theirs (a tenant paying
    -- for more gets more): queues sharing a limit get its cost in proportion to their weights.
    weight      integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000)
);
CREATE INDEX sender_campaign_idx ON throttle.sender (campaign);
CREATE INDEX sender_brand_idx ON throttle.sender (brand);
CREATE INDEX sender_account_idx ON throttle.sender (account);

-- Rate limits: at most `rate` in every window of `per` (cost, i.e. segments), for one sender
-- or a group, optionally narrowed to a carrier, a channel and a sender type (NULL = any). A
-- `burst` asks for a token bucket instead: `burst` at once, refilling at rate/per, so up to
-- rate + burst - 1 in one window. `each_sender`: a group's limit applies to each of its
-- senders on its own (AT&T classes G, N, Y count per number), not to the group as a whole.
CREATE TABLE throttle.rate_limit (
    limit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text UNIQUE CHECK (name <> ''),
    scope       throttle.scope NOT NULL,
    scope_id    text NOT NULL CHECK (scope_id <> ''),
    carrier     text CHECK (carrier <> ''),
    channel     text CHECK (channel ~ '^[a-z0-9_]+$'),
    sender_type text CHECK (sender_type ~ '^[a-z0-9_]+$'),
    rate        bigint NOT NULL CHECK (rate BETWEEN 1 AND 1000000000),
    per         interval NOT NULL DEFAULT '1 second'
                CHECK (per BETWEEN '1 millisecond' AND '31 days'
                       AND date_part('month', per) = 0 AND date_part('year', per) = 0),
    burst       bigint CHECK (burst BETWEEN 1 AND 1000000000),
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    each_sender boolean NOT NULL DEFAULT false
);
CREATE INDEX rate_limit_scope_idx ON throttle.rate_limit (scope, scope_id);

-- Friendly errors (22023 with a hint) before the constraints above would fire.
CREATE FUNCTION throttle.check_rate_limit() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.rate IS NULL OR NEW.rate < 1 OR NEW.rate > 1000000000 THEN
        RAISE EXCEPTION 'rate must be between 1 and 1000000000, got %', coalesce(NEW.rate::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rate counts messages (or segments) per period: 80 per ''1 second'', 4500 per ''1 minute''';
    END IF;
    IF NEW.burst < 1 OR NEW.burst > 1000000000 THEN
        RAISE EXCEPTION 'burst must be between 1 and 1000000000, got %', NEW.burst
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'leave burst NULL for at most rate in every window of per (what carriers count); a burst makes a token bucket that lets up to rate + burst - 1 through one window';
    END IF;
    IF NEW.per IS NULL OR NEW.per < interval '1 millisecond' OR NEW.per > interval '31 days' THEN
        RAISE EXCEPTION 'per must be between 1 millisecond and 31 days, got %', coalesce(NEW.per::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use a fixed length such as ''1 second'' or ''1 minute''; calendar caps (per day, month) are separate';
    END IF;
    IF date_part('month', NEW.per) <> 0 OR date_part('year', NEW.per) <> 0 THEN
        RAISE EXCEPTION 'per must not be given in months or years, got %', NEW.per
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a month has no fixed length; write ''30 days''';
    END IF;
    IF NEW.each_sender AND NEW.scope = 'sender' THEN
        RAISE EXCEPTION 'each_sender applies to a group''s limit, not to a sender''s own'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'set scope to campaign, brand or account, or leave each_sender false';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER rate_limit_check BEFORE INSERT OR UPDATE ON throttle.rate_limit
    FOR EACH ROW EXECUTE FUNCTION throttle.check_rate_limit();

SELECT pg_catalog.pg_extension_config_dump('throttle.sender', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.rate_limit', '');
SELECT pg_catalog.pg_extension_config_dump('throttle.rate_limit_limit_id_seq', '');
