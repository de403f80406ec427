-- The demo run by scripts/demo.sh: real provider limits, admitted and refused.
\set QUIET on
\pset footer off
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_throttle CASCADE;
CREATE EXTENSION pg_throttle;

\echo
\echo '== Senders: three Sendblue iMessage lines and a Twilio short code in an AT&T class-E campaign'
INSERT INTO throttle.sender (sender, campaign, brand, account, sender_type) VALUES
    ('+12125550101', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('+12125550102', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('+12125550103', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('55501', 'CAMP-E1', 'acme', 'acme-twilio', 'short_code');

INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst) VALUES
    ('sendblue line 0101: 1/s', 'sender', '+12125550101', 1, '1 second', 1),
    ('sendblue line 0102: 1/s', 'sender', '+12125550102', 1, '1 second', 1),
    ('sendblue line 0103: 1/s', 'sender', '+12125550103', 1, '1 second', 1),
    ('twilio short code 55501: 100 MPS', 'sender', '55501', 100, '1 second', 100);
INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, channel, rate, per, burst) VALUES
    ('AT&T class E, CAMP-E1: 240 SMS/min', 'campaign', 'CAMP-E1', 'att', 'sms', 240, '1 minute', 240),
    ('AT&T class E, CAMP-E1: 150 MMS/min', 'campaign', 'CAMP-E1', 'att', 'mms', 150, '1 minute', 150);
INSERT INTO throttle.rate_limit (name, scope, scope_id, sender_type, channel, rate, per) VALUES
    ('twilio account: SMS short code 500 MPS', 'account', 'acme-twilio', 'short_code', 'sms', 500, '1 second');
SELECT name, scope, scope_id, coalesce(carrier, '*') AS carrier, coalesce(channel, '*') AS channel,
       rate, per, burst
  FROM throttle.rate_limit ORDER BY limit_id;

\echo '== One iMessage line, five messages in the same instant: one goes, four are told when'
SELECT n, a.admitted, to_char(a.retry_at - t.ts, 'SS.MS "s later"') AS retry_in, a.blocked_by
  FROM (SELECT clock_timestamp() AS ts) t,
       generate_series(1, 5) n,
       LATERAL throttle.throttle_admit('+12125550101', 'tmobile', t.ts, 1, 'imessage') a;

\echo '== The short code sends 3-segment SMS to AT&T: the campaign allows 240 segments a minute'
SELECT count(*) FILTER (WHERE a.admitted) AS admitted,
       count(*) FILTER (WHERE NOT a.admitted) AS refused,
       min(a.blocked_by) AS blocked_by,
       to_char(min(a.retry_at) - min(t.ts), 'SS.MS "s later"') AS next_room_in
  FROM (SELECT clock_timestamp() AS ts) t,
       generate_series(1, 100) n,
       LATERAL throttle.throttle_admit('55501', 'att', t.ts, 3, 'sms') a;

\echo '== The same short code to T-Mobile is not held by the AT&T campaign limit (only by its own 100 MPS)'
SELECT count(*) FILTER (WHERE throttle.try_admit('55501', 'tmobile', t.ts, 1, 'sms')) AS admitted_of_150
  FROM (SELECT clock_timestamp() AS ts) t, generate_series(1, 150);

\echo '== Three lines sending for 3 seconds as fast as they ask: each gets 1 per second'
CREATE TEMP TABLE sent AS
SELECT s.sender, g AS attempt, t.ts
  FROM generate_series(0, 299) g,
       LATERAL (SELECT clock_timestamp() + (g * interval '10 ms') AS ts) t,
       unnest(ARRAY['+12125550101', '+12125550102', '+12125550103']) s(sender)
 WHERE throttle.try_admit(s.sender, 'verizon', t.ts, 1, 'imessage');
SELECT sender, count(*) AS admitted_in_3s FROM sent GROUP BY sender ORDER BY sender;

\echo '== Limits are data: raise line 0103 to 5/s, no restart; the bucket keeps its state'
UPDATE throttle.rate_limit SET rate = 5, burst = 5 WHERE scope_id = '+12125550103';
SELECT count(*) FILTER (WHERE throttle.try_admit('+12125550103', 'verizon', t.ts + g * interval '10 ms', 1, 'imessage'))
       AS admitted_in_next_second
  FROM (SELECT clock_timestamp() + interval '3 s' AS ts) t, generate_series(0, 99) g;

\echo '== Every limit right now'
SELECT name, available, burst, in_memory FROM throttle.limit_state ORDER BY limit_id;

\echo
\echo '== The release queue: 30 messages enqueued at once for the three lines (1/s each) and 200'
\echo '   for the short code (AT&T campaign 240 SMS/min, burst 240); the worker releases them'
\echo '   exactly as fast as the limits allow'
UPDATE throttle.rate_limit SET rate = 1, burst = 1 WHERE scope_id = '+12125550103';
INSERT INTO throttle.pending (sender, carrier, channel, recipient, payload)
SELECT s.sender, 'tmobile', 'imessage', '+1646555' || lpad(g::text, 4, '0'), jsonb_build_object('text', 'hello ' || g)
  FROM unnest(ARRAY['+12125550101', '+12125550102', '+12125550103']) s(sender), generate_series(1, 10) g;
INSERT INTO throttle.pending (sender, carrier, channel, cost, priority, recipient, payload)
SELECT '55501', 'att', 'sms', 1, 0, '+1212555' || lpad(g::text, 4, '0'), jsonb_build_object('text', 'sale ' || g)
  FROM generate_series(1, 200) g;
SELECT throttle.enqueue('55501', 'att', '+12125559999', '{"otp": "123456"}', priority => 10::int2) AS otp_id;

DO $$
DECLARE
    i int;
    r record;
BEGIN
    FOR i IN 1..6 LOOP
        PERFORM pg_sleep(1);
        SELECT count(*) FILTER (WHERE sender LIKE '+1212%') AS lines,
               count(*) FILTER (WHERE sender = '55501') AS short_code
          INTO r FROM throttle.ready;
        RAISE NOTICE 't+%s s: released % of 30 iMessages (3 lines x 1/s), % of 201 SMS (campaign limit)',
            i, r.lines, r.short_code;
    END LOOP;
END $$;

\echo '== Released per line and second: never more than the limit'
SELECT sender, date_trunc('second', released_at) AS second, count(*)
  FROM throttle.ready WHERE sender LIKE '+1212%'
 GROUP BY 1, 2 ORDER BY 2, 1 LIMIT 12;
\echo '== The OTP (priority 10) passed the sale messages queued before it'
SELECT id, payload, released_at - enqueued_at AS waited FROM throttle.ready WHERE payload ? 'otp';
\echo '== The worker'
SELECT pid, ticks, released, queues, last_lag_ms FROM throttle.worker_state();
\echo '== Consume: take 5 released messages (a sender process would send them)'
SELECT id, sender, recipient, payload FROM throttle.take(5);
