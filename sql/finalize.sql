-- Every backend caches the limits that apply to a sender; a change to the configuration
-- tables tells them all to read them again when the changing transaction ends.
CREATE FUNCTION throttle.config_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM throttle.note_config_change();
    RETURN NULL;
END
$$;

CREATE TRIGGER sender_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.sender
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();
CREATE TRIGGER rate_limit_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.rate_limit
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();

-- Monitoring: every rate limit with its bucket's state now.
CREATE VIEW throttle.limit_state AS
SELECT l.limit_id, l.name, l.scope, l.scope_id, l.carrier, l.channel, l.sender_type,
       l.rate, l.per, l.burst,
       coalesce(b.available, l.burst) AS available,
       b.full_at,
       b.limit_id IS NOT NULL AS in_memory
  FROM throttle.rate_limit l
  LEFT JOIN throttle.bucket_state() b
         ON b.limit_id = l.limit_id AND b.sub_key = 0
        AND b.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database());

COMMENT ON SCHEMA throttle IS 'pg_throttle: message throttling by rate limits kept in tables';
COMMENT ON TABLE throttle.sender IS 'Senders (numbers, short codes, WhatsApp numbers, iMessage lines) and the campaign, brand and account they belong to';
COMMENT ON TABLE throttle.rate_limit IS 'Rate limits: rate per period with a burst, for a sender or a group, optionally per carrier, channel and sender type';
COMMENT ON TYPE throttle.admission IS 'The answer of throttle_admit()';
COMMENT ON FUNCTION throttle.throttle_admit(text, text, timestamptz, integer, text) IS
    'Admit a message if every applicable limit has room (debiting all of them), else say which limit blocks and until when';
COMMENT ON FUNCTION throttle.try_admit(text, text, timestamptz, integer, text) IS
    'Boolean form of throttle_admit(): true when admitted and debited';
COMMENT ON FUNCTION throttle.bucket_state(timestamptz) IS 'Every live bucket in shared memory';
COMMENT ON FUNCTION throttle.shmem_usage() IS 'Live buckets against throttle.max_buckets';
COMMENT ON FUNCTION throttle.note_config_change() IS 'Internal: called by the configuration tables'' triggers';
COMMENT ON VIEW throttle.limit_state IS 'Every rate limit with its tokens available now';
COMMENT ON TABLE throttle.pending IS 'Messages waiting for their limits: INSERT here (or call throttle.enqueue) in the same transaction as your own writes';
COMMENT ON TABLE throttle.ready IS 'Messages released by the worker, to be sent: consume with throttle.take() or DELETE ... FOR UPDATE SKIP LOCKED; LISTEN throttle_ready';
COMMENT ON TABLE throttle.dead IS 'Messages that will never be released (expired, cost over a burst), with the reason';
COMMENT ON FUNCTION throttle.enqueue(text, text, text, jsonb, text, integer, smallint, timestamptz, timestamptz) IS 'Enqueue a message; returns its id';
COMMENT ON FUNCTION throttle.take(integer) IS 'Take up to n released messages, oldest first';
COMMENT ON TABLE throttle.area_code_zone IS 'North American area code to IANA time zones, generated from libphonenumber (scripts/gen_area_code_zones.py)';
COMMENT ON FUNCTION throttle.worker_state() IS 'The release worker: last tick, released, lag';

-- Grants: applications admit and read; changing limits is for the owner (or roles the owner
-- grants INSERT/UPDATE/DELETE on the configuration tables).
GRANT USAGE ON SCHEMA throttle TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA throttle FROM PUBLIC;
GRANT SELECT ON throttle.sender, throttle.rate_limit, throttle.limit_state TO PUBLIC;
-- Applications enqueue and consume.
GRANT SELECT, INSERT ON throttle.pending TO PUBLIC;
GRANT USAGE ON SEQUENCE throttle.pending_id_seq TO PUBLIC;
GRANT SELECT, DELETE ON throttle.ready TO PUBLIC;
GRANT SELECT ON throttle.dead TO PUBLIC;
GRANT SELECT ON throttle.area_code_zone TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.note_config_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.config_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_changed() FROM PUBLIC;
