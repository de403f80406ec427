-- pg_throttle 0.7.0 -> 0.8.0
--
-- An admission with contact rules no longer reads the contact tables for a recipient that
-- neither table ever held on the line: a filter in shared memory says so. Every row written
-- to them is added to it by a trigger (ENABLE ALWAYS: a replica's apply fires it too); the
-- release worker adds the rows already there after each server start, then marks it ready.
-- throttle.contact_filter() shows it.

CREATE FUNCTION throttle.contact_seen() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'pg_throttle_contact_seen';
CREATE TRIGGER contact_seen BEFORE INSERT OR UPDATE ON throttle.contact_sent
    FOR EACH ROW EXECUTE FUNCTION throttle.contact_seen();
CREATE TRIGGER contact_seen BEFORE INSERT OR UPDATE ON throttle.contact_inbound
    FOR EACH ROW EXECUTE FUNCTION throttle.contact_seen();
ALTER TABLE throttle.contact_sent ENABLE ALWAYS TRIGGER contact_seen;
ALTER TABLE throttle.contact_inbound ENABLE ALWAYS TRIGGER contact_seen;
REVOKE ALL ON FUNCTION throttle.contact_seen() FROM PUBLIC;

CREATE  FUNCTION "contact_filter"() RETURNS TABLE (
	"ready" bool,  /* bool */
	"bytes" bigint,  /* i64 */
	"bits_set" bigint,  /* i64 */
	"false_positive_rate" double precision  /* f64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'contact_filter_wrapper';

COMMENT ON FUNCTION throttle.contact_seen() IS 'Internal: adds each row written to the contact tables to the filter of recipients seen (src/contact_filter.rs)';
COMMENT ON FUNCTION throttle.contact_filter() IS 'The filter that spares admissions with contact rules a read for recipients never seen on a line: ready (for this database), size, bits set, estimated false-positive rate';

-- The worker and every session read the configuration again.
SELECT throttle.note_config_change();
