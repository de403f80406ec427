-- pg_throttle 0.3.0 -> 0.4.0: every fixed-size table in shared memory is sized by a setting
-- (throttle.max_queue_caps, throttle.max_cap_leases, throttle.enqueue_ring, beside
-- throttle.max_buckets), and throttle.shmem_tables() shows each one's use against its size;
-- apply_profile takes many scopes at once (set-based).

-- 1. Queue caps: as many as throttle.max_queue_caps (0.3.0 held 1,024, fixed); past it the
--    error (53400) names the setting.
CREATE OR REPLACE FUNCTION throttle.check_queue_cap() RETURNS trigger
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

-- 2. Every table in shared memory, its use and its size.
CREATE FUNCTION throttle.shmem_tables() RETURNS TABLE (
	"table_name" TEXT,
	"setting" TEXT,
	"used" bigint,
	"size" bigint,
	"entry_bytes" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'shmem_tables_wrapper';

COMMENT ON FUNCTION throttle.shmem_tables() IS 'Every fixed-size table in shared memory: the setting that sizes it (applied at restart), entries in use, its size, bytes per entry';

-- 3. Profiles on many scopes at once: apply_profile(profile, scope, scope_ids text[], class),
--    set-based; both forms resolve the profile and class in resolve_profile.
-- A profile's canonical name and the class to apply (given by name, any case, or by vetting
-- score, or the default), checked against the scope; every error says what is valid.
CREATE OR REPLACE FUNCTION throttle.resolve_profile(
    profile text, scope throttle.scope, class text,
    OUT profile_name text, OUT class_name text
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_profile  text := resolve_profile.profile;
    v_scope    throttle.scope := resolve_profile.scope;
    v_class    text := pg_catalog.btrim(resolve_profile.class);
    v_name     text;     -- the profile's canonical name
    v_pscope   throttle.scope;
    v_cls      text;     -- the class applied ('' for a profile without classes)
    v_classes  text;     -- the profile's classes, for hints
    v_scores   text;     -- the vetting scores they stand for, for hints
    v_default  text;
BEGIN
    IF v_profile IS NULL OR v_scope IS NULL THEN
        RAISE EXCEPTION 'apply_profile: profile, scope and scope_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for example throttle.apply_profile(''att_10dlc'', ''campaign'', ''C123'', ''E''); SELECT * FROM throttle.profiles lists the profiles';
    END IF;

    SELECT p.profile, p.scope INTO v_name, v_pscope
      FROM throttle.profile_rule p
     WHERE p.profile = pg_catalog.lower(pg_catalog.btrim(v_profile))
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown profile %', pg_catalog.quote_literal(v_profile)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'valid profiles: ' || (SELECT pg_catalog.string_agg(p.profile || ' (' || p.scope::text || ')', ', ' ORDER BY p.profile)
                                                  FROM (SELECT DISTINCT p.profile, p.scope FROM throttle.profile_rule p) p)
                         || '; SELECT * FROM throttle.profiles lists their rules';
    END IF;
    IF v_pscope <> v_scope THEN
        RAISE EXCEPTION 'profile % applies to a %, not a %', v_name, v_pscope, v_scope
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('valid scope for %s: %s, as in throttle.apply_profile(%L, %L, ...)',
                                           v_name, v_pscope, v_name, v_pscope);
    END IF;

    -- The class: given (by name, any case, or by vetting score), or the default.
    SELECT pg_catalog.string_agg(c.class, ', ' ORDER BY c.ord, c.class),
           pg_catalog.string_agg(c.min_score || '-' || c.max_score || ' ' || c.class, ', ' ORDER BY c.min_score),
           pg_catalog.min(c.class) FILTER (WHERE c.default_class)
      INTO v_classes, v_scores, v_default
      FROM (SELECT p.class, pg_catalog.min(p.ord) AS ord, pg_catalog.bool_or(p.default_class) AS default_class,
                   pg_catalog.min(p.min_score) AS min_score, pg_catalog.max(p.max_score) AS max_score
              FROM throttle.profile_rule p
             WHERE p.profile = v_name AND p.class <> ''
             GROUP BY p.class) c;
    IF v_classes IS NULL THEN
        IF coalesce(v_class, '') <> '' THEN
            RAISE EXCEPTION 'profile % has no classes, got class %', v_name, pg_catalog.quote_literal(v_class)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('valid classes for %s: none; leave class NULL', v_name);
        END IF;
        v_cls := '';
    ELSIF coalesce(v_class, '') = '' THEN
        v_cls := v_default;
        IF v_cls IS NULL THEN
            RAISE EXCEPTION 'profile % needs a class', v_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('valid classes for %s: %s', v_name, v_classes)
                             || coalesce('; or a vetting score (' || v_scores || ')', '');
        END IF;
    ELSE
        SELECT p.class INTO v_cls
          FROM throttle.profile_rule p
         WHERE p.profile = v_name AND p.class <> '' AND pg_catalog.lower(p.class) = pg_catalog.lower(v_class)
         LIMIT 1;
        IF v_cls IS NULL AND v_class ~ '^[0-9]{1,3}$' THEN
            SELECT p.class INTO v_cls
              FROM throttle.profile_rule p
             WHERE p.profile = v_name AND v_class::integer BETWEEN p.min_score AND p.max_score
             LIMIT 1;
        END IF;
        IF v_cls IS NULL THEN
            RAISE EXCEPTION 'unknown class % for profile %', pg_catalog.quote_literal(v_class), v_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = pg_catalog.format('valid classes for %s: %s', v_name, v_classes)
                             || coalesce('; or a vetting score (' || v_scores || ')', '');
        END IF;
    END IF;

    profile_name := v_name;
    class_name := v_cls;
END
$$;
REVOKE EXECUTE ON FUNCTION throttle.resolve_profile(text, throttle.scope, text) FROM PUBLIC;
COMMENT ON FUNCTION throttle.resolve_profile(text, throttle.scope, text) IS
    'The canonical name of a profile and the class apply_profile applies (given by name or vetting score, or the default), checked against the scope';

CREATE OR REPLACE FUNCTION throttle.apply_profile(
    profile text, scope throttle.scope, scope_id text, class text DEFAULT NULL
) RETURNS TABLE (kind text, name text, id bigint, created boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_profile  text := apply_profile.profile;
    v_scope    throttle.scope := apply_profile.scope;
    v_scope_id text := apply_profile.scope_id;
    v_class    text := pg_catalog.btrim(apply_profile.class);
    v_name     text;     -- the profile's canonical name
    v_cls      text;     -- the class applied ('' for a profile without classes)
    v_other    text;     -- another class of the profile applied to this scope
    v_taken    text;     -- its rows
    v_id       bigint;
    r          record;
BEGIN
    IF v_profile IS NULL OR v_scope IS NULL OR v_scope_id IS NULL THEN
        RAISE EXCEPTION 'apply_profile: profile, scope and scope_id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for example throttle.apply_profile(''att_10dlc'', ''campaign'', ''C123'', ''E''); SELECT * FROM throttle.profiles lists the profiles';
    END IF;
    IF v_scope_id = '' THEN
        RAISE EXCEPTION 'apply_profile: scope_id must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the sender, campaign, brand or account the limits are for, as in throttle.sender';
    END IF;
    SELECT r.profile_name, r.class_name INTO v_name, v_cls
      FROM throttle.resolve_profile(v_profile, v_scope, v_class) r;

    -- Before changing anything: another class of this profile must not be applied to the same
    -- scope (its limits would stack with these), and a row with one of our names must be for
    -- this scope. (Two transactions applying different classes to one scope at the same time
    -- can both pass: the stricter limits then win. No lock is taken, so a transaction may apply
    -- a profile to any number of scopes.)
    SELECT pg_catalog.string_agg(DISTINCT x.class, ', '), pg_catalog.string_agg(x.row_name, ', ' ORDER BY x.row_name)
      INTO v_other, v_taken
      FROM (SELECT p.class, n.row_name
              FROM throttle.profile_rule p
             CROSS JOIN LATERAL (SELECT p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
                                        || v_scope::text || ':' || v_scope_id || '/' || p.rule AS row_name) n
             WHERE p.profile = v_name AND p.class NOT IN ('', v_cls)
               AND CASE p.kind
                   WHEN 'rate' THEN EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = n.row_name)
                   WHEN 'cap' THEN EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = n.row_name)
                   ELSE EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = n.row_name) END) x;
    IF v_taken IS NOT NULL THEN
        RAISE EXCEPTION 'class % of profile % is already applied to % %', v_other, v_name, v_scope, v_scope_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('its rows: %s; applying class %s as well would stack both classes'' limits', v_taken, v_cls),
                  HINT = 'delete the rows named in the detail from throttle.rate_limit, throttle.cap and throttle.queue_cap (a deleted cap forgets its usage), then apply the profile again';
    END IF;
    FOR r IN
        SELECT p.kind, n.row_name
          FROM throttle.profile_rule p
         CROSS JOIN LATERAL (SELECT p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
                                    || v_scope::text || ':' || v_scope_id || '/' || p.rule AS row_name) n
         WHERE p.profile = v_name AND p.class IN ('', v_cls)
           AND CASE p.kind
               WHEN 'rate' THEN EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = n.row_name
                                           AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id))
               WHEN 'cap' THEN EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = n.row_name
                                          AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id))
               ELSE EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = n.row_name
                               AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, v_scope_id)) END
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'the name % is taken in throttle.% by a row of another scope', r.row_name,
                        CASE r.kind WHEN 'rate' THEN 'rate_limit' ELSE r.kind END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rename or delete that row, then apply the profile again';
    END LOOP;

    -- Create what is missing; keep what exists (an override survives).
    FOR r IN
        SELECT p.*, n.row_name,
               pg_catalog.format('profile %s%s: %s', p.profile, CASE WHEN p.class = '' THEN '' ELSE ' class ' || p.class END,
                                 p.note) AS row_note
          FROM throttle.profile_rule p
         CROSS JOIN LATERAL (SELECT p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
                                    || v_scope::text || ':' || v_scope_id || '/' || p.rule AS row_name) n
         WHERE p.profile = v_name AND p.class IN ('', v_cls)
         ORDER BY p.class <> '', CASE p.kind WHEN 'rate' THEN 1 WHEN 'cap' THEN 2 ELSE 3 END, p.rule
    LOOP
        v_id := NULL;
        IF r.kind = 'rate' THEN
            INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, channel, sender_type, rate, per, burst,
                                             each_sender, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.carrier, r.channel, r.sender_type, r.rate, r.per, r.burst,
                    r.each_sender, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING limit_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.limit_id INTO v_id FROM throttle.rate_limit t WHERE t.name = r.row_name;
            END IF;
        ELSIF r.kind = 'cap' THEN
            INSERT INTO throttle.cap (name, scope, scope_id, carrier, channel, sender_type, cap, period, reset_at,
                                      time_zone, overage_pct, warn_at, at_cap, local_time, error_code, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.carrier, r.channel, r.sender_type, r.cap, r.period, r.reset_at,
                    r.time_zone, r.overage_pct, r.warn_at, r.at_cap, r.local_time, r.error_code, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING cap_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.cap_id INTO v_id FROM throttle.cap t WHERE t.name = r.row_name;
            END IF;
        ELSE
            INSERT INTO throttle.queue_cap (name, scope, scope_id, carrier, channel, max_waiting, validity, error_code, note)
            VALUES (r.row_name, v_scope, v_scope_id, r.carrier, r.channel, r.max_waiting, r.validity, r.error_code, r.row_note)
            ON CONFLICT (name) DO NOTHING
            RETURNING queue_cap_id INTO v_id;
            created := v_id IS NOT NULL;
            IF NOT created THEN
                SELECT t.queue_cap_id INTO v_id FROM throttle.queue_cap t WHERE t.name = r.row_name;
            END IF;
        END IF;
        IF v_id IS NULL THEN
            -- Deleted by another transaction after our insert found it (or not visible to a
            -- repeatable-read snapshot): say so rather than return no id.
            RAISE EXCEPTION 'the row % changed concurrently', r.row_name
                USING ERRCODE = 'serialization_failure',
                      HINT = 'apply the profile again';
        END IF;
        kind := r.kind;
        name := r.row_name;
        id := v_id;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION throttle.apply_profile(text, throttle.scope, text, text) FROM PUBLIC;

-- The same for many scopes at once, set-based (100,000 lines in seconds, not one call each):
-- every scope's rows checked first (all or nothing), created in one statement per kind.
-- Every sender of a campaign: scope_ids => ARRAY(SELECT sender FROM throttle.sender WHERE
-- campaign = 'C1').
CREATE OR REPLACE FUNCTION throttle.apply_profile(
    profile text, scope throttle.scope, scope_ids text[], class text DEFAULT NULL
) RETURNS TABLE (scope_id text, kind text, name text, id bigint, created boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_scope    throttle.scope := apply_profile.scope;
    v_ids      text[];
    v_name     text;
    v_cls      text;
    v_other    text;
    v_taken    text;
BEGIN
    IF apply_profile.profile IS NULL OR v_scope IS NULL OR apply_profile.scope_ids IS NULL THEN
        RAISE EXCEPTION 'apply_profile: profile, scope and scope_ids must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for example throttle.apply_profile(''sendblue_line'', ''sender'', ARRAY(SELECT sender FROM throttle.sender WHERE campaign = ''C1''))';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.unnest(apply_profile.scope_ids) u WHERE u IS NULL OR u = '') THEN
        RAISE EXCEPTION 'apply_profile: every scope_id must be a non-empty string'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the senders, campaigns, brands or accounts the limits are for, as in throttle.sender';
    END IF;
    SELECT r.profile_name, r.class_name INTO v_name, v_cls
      FROM throttle.resolve_profile(apply_profile.profile, v_scope, apply_profile.class) r;
    v_ids := ARRAY(SELECT DISTINCT u FROM pg_catalog.unnest(apply_profile.scope_ids) u);

    CREATE TEMP TABLE IF NOT EXISTS pg_throttle_apply (
        sid text, cls text, rule text, kind text, row_name text, row_note text, rule_id bigint) ON COMMIT DROP;
    TRUNCATE pg_throttle_apply;
    -- Every scope's rows of every rule of the profile (and of its other classes, to refuse).
    INSERT INTO pg_throttle_apply
    SELECT s.u, p.class, p.rule, CASE WHEN p.class IN ('', v_cls) THEN p.kind END,
           p.profile || '/' || CASE WHEN p.class = '' THEN '' ELSE p.class || '/' END
               || v_scope::text || ':' || s.u || '/' || p.rule,
           pg_catalog.format('profile %s%s: %s', p.profile,
                             CASE WHEN p.class = '' THEN '' ELSE ' class ' || p.class END, p.note),
           NULL
      FROM pg_catalog.unnest(v_ids) s(u)
     CROSS JOIN throttle.profile_rule p
     WHERE p.profile = v_name;

    -- Another class of the profile applied to one of these scopes: its limits would stack.
    SELECT pg_catalog.string_agg(a.row_name, ', ' ORDER BY a.row_name)
      INTO v_taken
      FROM pg_throttle_apply a
     WHERE a.kind IS NULL
       AND (EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = a.row_name)
            OR EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = a.row_name)
            OR EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = a.row_name));
    IF v_taken IS NOT NULL THEN
        RAISE EXCEPTION 'another class of profile % is already applied to some of these scopes', v_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('its rows: %s; applying class %s as well would stack both classes'' limits', v_taken, v_cls),
                  HINT = 'delete the rows named in the detail from throttle.rate_limit, throttle.cap and throttle.queue_cap (a deleted cap forgets its usage), then apply the profile again';
    END IF;
    DELETE FROM pg_throttle_apply a WHERE a.kind IS NULL;
    -- A name of ours taken by a row of another scope.
    SELECT a.row_name, a.kind INTO v_taken, v_other
      FROM pg_throttle_apply a
     WHERE CASE a.kind
           WHEN 'rate' THEN EXISTS (SELECT 1 FROM throttle.rate_limit t WHERE t.name = a.row_name
                                       AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid))
           WHEN 'cap' THEN EXISTS (SELECT 1 FROM throttle.cap t WHERE t.name = a.row_name
                                      AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid))
           ELSE EXISTS (SELECT 1 FROM throttle.queue_cap t WHERE t.name = a.row_name
                           AND (t.scope, t.scope_id) IS DISTINCT FROM (v_scope, a.sid)) END
     LIMIT 1;
    IF v_taken IS NOT NULL THEN
        RAISE EXCEPTION 'the name % is taken in throttle.% by a row of another scope', v_taken,
                        CASE v_other WHEN 'rate' THEN 'rate_limit' ELSE v_other END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rename or delete that row, then apply the profile again';
    END IF;

    -- Create what is missing, one statement per kind; keep what exists (an override survives).
    WITH want AS (
        SELECT a.sid, a.row_name, a.row_note, p.*
          FROM pg_throttle_apply a
          JOIN throttle.profile_rule p ON p.profile = v_name AND p.class = a.cls AND p.rule = a.rule),
    r AS (
        INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, channel, sender_type, rate, per, burst,
                                         each_sender, note)
        SELECT w.row_name, v_scope, w.sid, w.carrier, w.channel, w.sender_type, w.rate, w.per, w.burst,
               w.each_sender, w.row_note
          FROM want w WHERE w.kind = 'rate'
        ON CONFLICT (name) DO NOTHING
        RETURNING rate_limit.name, rate_limit.limit_id AS made),
    c AS (
        INSERT INTO throttle.cap (name, scope, scope_id, carrier, channel, sender_type, cap, period, reset_at,
                                  time_zone, overage_pct, warn_at, at_cap, local_time, error_code, note)
        SELECT w.row_name, v_scope, w.sid, w.carrier, w.channel, w.sender_type, w.cap, w.period, w.reset_at,
               w.time_zone, w.overage_pct, w.warn_at, w.at_cap, w.local_time, w.error_code, w.row_note
          FROM want w WHERE w.kind = 'cap'
        ON CONFLICT (name) DO NOTHING
        RETURNING cap.name, cap.cap_id AS made),
    q AS (
        INSERT INTO throttle.queue_cap (name, scope, scope_id, carrier, channel, max_waiting, validity, error_code, note)
        SELECT w.row_name, v_scope, w.sid, w.carrier, w.channel, w.max_waiting, w.validity, w.error_code, w.row_note
          FROM want w WHERE w.kind = 'queue_cap'
        ON CONFLICT (name) DO NOTHING
        RETURNING queue_cap.name, queue_cap.queue_cap_id AS made)
    UPDATE pg_throttle_apply a SET rule_id = m.made
      FROM (SELECT * FROM r UNION ALL SELECT * FROM c UNION ALL SELECT * FROM q) m
     WHERE a.row_name = m.name;

    RETURN QUERY
    SELECT a.sid, a.kind, a.row_name,
           coalesce(a.rule_id,
                    CASE a.kind
                    WHEN 'rate' THEN (SELECT t.limit_id FROM throttle.rate_limit t WHERE t.name = a.row_name)
                    WHEN 'cap' THEN (SELECT t.cap_id FROM throttle.cap t WHERE t.name = a.row_name)
                    ELSE (SELECT t.queue_cap_id FROM throttle.queue_cap t WHERE t.name = a.row_name) END),
           a.rule_id IS NOT NULL
      FROM pg_throttle_apply a
     ORDER BY a.sid, CASE a.kind WHEN 'rate' THEN 1 WHEN 'cap' THEN 2 ELSE 3 END, a.row_name;
END
$$;
REVOKE EXECUTE ON FUNCTION throttle.apply_profile(text, throttle.scope, text[], text) FROM PUBLIC;
COMMENT ON FUNCTION throttle.apply_profile(text, throttle.scope, text[], text) IS
    'Create the limits of a provider profile (and class) for many senders, campaigns, brands or accounts at once, set-based: all checked first, then created in one statement per kind; rows that exist are kept. Returns every scope''s rows and whether each was created now';
