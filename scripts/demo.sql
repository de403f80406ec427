-- The demo run by scripts/demo.sh: real provider profiles, a realistic burst released live,
-- "why is it waiting", capacity planning, and per-second figures for the chart.
\set QUIET on
\pset footer off
SET client_min_messages = warning;
-- A fresh start each run: the last run's messages go with the extension.
SET throttle.drop_with_messages = on;
DROP EXTENSION IF EXISTS pg_throttle CASCADE;
RESET throttle.drop_with_messages;
DROP TABLE IF EXISTS public.demo_release;
CREATE EXTENSION pg_throttle;

\echo
\echo '== Senders: three Sendblue iMessage lines, and a Twilio short code in an AT&T class-E campaign of brand acme'
INSERT INTO throttle.sender (sender, campaign, brand, account, sender_type) VALUES
    ('+12125550101', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('+12125550102', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('+12125550103', NULL, NULL, 'acme-sendblue', 'imessage'),
    ('55501', 'CAMP-E1', 'acme', 'acme-twilio', 'short_code');

\echo '== Profiles: one call each, from the providers'' published rules shipped with the extension'
SELECT p.kind, p.name, p.created
  FROM unnest(ARRAY['+12125550101', '+12125550102', '+12125550103']) s(line),
       throttle.apply_profile('sendblue_line', 'sender', s.line) p
UNION ALL SELECT kind, name, created FROM throttle.apply_profile('twilio_short_code', 'sender', '55501')
UNION ALL SELECT kind, name, created FROM throttle.apply_profile('att_10dlc', 'campaign', 'CAMP-E1', 'E')
UNION ALL SELECT kind, name, created FROM throttle.apply_profile('tmobile_brand', 'brand', 'acme', 'low');
\echo '   (applying a profile again changes nothing; its rows can be edited afterwards)'
-- A demo-sized T-Mobile day: the brand's 2,000 would take 20 s at the short code's 100 MPS;
-- 600 shows the cap and the over-cap deferral in a few seconds.
UPDATE throttle.cap SET cap = 600 WHERE scope_id = 'acme';
SELECT name, scope, scope_id, coalesce(carrier, '*') AS carrier, coalesce(channel, '*') AS channel, rate, per, burst
  FROM throttle.rate_limit ORDER BY limit_id;
SELECT name, cap, period, reset_at, time_zone, at_cap, local_time FROM throttle.cap;
SELECT name, scope_id, max_waiting, error_code FROM throttle.queue_cap;
-- The worker counts what waits under each queue cap before the first enqueue.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM throttle.queue_cap_state WHERE NOT counted);
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

SELECT now() AS t0 \gset
\echo
\echo '== A burst: 15 iMessages on each line, 400 SMS to AT&T and 700 to T-Mobile from the short code'
\echo '   (recipients in New York, Los Angeles, Chicago and Honolulu), and one OTP at priority 10'
INSERT INTO throttle.pending (sender, carrier, channel, recipient, payload)
SELECT s.sender, 'verizon', 'imessage', '+1646555' || lpad(g::text, 4, '0'), jsonb_build_object('text', 'hello ' || g)
  FROM unnest(ARRAY['+12125550101', '+12125550102', '+12125550103']) s(sender), generate_series(1, 15) g;
INSERT INTO throttle.pending (sender, carrier, channel, recipient, payload)
SELECT '55501', 'att', 'sms', '+1312555' || lpad(g::text, 4, '0'), jsonb_build_object('text', 'sale ' || g)
  FROM generate_series(1, 400) g;
INSERT INTO throttle.pending (sender, carrier, channel, recipient, payload)
SELECT '55501', 'tmobile', 'sms',
       (ARRAY['+1212', '+1213', '+1312', '+1808'])[1 + g % 4] || '555' || lpad(g::text, 4, '0'),
       jsonb_build_object('text', 'sale ' || g)
  FROM generate_series(1, 700) g;
SELECT throttle.enqueue('55501', 'att', '+12125559999', '{"otp": "123456"}', priority => 10::int2) AS otp_id \gset

\echo '== Released live, per limit (released / still waiting)'
SET client_min_messages = notice;
DO $$
DECLARE
    i int;
    r record;
BEGIN
    FOR i IN 1..12 LOOP
        PERFORM pg_sleep(1);
        SELECT count(*) FILTER (WHERE sender LIKE '+121255501__') AS lines,
               count(*) FILTER (WHERE sender = '55501' AND carrier = 'att') AS att,
               count(*) FILTER (WHERE sender = '55501' AND carrier = 'tmobile') AS tmo
          INTO r FROM throttle.ready;
        RAISE NOTICE 't+%s  Sendblue lines 3 x 1/s: %/45   AT&T class E 240/min: %/401   T-Mobile brand cap 600/day: %/700',
            lpad(i::text, 2), lpad(r.lines::text, 2), lpad(r.att::text, 3), lpad(r.tmo::text, 3);
    END LOOP;
END $$;
SET client_min_messages = warning;

\echo
\echo '== Summary per limit: released, still waiting, and the busiest second'
WITH per_second AS (
    SELECT CASE WHEN sender LIKE '+121255501__' THEN 'Sendblue line ' || right(sender, 4) || ' (1/s)'
                WHEN carrier = 'att' THEN 'AT&T class E, CAMP-E1 (240 in any minute)'
                ELSE 'T-Mobile, brand acme (600/day; short code 100 MPS)' END AS series,
           date_trunc('second', released_at) AS s, count(*) AS n
      FROM throttle.ready GROUP BY 1, 2)
SELECT series, sum(n) AS released, max(n) AS busiest_second FROM per_second GROUP BY 1 ORDER BY 1;
SELECT sender, carrier, waiting, held_until_later FROM throttle.queue_state ORDER BY 1, 2;

\echo '== The OTP went first, ahead of the 400 sale SMS queued before it'
SELECT id, released_at - enqueued_at AS waited,
       (SELECT count(*) FROM throttle.ready r WHERE r.carrier = 'att' AND r.released_at < x.released_at) AS released_before_it
  FROM throttle.ready x WHERE id = :otp_id;

\echo '== The T-Mobile cap: 600 released today; the rest waits for 08:00 local time after midnight Pacific'
SELECT name, used, percent, window_end AS resets_at FROM throttle.cap_state;
SELECT throttle.area_code(recipient) AS area_code, count(*) AS waiting,
       min(not_before) AT TIME ZONE 'UTC' AS goes_at_utc
  FROM throttle.pending WHERE carrier = 'tmobile' GROUP BY 1 ORDER BY 3;

\echo '== Why is it waiting? The last AT&T message:'
SELECT kind, name, ready_at, holds FROM throttle.explain(
    (SELECT max(id) FROM throttle.pending WHERE carrier = 'att'));
\echo '== And per queue of the short code:'
SELECT carrier, waiting, head_ready_at, last_ready_at, held_by FROM throttle.explain_sender('55501');

\echo '== Capacity planning: 100,000 iMessages from a Sendblue line, and how many lines for an 8-hour day'
SELECT limit_name, volume, time_needed, senders_needed, note
  FROM throttle.plan_capacity('+12125550101', 100000, ARRAY['verizon'], channel => 'imessage', deadline => '8 hours');
\echo '== And 20,000 SMS from the short code, half to AT&T, by the end of the hour'
SELECT limit_name, volume, time_needed, senders_needed, note
  FROM throttle.plan_capacity('55501', 20000, ARRAY['att', 'tmobile'], deadline => '1 hour');

\echo '== The worker'
SELECT pid, healthy, ticks, released, queues, late_ms, released_per_s FROM throttle.worker_state();

-- Figures for the chart (scripts/demo.sh reads this table): at each second, what each limit
-- counted over its own period ending then (the last second, or the last minute), against
-- what it allows in that period. Every bar at or under its line: no window broke a limit.
CREATE TABLE public.demo_release AS
WITH series(series, pred, lim, per) AS (VALUES
    ('Sendblue line 0101: 1 in any second', 'line0101', 1, 1),
    ('AT&T class E, campaign CAMP-E1: 240 in any minute', 'att', 240, 60),
    ('T-Mobile via the short code: 100 segments in any second (cap 600/day)', 'tmo', 100, 1)),
released AS (
    SELECT extract(epoch FROM released_at - :'t0'::timestamptz) AS at,
           CASE WHEN sender = '+12125550101' THEN 'line0101'
                WHEN sender = '55501' AND carrier = 'att' THEN 'att'
                WHEN sender = '55501' AND carrier = 'tmobile' THEN 'tmo' END AS pred,
           cost
      FROM throttle.ready)
SELECT g.second, s.series,
       (SELECT coalesce(sum(r.cost), 0) FROM released r
         WHERE r.pred = s.pred AND r.at >= g.second + 1 - s.per AND r.at < g.second + 1) AS released,
       s.lim AS "limit"
  FROM generate_series(0, 12) g(second)
 CROSS JOIN series s
 ORDER BY s.series, g.second;
