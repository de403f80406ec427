-- pg_throttle 0.3.0 -> 0.4.0: every fixed-size table in shared memory is sized by a setting
-- (throttle.max_queue_caps, throttle.max_cap_leases, throttle.enqueue_ring, beside
-- throttle.max_buckets), and throttle.shmem_tables() shows each one's use against its size.

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
