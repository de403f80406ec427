-- Tenants (optional): senders belong to accounts (throttle.sender.account), and a role acts
-- for the accounts this table maps it to, or that a role it is a member of is mapped to.
-- With no row here every role acts for every sender; with rows, row-level security limits
-- what a role enqueues into, reads from and consumes of throttle.pending, throttle.ready and
-- throttle.dead to its own senders, and throttle_admit / explain_sender refuse (42501) the
-- senders of other accounts. The owner and superusers act for every sender.
CREATE TABLE throttle.account_role (
    account text NOT NULL CHECK (account <> ''),
    role    name NOT NULL,
    PRIMARY KEY (account, role)
);
CREATE INDEX account_role_role_idx ON throttle.account_role (role);

-- Whether `role` acts for `sender` (for callers outside the policies; the policies below
-- spell the same test out, so that the planner evaluates "no tenant model" once per
-- statement rather than calling a function per row). Every name is qualified.
CREATE FUNCTION throttle.acts_for(role oid, sender text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (SELECT 1 FROM throttle.account_role)
        OR EXISTS (SELECT 1
                     FROM throttle.sender s
                     JOIN throttle.account_role a ON a.account = s.account
                     JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                    WHERE s.sender = $2
                      AND pg_catalog.pg_has_role($1, r.oid, 'MEMBER'))
$$;

ALTER TABLE throttle.pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE throttle.ready ENABLE ROW LEVEL SECURITY;
ALTER TABLE throttle.dead ENABLE ROW LEVEL SECURITY;
-- The current role acts for the row's sender (or no tenant model is configured).
CREATE POLICY own_senders ON throttle.pending
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = pending.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')))
    WITH CHECK (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = pending.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));
CREATE POLICY own_senders ON throttle.ready
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = ready.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));
CREATE POLICY own_senders ON throttle.dead
    USING (NOT EXISTS (SELECT 1 FROM throttle.account_role)
            OR EXISTS (SELECT 1
                         FROM throttle.sender s
                         JOIN throttle.account_role a ON a.account = s.account
                         JOIN pg_catalog.pg_roles r ON r.rolname = a.role
                        WHERE s.sender = dead.sender
                          AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));

SELECT pg_catalog.pg_extension_config_dump('throttle.account_role', '');
