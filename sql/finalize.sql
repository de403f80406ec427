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
CREATE TRIGGER cap_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.cap
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();
CREATE TRIGGER cap_exemption_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.cap_exemption
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();
CREATE TRIGGER queue_cap_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.queue_cap
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();
CREATE TRIGGER account_role_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.account_role
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();
-- A TRUNCATE of pending fires no row trigger: have the worker count the queue caps again.
CREATE TRIGGER pending_truncated AFTER TRUNCATE ON throttle.pending
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();

-- Monitoring: every rate limit with its bucket's state now. A limit each sender has on its own
-- (each_sender) has a bucket per sender: see throttle.bucket_state() for those.
CREATE VIEW throttle.limit_state AS
SELECT l.limit_id, l.name, l.scope, l.scope_id, l.carrier, l.channel, l.sender_type,
       l.rate, l.per, l.burst,
       coalesce(b.available, l.burst, l.rate) AS available,
       coalesce(b.next_room_at, now()) AS next_room_at,
       b.full_at,
       b.limit_id IS NOT NULL AS in_memory,
       l.each_sender,
       coalesce(f.configured_rate, l.rate) AS configured_rate,
       CASE WHEN f.limit_id IS NOT NULL THEN
           pg_catalog.format('slowed to %s (%s %% of %s) by provider error %s (%s errors, the last at %s); back to %s in steps from %s to %s',
                             l.rate, round((100 * f.factor)::numeric), f.configured_rate, f.error_code,
                             f.errors, f.slowed_at, f.configured_rate, f.recover_from, f.recovered_by)
       END AS slowed
  FROM throttle.rate_limit l
  LEFT JOIN throttle.bucket_state() b
         ON b.limit_id = l.limit_id AND b.sub_key = 0
        AND b.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  LEFT JOIN throttle.limit_feedback f ON f.limit_id = l.limit_id;

-- Monitoring: every queue (sender, carrier, channel) with what waits in it. Reads the queue
-- index (cost grows with what is pending).
CREATE VIEW throttle.queue_state WITH (security_invoker = true) AS
SELECT p.sender, p.carrier, p.channel,
       count(*) AS waiting,
       sum(p.cost) AS segments,
       count(*) FILTER (WHERE p.not_before > now()) AS held_until_later,
       min(p.enqueued_at) AS oldest_enqueued_at,
       now() - min(p.enqueued_at) AS oldest_wait
  FROM throttle.pending p
 GROUP BY p.sender, p.carrier, p.channel;

-- Monitoring: the same per group a sender belongs to.
CREATE VIEW throttle.group_queue_state WITH (security_invoker = true) AS
SELECT g.scope, g.scope_id, sum(q.waiting)::bigint AS waiting, sum(q.segments)::bigint AS segments,
       count(*) AS queues, min(q.oldest_enqueued_at) AS oldest_enqueued_at, max(q.oldest_wait) AS oldest_wait
  FROM throttle.queue_state q
  JOIN throttle.sender s ON s.sender = q.sender
 CROSS JOIN LATERAL (VALUES ('sender'::throttle.scope, s.sender), ('campaign', s.campaign),
                            ('brand', s.brand), ('account', s.account)) g(scope, scope_id)
 WHERE g.scope_id IS NOT NULL
 GROUP BY g.scope, g.scope_id;

-- Monitoring: every calendar cap with its current window's usage.
CREATE VIEW throttle.cap_state AS
SELECT c.cap_id, c.name, c.scope, c.scope_id, c.carrier, c.channel, c.period, c.time_zone,
       c.cap, c.overage_pct,
       (c.cap * (100 + c.overage_pct) / 100) AS allowed,
       w.window_start, w.window_end,
       coalesce(u.used, 0) AS used,
       coalesce(u.leased, 0) AS leased,
       coalesce(l.unspent, 0) AS leased_unspent,
       round(100.0 * (coalesce(u.used, 0) + coalesce(u.leased, 0) - coalesce(l.unspent, 0)) / c.cap, 1) AS percent,
       (SELECT max(p) FROM unnest(c.warn_at) p
         WHERE 100 * (coalesce(u.used, 0) + coalesce(u.leased, 0)) >= p * c.cap) AS warned_at,
       c.at_cap
  FROM throttle.cap c
 CROSS JOIN LATERAL throttle.cap_window(c.period::text, c.reset_at, c.time_zone, now()) w
  LEFT JOIN throttle.cap_usage u ON u.cap_id = c.cap_id AND u.window_start = w.window_start
  LEFT JOIN throttle.cap_leases() l
         ON l.cap_id = c.cap_id AND l.window_start = w.window_start
        AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database());

-- Monitoring: every queue cap with the messages waiting under it.
CREATE VIEW throttle.queue_cap_state AS
SELECT q.queue_cap_id, q.name, q.scope, q.scope_id, q.carrier, q.channel, q.validity,
       coalesce(n.max_waiting, q.max_waiting) AS max_waiting,
       n.waiting,
       round(100.0 * n.waiting / nullif(coalesce(n.max_waiting, q.max_waiting), 0), 1) AS percent,
       n.queue_cap_id IS NOT NULL AS counted
  FROM throttle.queue_cap q
  LEFT JOIN throttle.queue_cap_counts() n
         ON n.queue_cap_id = q.queue_cap_id
        AND n.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database());

COMMENT ON SCHEMA throttle IS 'pg_throttle: message throttling by rate limits kept in tables';
COMMENT ON TABLE throttle.sender IS 'Senders (numbers, short codes, WhatsApp numbers, iMessage lines) and the campaign, brand and account they belong to';
COMMENT ON TABLE throttle.rate_limit IS 'Rate limits: at most rate per period in every window (or, with a burst, a token bucket), for a sender or a group, optionally per carrier, channel and sender type';
COMMENT ON TYPE throttle.admission IS 'The answer of throttle_admit()';
COMMENT ON FUNCTION throttle.throttle_admit(text, text, timestamptz, integer, text) IS
    'Admit a message if every applicable limit has room (debiting all of them), else say which limit blocks and until when';
COMMENT ON FUNCTION throttle.try_admit(text, text, timestamptz, integer, text) IS
    'Boolean form of throttle_admit(): true when admitted and debited';
COMMENT ON FUNCTION throttle.bucket_state(timestamptz) IS 'Every live bucket in shared memory';
COMMENT ON FUNCTION throttle.shmem_usage() IS 'Live buckets against throttle.max_buckets';
COMMENT ON FUNCTION throttle.shmem_tables() IS 'Every fixed-size table in shared memory: the setting that sizes it (applied at restart), entries in use, its size, bytes per entry';
COMMENT ON FUNCTION throttle.note_config_change() IS 'Internal: called by the configuration tables'' triggers';
COMMENT ON VIEW throttle.limit_state IS 'Every rate limit with its room now and when it next has room';
COMMENT ON TABLE throttle.pending IS 'Messages waiting for their limits: INSERT here (or call throttle.enqueue) in the same transaction as your own writes';
COMMENT ON TABLE throttle.ready IS 'Messages released by the worker, to be sent: consume with throttle.take(); LISTEN throttle_ready';
COMMENT ON TABLE throttle.dead IS 'Messages that will never be released (expired, cost over a burst), with the reason';
COMMENT ON FUNCTION throttle.enqueue(text, text, text, jsonb, text, integer, smallint, timestamptz, timestamptz) IS 'Enqueue a message; returns its id';
COMMENT ON FUNCTION throttle.take(integer) IS 'Take up to n released messages of the senders the calling role acts for, oldest first';
COMMENT ON FUNCTION throttle.take_for(integer, bigint) IS 'Internal: take() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.consumer_ticket() IS 'Internal: a one-time ticket naming the calling role, for take()';
COMMENT ON FUNCTION throttle.ticket_role(bigint) IS 'Internal: the role a consumer ticket names, once';
COMMENT ON TABLE throttle.account_role IS 'Tenants: the roles that act for each account''s senders (no rows: every role acts for every sender)';
COMMENT ON FUNCTION throttle.acts_for(oid, text) IS 'Whether a role acts for a sender under throttle.account_role';
COMMENT ON FUNCTION throttle.pending_check() IS 'Internal: validates a new message (22023) and gives it its id';
COMMENT ON TABLE throttle.area_code_zone IS 'North American area code to IANA time zones, generated from libphonenumber (scripts/gen_area_code_zones.py)';
COMMENT ON TABLE throttle.cap IS 'Calendar caps: at most cap per hour, day or month for a sender or a group, resetting at reset_at in time_zone; at_cap says what happens to messages over it';
COMMENT ON TABLE throttle.cap_exemption IS 'Campaigns a calendar cap does not apply to';
COMMENT ON TABLE throttle.cap_usage IS 'Usage of each calendar cap per window: used (counted with the release) and leased (to throttle_admit)';
COMMENT ON TABLE throttle.queue_cap IS 'Queue caps: at most max_waiting messages pending for a scope (or rate x validity); an enqueue over it fails with SQLSTATE PT429';
COMMENT ON VIEW throttle.queue_state IS 'Every queue (sender, carrier, channel): messages waiting, segments, oldest wait';
COMMENT ON VIEW throttle.group_queue_state IS 'Messages waiting per sender, campaign, brand and account';
COMMENT ON FUNCTION throttle.explain(bigint) IS 'Why a message is still waiting: every constraint on it, when each lets it go, and the one that holds it';
COMMENT ON FUNCTION throttle.explain_sender(text) IS 'Every queue of a sender: waiting, oldest, and when its head and last message would go';
COMMENT ON FUNCTION throttle.plan_capacity(text, bigint, text[], double precision[], text, integer, interval) IS 'Capacity planning: time a volume needs under the configured limits and caps, and senders needed for a deadline';
COMMENT ON VIEW throttle.cap_state IS 'Every calendar cap with its current window and usage';
COMMENT ON VIEW throttle.queue_cap_state IS 'Every queue cap with the messages waiting under it';
COMMENT ON FUNCTION throttle.cap_leases() IS 'Calendar-cap capacity leased to shared memory and not yet spent';
COMMENT ON FUNCTION throttle.queue_cap_counts() IS 'Messages counted under each queue cap, in shared memory';
COMMENT ON FUNCTION throttle.cap_window(text, time, text, timestamptz) IS 'The window of a calendar (hour, day or month resetting at a local time in a zone) that contains a time';
COMMENT ON FUNCTION throttle.next_local_time(text[], timestamptz, time) IS 'The first instant at or after a time when the local time is at in every given zone';
COMMENT ON FUNCTION throttle.area_code(text) IS 'North American area code of a phone number, or NULL';
COMMENT ON FUNCTION throttle.is_time_zone(text) IS 'Whether pg_throttle knows this IANA time zone';
COMMENT ON FUNCTION throttle.queue_enter(text, text, text) IS 'Internal: counts an enqueued message under its queue caps';
COMMENT ON FUNCTION throttle.queue_caps_on() IS 'Internal: whether any queue cap is configured';
COMMENT ON FUNCTION throttle.pending_enter() IS 'Internal: the enqueue trigger that enforces queue caps (SQLSTATE PT429)';
COMMENT ON FUNCTION throttle.check_rate_limit() IS 'Internal: validates throttle.rate_limit rows (22023 with a hint)';
COMMENT ON FUNCTION throttle.check_cap() IS 'Internal: validates throttle.cap rows (22023 with a hint)';
COMMENT ON FUNCTION throttle.check_queue_cap_size() IS 'Internal: a queue cap sized by validity needs a rate limit of its scope (22023)';
COMMENT ON FUNCTION throttle.check_queue_cap() IS 'Internal: bounds the number of queue caps (54000)';
COMMENT ON FUNCTION throttle.pending_changed() IS 'Internal: hands new pending rows to the worker at commit; uncounts deleted ones from queue caps';
COMMENT ON FUNCTION throttle.config_changed() IS 'Internal: tells every session to reread the configuration when the changing transaction ends';
COMMENT ON TYPE throttle.scope IS 'What a limit or cap applies to: a sender, or every sender of a campaign, brand or account';
COMMENT ON TYPE throttle.cap_period IS 'The window of a calendar cap: hour, day or month';
COMMENT ON TYPE throttle.cap_action IS 'What the worker does with a message over a calendar cap: defer (to the reset), defer_local (to a local time in the recipient''s zone), refuse (dead-letter)';
COMMENT ON FUNCTION throttle.worker_state() IS 'The release worker: liveness (healthy, seconds since its last tick), released, lateness';

-- Grants: applications admit and read; changing limits is for the owner (or roles the owner
-- grants INSERT/UPDATE/DELETE on the configuration tables).
GRANT USAGE ON SCHEMA throttle TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA throttle FROM PUBLIC;
GRANT SELECT ON throttle.profile_rule, throttle.profiles TO PUBLIC;
GRANT SELECT ON throttle.sender, throttle.rate_limit, throttle.limit_state TO PUBLIC;
GRANT SELECT ON throttle.cap, throttle.cap_exemption, throttle.cap_usage, throttle.queue_cap,
                throttle.cap_state, throttle.queue_cap_state, throttle.queue_state,
                throttle.group_queue_state TO PUBLIC;
-- Applications enqueue and consume.
GRANT SELECT, INSERT ON throttle.pending TO PUBLIC;
GRANT USAGE ON SEQUENCE throttle.pending_id_seq TO PUBLIC;
-- Consumers take() (no DELETE: a role with DELETE may LOCK the table and stall everyone).
GRANT SELECT ON throttle.ready TO PUBLIC;
GRANT SELECT ON throttle.dead TO PUBLIC;
GRANT SELECT ON throttle.area_code_zone TO PUBLIC;
GRANT SELECT ON throttle.account_role TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.note_config_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.config_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_check() FROM PUBLIC;

-- Contact rules (sql/contacts.sql): a change tells every session and the worker to read them
-- again; held messages are judged again under the new rules.
CREATE TRIGGER contact_rule_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON throttle.contact_rule
    FOR EACH STATEMENT EXECUTE FUNCTION throttle.config_changed();

-- Every contact rule with the line state it reads, per sender it applies to.
CREATE VIEW throttle.contact_rule_state AS
SELECT s.sender, r.rule_id, r.name, r.kind, r.max_count, r.per, r.reset_at, r.time_zone,
       r.reply_window, r.at_limit, r.channel,
       CASE WHEN r.kind IN ('new_contacts', 'follow_up_contacts') THEN
           (SELECT count(*) FROM throttle.contact_sent c
             WHERE c.sender = s.sender
               AND c.counted_as = CASE r.kind WHEN 'new_contacts' THEN 1 ELSE 2 END
               AND c.counted_at >= CASE WHEN r.per IS NOT NULL THEN now() - r.per
                                        ELSE (SELECT w.window_start FROM throttle.cap_window('day', r.reset_at, r.time_zone, now()) w) END)
       WHEN r.kind = 'line_streak' THEN
           (SELECT CASE WHEN l.streak_since IS NOT DISTINCT FROM
                             (SELECT max(i.last_inbound_at) FROM throttle.contact_inbound i WHERE i.sender = s.sender)
                        THEN l.streak ELSE 0 END
              FROM throttle.line_sent l WHERE l.sender = s.sender)
       END AS used,
       (SELECT count(*) FROM throttle.pending p WHERE p.sender = s.sender AND p.held_rule = r.rule_id) AS held
  FROM throttle.contact_rule r
  JOIN throttle.sender s
    ON (r.scope = 'sender' AND s.sender = r.scope_id)
    OR (r.scope = 'campaign' AND s.campaign = r.scope_id)
    OR (r.scope = 'brand' AND s.brand = r.scope_id)
    OR (r.scope = 'account' AND s.account = r.scope_id);

GRANT SELECT ON throttle.contact_rule, throttle.contact_rule_state TO PUBLIC;
GRANT SELECT ON throttle.pool, throttle.pool_line TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.pending_assign_pool() FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.pool_headroom(text, text, text, text) FROM PUBLIC;
COMMENT ON TABLE throttle.pool IS 'Sticky number pools: a message naming a pool goes through its recipient''s line';
COMMENT ON TABLE throttle.pool_line IS 'The lines (senders) of each pool';
COMMENT ON TABLE throttle.pool_assignment IS 'Each recipient''s line in each pool (and the line before a reassignment)';
COMMENT ON FUNCTION throttle.pending_assign_pool() IS 'Internal: the line of a message named by its pool (the recipient''s, or the one with the most headroom)';
COMMENT ON FUNCTION throttle.pool_headroom(text, text, text, text) IS 'The lines of a pool in the order a new recipient''s first message picks them: room under new-contact caps, wait behind what each has queued at its own rate, recipients taken on in 24 hours';
COMMENT ON FUNCTION throttle.enqueue_pool(text, text, text, jsonb, text, integer, smallint, timestamptz, timestamptz) IS 'Enqueue one message through a sticky pool; returns its id';
COMMENT ON FUNCTION throttle.throttle_admit(text, text, timestamptz, integer, text, text) IS
    'throttle_admit() of a message to a recipient: the line''s contact rules first (at ts, under the line''s lock), counted with the admission';
COMMENT ON FUNCTION throttle.plan_lines(text, bigint, bigint) IS 'Lines like a sender needed for a volume of new and follow-up contacts a day under its contact rules';
REVOKE ALL ON FUNCTION throttle.inbound_for(text, text, timestamptz, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION throttle.inbound_for(text, text, timestamptz, text, bigint) TO PUBLIC;
COMMENT ON TABLE throttle.contact_rule IS 'Conversation-aware limits of each line: new and follow-up contacts per day or rolling window, unanswered messages per contact, consecutive outbound per line, messages per recipient (pair rate); over one, hold or refuse';
COMMENT ON TABLE throttle.inbound_message IS 'Inbound messages recorded by the provider''s message id (a retried webhook counts once), kept a week';
COMMENT ON TABLE throttle.contact_inbound IS 'Each contact''s last inbound message to each line';
COMMENT ON TABLE throttle.contact_sent IS 'What each line sent each contact, as the contact rules count it (written by the worker)';
COMMENT ON TABLE throttle.line_sent IS 'Each line''s consecutive outbound messages since its last inbound one (written by the worker)';
COMMENT ON VIEW throttle.contact_rule_state IS 'Every contact rule per line it applies to: contacts counted in its window (or the line streak) and messages it holds';
COMMENT ON FUNCTION throttle.inbound(text, text, timestamptz, text) IS 'Record an inbound message to a line: opens the reply window, resets streaks, lets go messages held for a reply; idempotent on the provider''s message id';
COMMENT ON FUNCTION throttle.inbound_for(text, text, timestamptz, text, bigint) IS 'Internal: inbound() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.until_reply() IS 'The not_before of a message held until the recipient (or for a line streak, anyone) writes';
COMMENT ON FUNCTION throttle.line_lock_key(text) IS 'Internal: the advisory lock key of a line with contact rules (admissions and inbound messages wait for it; the worker only tries it)';
COMMENT ON FUNCTION throttle.check_contact_rule() IS 'Internal: validates throttle.contact_rule rows (22023 with a hint)';
COMMENT ON TYPE throttle.contact_rule_kind IS 'What a contact rule limits';
COMMENT ON TYPE throttle.contact_action IS 'What the worker does with a message over a contact rule: hold (until the reset or a reply) or refuse (dead-letter)';

-- Delivery (sql/delivery.sql): consumers see what is in flight and what was sent of their own
-- senders (row-level security), and change it only through read(), ack() and extend().
GRANT SELECT ON throttle.inflight, throttle.sent, throttle.delivery_state TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.note_inflight_due(timestamptz) FROM PUBLIC;
COMMENT ON TABLE throttle.inflight IS 'Messages read with throttle.read() and not yet acknowledged, or failed and waiting for their retry (visible_at: back to their queue then)';
COMMENT ON TABLE throttle.attempt IS 'Attempts of messages that went back to their queue after a failed or missing acknowledgement';
COMMENT ON TABLE throttle.sent IS 'What was sent: every message acknowledged as sent, with the provider''s message id (pruned after throttle.sent_retention)';
COMMENT ON VIEW throttle.delivery_state IS 'Per sender: messages in flight, waiting for a retry, and sent in the last hour';
COMMENT ON FUNCTION throttle.read(integer, interval) IS 'Read up to n released messages, yours for the visibility timeout: acknowledge each with ack(), or it goes back to its queue';
COMMENT ON FUNCTION throttle.ack(bigint, text, text, text, interval, integer) IS 'Acknowledge a message read with read(): sent, failed (retried after a back-off, dead after throttle.max_attempts) or rejected (dead); returns sent, retry, dead or stale';
COMMENT ON FUNCTION throttle.ack_many(bigint[], text[], text[], text[]) IS 'Acknowledge many messages in one statement (one outcome for all, or one per id)';
COMMENT ON FUNCTION throttle.extend(bigint, interval) IS 'Keep a message in flight for longer (from now)';
COMMENT ON FUNCTION throttle.read_for(integer, interval, bigint) IS 'Internal: read() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.ack_for(bigint, text, text, text, interval, integer, bigint) IS 'Internal: ack() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.extend_for(bigint, interval, bigint) IS 'Internal: extend() as the owner, for the role its ticket names';
COMMENT ON FUNCTION throttle.ack_sent_for(bigint[], text[], bigint) IS 'Internal: ack_many() of the messages sent, in one statement, as the owner for the role its ticket names';
COMMENT ON FUNCTION throttle.note_inflight_due(timestamptz) IS 'Internal: wakes the release worker for a message in flight that falls due sooner than it knew';

-- Provider feedback (sql/feedback.sql): rules are configuration (read by all), the state of
-- slowed limits and held scopes is monitoring (read by all); only ack() changes them.
GRANT SELECT ON throttle.feedback_rule, throttle.limit_feedback, throttle.feedback_hold TO PUBLIC;
REVOKE ALL ON FUNCTION throttle.feedback_for(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION throttle.feedback_step() FROM PUBLIC;
COMMENT ON TABLE throttle.feedback_rule IS 'What a provider''s error code on a failed message does: slow the limit it came through (then recover), hold its scope until the reset, or nothing (ignore)';
COMMENT ON TABLE throttle.limit_feedback IS 'Rate limits slowed by provider errors: the configured rate, the rate now, why, and when it comes back';
COMMENT ON TABLE throttle.feedback_hold IS 'Scopes held until their reset by a "done for the day" provider error (each a calendar cap of 1 already used)';
COMMENT ON TYPE throttle.feedback_action IS 'What a feedback rule does: slow_down, hold_until_reset, or ignore (turn a shipped rule off)';
COMMENT ON FUNCTION throttle.feedback_for(text, text, text, text) IS 'Internal: what the feedback rules do about an error code on a failed message (from ack())';
COMMENT ON FUNCTION throttle.feedback_step() IS 'Internal: the release worker''s recovery steps of slowed limits and ends of holds';
COMMENT ON FUNCTION throttle.check_feedback_rule() IS 'Internal: validates throttle.feedback_rule rows (22023 with a hint)';

-- Configuration as code (src/config_doc.rs): anyone may export what they may read; only the
-- owner (or whom the owner grants it) imports.
REVOKE ALL ON FUNCTION throttle.import_config(jsonb, boolean) FROM PUBLIC;
COMMENT ON FUNCTION throttle.export_config() IS 'The whole configuration (senders, account roles, rate limits, caps with exemptions, queue caps, contact rules, pools with lines, your feedback rules) as one JSON document';
COMMENT ON FUNCTION throttle.import_config(jsonb, boolean) IS 'Make the configuration what a document of export_config() says, in one transaction (dry_run: only say what would change); rows that did not change are not touched';

-- The contact filter (src/contact_filter.rs).
COMMENT ON FUNCTION throttle.contact_seen() IS 'Internal: adds each row written to the contact tables to the filter of recipients seen (src/contact_filter.rs)';
COMMENT ON FUNCTION throttle.contact_filter() IS 'The filter that spares admissions with contact rules a read for recipients never seen on a line: ready (for this database), size, bits set, estimated false-positive rate';
