-- Workspaces and the tenant tables, each under forced row-level security.
--
-- Every table holding a workspace's data has a workspace_id column and the two policies that
-- numail_protect_tenant_table() creates; tests/integration/test_db_rls.py finds such tables in
-- the catalog, so a new table without them fails the tests. References between tenant tables
-- include workspace_id, so a row can never point at another workspace's row.

-- The registry: one row per Workspace custom resource, id = the resource's metadata.uid.
-- parent_id is the structure (spec.parent); workspace_parents below is the access grant.
CREATE TABLE workspaces (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    parent_id uuid REFERENCES workspaces (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workspaces_not_own_parent CHECK (parent_id <> id),
    CONSTRAINT workspaces_id_parent_key UNIQUE (id, parent_id)
);

-- One row per sub-workspace whose spec.parentAccess is read or manage; the operator inserts and
-- deletes it as the Workspace changes. Its presence is what lets the agency read the child's
-- rows: both levels grant SELECT only, writes for "manage" go through the operator.
CREATE TABLE workspace_parents (
    workspace_id uuid PRIMARY KEY,
    parent_id uuid NOT NULL,
    access text NOT NULL CHECK (access IN ('read', 'manage')),
    FOREIGN KEY (workspace_id, parent_id) REFERENCES workspaces (id, parent_id)
        ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX workspace_parents_parent ON workspace_parents (parent_id);

-- Applies the isolation policy and the agency read policy to a tenant table. Later migrations
-- call it for each new tenant table.
CREATE FUNCTION numail_protect_tenant_table(tbl regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format(
        'CREATE POLICY workspace_isolation ON %s '
        'USING (workspace_id = numail_current_workspace()) '
        'WITH CHECK (workspace_id = numail_current_workspace())', tbl);
    EXECUTE format(
        'CREATE POLICY agency_reads_children ON %s FOR SELECT '
        'USING (workspace_id IN (SELECT wp.workspace_id FROM workspace_parents wp '
        'WHERE wp.parent_id = numail_current_workspace()))', tbl);
END
$$;
REVOKE ALL ON FUNCTION numail_protect_tenant_table(regclass) FROM PUBLIC;

-- The registry: a workspace sees itself and the children that granted it access. The operator
-- sees every row, because it mirrors the cluster-scoped Workspace resources it lists anyway and
-- must find every workspace to sign digests; it still writes only inside one workspace's scope.
ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;
CREATE POLICY workspace_isolation ON workspaces
    USING (id = numail_current_workspace())
    WITH CHECK (id = numail_current_workspace());
CREATE POLICY agency_reads_children ON workspaces FOR SELECT
    USING (id IN (SELECT wp.workspace_id FROM workspace_parents wp
                  WHERE wp.parent_id = numail_current_workspace()));
CREATE POLICY operator_reads_registry ON workspaces FOR SELECT TO numail_operator
    USING (true);

-- workspace_parents can't use numail_protect_tenant_table(): a policy on it that queried it
-- would recurse. The same rule, spelled directly: the child owns the row, the parent reads it.
ALTER TABLE workspace_parents ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace_parents FORCE ROW LEVEL SECURITY;
CREATE POLICY workspace_isolation ON workspace_parents
    USING (workspace_id = numail_current_workspace())
    WITH CHECK (workspace_id = numail_current_workspace());
CREATE POLICY agency_reads_children ON workspace_parents FOR SELECT
    USING (parent_id = numail_current_workspace());

-- A reference to a Mailbox resource (id = its metadata.uid). Credentials never leave Kubernetes.
CREATE TABLE mailboxes (
    id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    namespace text NOT NULL,
    name text NOT NULL,
    provider text NOT NULL CHECK (provider IN ('gmail', 'microsoft365', 'smtp')),
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'connected', 'verified', 'disconnected')),
    daily_cap integer NOT NULL DEFAULT 50 CHECK (daily_cap >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, id),
    UNIQUE (workspace_id, namespace, name)
);

-- email_hash is numail.audit.hash_identifier(workspace key, email): suppression matches on it,
-- so erasing a lead keeps its suppression entry without keeping the address.
CREATE TABLE leads (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    email text NOT NULL,
    email_hash text NOT NULL CHECK (email_hash ~ '^[0-9a-f]{64}$'),
    first_name text,
    last_name text,
    company text,
    attributes jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'replied', 'bounced', 'unsubscribed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, id),
    UNIQUE (workspace_id, email_hash)
);

CREATE TABLE sequences (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name text NOT NULL,
    state text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'active', 'paused', 'archived')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, id),
    UNIQUE (workspace_id, name)
);

CREATE TABLE sequence_steps (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    sequence_id uuid NOT NULL,
    position integer NOT NULL CHECK (position >= 1),
    delay_seconds integer NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
    subject_template text NOT NULL,
    body_template text NOT NULL,
    PRIMARY KEY (workspace_id, sequence_id, position),
    FOREIGN KEY (workspace_id, sequence_id) REFERENCES sequences (workspace_id, id)
        ON DELETE CASCADE
);

-- One email to send: a lead at one step of a sequence, from one mailbox. message_id is fixed
-- when the job is created, before the first attempt, so an attempt whose outcome is unknown can
-- be settled by asking the provider for that Message-ID. A claim holds a lease (lease_owner,
-- lease_until) that a heartbeat extends; an expired lease may be claimed again.
CREATE TABLE send_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    mailbox_id uuid NOT NULL,
    lead_id uuid NOT NULL,
    sequence_id uuid NOT NULL,
    step integer NOT NULL,
    scheduled_at timestamptz NOT NULL,
    state text NOT NULL DEFAULT 'scheduled'
        CHECK (state IN ('scheduled', 'claimed', 'unknown', 'sent', 'failed', 'cancelled')),
    message_id text NOT NULL,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_owner text,
    lease_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT send_jobs_claim_has_lease
        CHECK (state <> 'claimed' OR (lease_owner IS NOT NULL AND lease_until IS NOT NULL)),
    UNIQUE (workspace_id, id),
    UNIQUE (workspace_id, message_id),
    UNIQUE (workspace_id, lead_id, sequence_id, step),
    FOREIGN KEY (workspace_id, mailbox_id) REFERENCES mailboxes (workspace_id, id),
    FOREIGN KEY (workspace_id, lead_id) REFERENCES leads (workspace_id, id) ON DELETE CASCADE,
    FOREIGN KEY (workspace_id, sequence_id, step)
        REFERENCES sequence_steps (workspace_id, sequence_id, position)
);
CREATE INDEX send_jobs_due ON send_jobs (scheduled_at) WHERE state = 'scheduled';
CREATE INDEX send_jobs_lease ON send_jobs (lease_until) WHERE state = 'claimed';
CREATE INDEX send_jobs_mailbox_day ON send_jobs (workspace_id, mailbox_id, updated_at)
    WHERE state = 'sent';

CREATE TABLE sent_messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    send_job_id uuid NOT NULL UNIQUE,
    mailbox_id uuid NOT NULL,
    lead_id uuid NOT NULL,
    message_id text NOT NULL,
    provider_message_id text,
    sent_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, id),
    UNIQUE (workspace_id, message_id),
    FOREIGN KEY (workspace_id, send_job_id) REFERENCES send_jobs (workspace_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (workspace_id, mailbox_id) REFERENCES mailboxes (workspace_id, id),
    FOREIGN KEY (workspace_id, lead_id) REFERENCES leads (workspace_id, id) ON DELETE CASCADE
);

-- Inbound mail matched (or not) to a sent message: a real reply, an RFC 3834 auto-reply or an
-- RFC 3464 bounce.
CREATE TABLE replies (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    mailbox_id uuid NOT NULL,
    sent_message_id uuid,
    lead_id uuid,
    message_id text NOT NULL,
    in_reply_to text,
    kind text NOT NULL CHECK (kind IN ('reply', 'auto_reply', 'bounce')),
    bounce_type text CHECK (bounce_type IN ('hard', 'soft')),
    received_at timestamptz NOT NULL,
    CONSTRAINT replies_bounce_type_iff_bounce CHECK ((kind = 'bounce') = (bounce_type IS NOT NULL)),
    UNIQUE (workspace_id, mailbox_id, message_id),
    FOREIGN KEY (workspace_id, mailbox_id) REFERENCES mailboxes (workspace_id, id),
    FOREIGN KEY (workspace_id, sent_message_id) REFERENCES sent_messages (workspace_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (workspace_id, lead_id) REFERENCES leads (workspace_id, id) ON DELETE CASCADE
);

CREATE TABLE suppression_entries (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    email_hash text NOT NULL CHECK (email_hash ~ '^[0-9a-f]{64}$'),
    reason text NOT NULL
        CHECK (reason IN ('unsubscribe', 'hard_bounce', 'complaint', 'manual', 'erasure')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, email_hash)
);

SELECT numail_protect_tenant_table(t)
FROM unnest(ARRAY['mailboxes', 'leads', 'sequences', 'sequence_steps', 'send_jobs',
                  'sent_messages', 'replies', 'suppression_entries']::regclass[]) AS t;

-- Privileges: the operator maintains the registry and mailbox references; the workers own the
-- sending data; readonly reads. Row-level security narrows each to one workspace.
GRANT SELECT ON workspaces, workspace_parents, mailboxes, leads, sequences, sequence_steps,
    send_jobs, sent_messages, replies, suppression_entries
    TO numail_operator, numail_worker, numail_readonly;
GRANT INSERT, UPDATE, DELETE ON workspaces, workspace_parents, mailboxes TO numail_operator;
GRANT INSERT, UPDATE, DELETE ON leads, sequences, sequence_steps, send_jobs, sent_messages,
    replies, suppression_entries TO numail_worker;
