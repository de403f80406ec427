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
-- (The call sits in the inner target list, so it runs once per message; OFFSET 0 keeps the
-- planner from expanding (a).* into one call per column.)
SELECT n, (a).admitted, to_char((a).retry_at - ts, 'SS.MS "s later"') AS retry_in, (a).blocked_by
  FROM (SELECT n, ts, throttle.throttle_admit('+12125550101', 'tmobile', ts, 1, 'imessage') AS a
          FROM (SELECT clock_timestamp() AS ts) t, generate_series(1, 5) n OFFSET 0) x;

\echo '== The short code sends 100 three-segment SMS to AT&T in one instant: its own 100 segments/s lets 33 go'
SELECT count(*) FILTER (WHERE (a).admitted) AS admitted,
       count(*) FILTER (WHERE NOT (a).admitted) AS refused,
       min((a).blocked_by) AS blocked_by
  FROM (SELECT throttle.throttle_admit('55501', 'att', ts, 3, 'sms') AS a
          FROM (SELECT clock_timestamp() AS ts) t, generate_series(1, 100) n OFFSET 0) x;

\echo '== It keeps asking every 10 ms for 5 s: now the AT&T class-E campaign (240 segments/min) holds it'
SELECT count(*) FILTER (WHERE (a).admitted) AS admitted,
       count(*) FILTER (WHERE NOT (a).admitted) AS refused,
       mode() WITHIN GROUP (ORDER BY (a).blocked_by) AS mostly_blocked_by
  FROM (SELECT throttle.throttle_admit('55501', 'att', ts + n * interval '10 ms', 3, 'sms') AS a
          FROM (SELECT clock_timestamp() AS ts) t, generate_series(1, 500) n OFFSET 0) x;

\echo '== The same short code to T-Mobile, 6 s later: the AT&T campaign limit does not apply, its own 100/s does'
SELECT count(*) FILTER (WHERE throttle.try_admit('55501', 'tmobile', t.ts + interval '6 s', 1, 'sms')) AS admitted_of_150
  FROM (SELECT clock_timestamp() AS ts) t, generate_series(1, 150);

\echo '== Three lines asking every 10 ms for 3 seconds (from 7 s on): each gets its burst of 1, then 1 per second'
CREATE TEMP TABLE sent AS
SELECT s.sender, g AS attempt, t.ts
  FROM generate_series(0, 299) g,
       LATERAL (SELECT clock_timestamp() + interval '7 s' + (g * interval '10 ms') AS ts) t,
       unnest(ARRAY['+12125550101', '+12125550102', '+12125550103']) s(sender)
 WHERE throttle.try_admit(s.sender, 'verizon', t.ts, 1, 'imessage');
SELECT sender, count(*) AS admitted_in_3s FROM sent GROUP BY sender ORDER BY sender;

\echo '== Limits are data: raise line 0103 to 5/s, no restart; the bucket keeps its state'
UPDATE throttle.rate_limit SET rate = 5, burst = 5 WHERE scope_id = '+12125550103';
SELECT count(*) FILTER (WHERE throttle.try_admit('+12125550103', 'verizon', t.ts + g * interval '10 ms', 1, 'imessage'))
       AS admitted_in_next_second
  FROM (SELECT clock_timestamp() + interval '10 s' AS ts) t, generate_series(0, 99) g;

\echo '== Every limit right now'
SELECT name, available, burst, in_memory FROM throttle.limit_state ORDER BY limit_id;

\echo
\echo '== The release queue: three more iMessage lines (1/s each) get 10 messages each, and a second'
\echo '   short code in another class-E campaign (240 SMS/min, burst 240) gets 300 sale SMS and then one'
\echo '   OTP at priority 10; the worker releases them exactly as fast as the limits allow'
INSERT INTO throttle.sender (sender, campaign, brand, account, sender_type) VALUES
    ('+12125550111', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('+12125550112', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('+12125550113', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('55502', 'CAMP-E2', 'acme', 'acme-twilio-2', 'short_code');
INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, channel, rate, per, burst) VALUES
    ('sendblue line 0111: 1/s', 'sender', '+12125550111', NULL, NULL, 1, '1 second', 1),
    ('sendblue line 0112: 1/s', 'sender', '+12125550112', NULL, NULL, 1, '1 second', 1),
    ('sendblue line 0113: 1/s', 'sender', '+12125550113', NULL, NULL, 1, '1 second', 1),
    ('twilio short code 55502: 100 MPS', 'sender', '55502', NULL, NULL, 100, '1 second', 100),
    ('AT&T class E, CAMP-E2: 240 SMS/min', 'campaign', 'CAMP-E2', 'att', 'sms', 240, '1 minute', 240);
INSERT INTO throttle.pending (sender, carrier, channel, recipient, payload)
SELECT s.sender, 'tmobile', 'imessage', '+1646555' || lpad(g::text, 4, '0'), jsonb_build_object('text', 'hello ' || g)
  FROM unnest(ARRAY['+12125550111', '+12125550112', '+12125550113']) s(sender), generate_series(1, 10) g;
INSERT INTO throttle.pending (sender, carrier, channel, recipient, payload)
SELECT '55502', 'att', 'sms', '+1212555' || lpad(g::text, 4, '0'), jsonb_build_object('text', 'sale ' || g)
  FROM generate_series(1, 300) g;
SELECT throttle.enqueue('55502', 'att', '+12125559999', '{"otp": "123456"}', priority => 10::int2) AS otp_id;

SET client_min_messages = notice;
DO $$
DECLARE
    i int;
    r record;
BEGIN
    FOR i IN 1..6 LOOP
        PERFORM pg_sleep(1);
        SELECT count(*) FILTER (WHERE sender LIKE '+121255501__') AS lines,
               count(*) FILTER (WHERE sender = '55502') AS short_code
          INTO r FROM throttle.ready;
        RAISE NOTICE 't+% s: released % of 30 iMessages (3 lines x 1/s), % of 301 SMS (burst 240, then 4/s)',
            i, r.lines, r.short_code;
    END LOOP;
END $$;
SET client_min_messages = warning;

\echo '== Released per line and second: never more than the limit'
SELECT sender, date_trunc('second', released_at) AS second, count(*)
  FROM throttle.ready WHERE sender LIKE '+121255501__'
 GROUP BY 1, 2 ORDER BY 2, 1 LIMIT 9;
\echo '== The OTP (priority 10) passed the 300 sale messages queued before it'
SELECT id, payload, released_at - enqueued_at AS waited,
       (SELECT count(*) FROM throttle.ready r WHERE r.sender = '55502' AND r.released_at < x.released_at) AS released_before_it
  FROM throttle.ready x WHERE payload ? 'otp';
\echo '== The worker'
SELECT pid, ticks, released, queues, last_lag_ms FROM throttle.worker_state();
\echo '== Consume: take 5 released messages (a sender process would send them)'
SELECT id, sender, recipient, payload FROM throttle.take(5);
