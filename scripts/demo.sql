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
