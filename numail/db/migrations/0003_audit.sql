-- The audit trail: append-only, hash-chained per workspace, with signed digests of the heads.
--
-- numail/db/chain.py defines the hash of a row; numail/db/audit.py appends and verifies. The
-- database enforces what it can without knowing the encoding: rows are never changed or
-- removed, each new row links to its workspace's head (seq + 1, prev_hash = head hash), and ts
-- is server time taken inside the inserting transaction.

-- Keep in step with numail.db.chain.ACTIONS (tests compare the two).
CREATE TYPE audit_action AS ENUM (
    'mailbox.connected', 'mailbox.disconnected', 'mailbox.verified',
    'member.invited', 'member.role_changed', 'member.removed',
    'apikey.created', 'apikey.revoked',
    'data.exported', 'data.erased',
    'key.rotated', 'key.created',
    'workspace.created', 'workspace.deleted',
    'digest.signed'
);

-- No foreign key to workspaces: the trail outlives a deleted workspace, and a spooled
-- workspace.created event may arrive before the registry row. event_id is chosen by the
-- writer, so a spooled event replayed after an unknown commit outcome is recognised, not
-- appended twice.
CREATE TABLE audit_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id uuid NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 1),
    event_id uuid NOT NULL,
    ts timestamptz NOT NULL,
    actor text NOT NULL,
    action audit_action NOT NULL,
    source text NOT NULL,
    target text NOT NULL,
    details jsonb NOT NULL,
    prev_hash text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT audit_events_workspace_seq_key UNIQUE (workspace_id, seq),
    CONSTRAINT audit_events_workspace_event_key UNIQUE (workspace_id, event_id)
);

-- The last row of each chain, kept by the trigger below; only that trigger writes it.
CREATE TABLE audit_heads (
    workspace_id uuid PRIMARY KEY,
    seq bigint NOT NULL CHECK (seq >= 1),
    hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$')
);

-- A signed statement "the chain of workspace_id had head (seq, hash) at signed_at", by the key
-- whose fingerprint is key_id. See numail.db.chain.digest_payload for what is signed.
CREATE TABLE audit_digests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id uuid NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 1),
    hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    signed_at timestamptz NOT NULL,
    key_id text NOT NULL CHECK (key_id ~ '^[0-9a-f]{64}$'),
    signature text NOT NULL CHECK (signature ~ '^[0-9a-f]{128}$')
);
CREATE INDEX audit_digests_workspace ON audit_digests (workspace_id, id);

-- Refuses every change, whoever asks: privileges already stop the application roles, this
-- stops the owner. Only a superuser can get past it, by disabling triggers; the hash chain and
-- the signed digests are what catch that.
CREATE FUNCTION numail_audit_refuse_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING HINT = 'audit rows are never changed or removed; record a new event instead';
END
$$;

CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION numail_audit_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION numail_audit_refuse_change();
CREATE TRIGGER audit_digests_no_update_delete BEFORE UPDATE OR DELETE ON audit_digests
    FOR EACH ROW EXECUTE FUNCTION numail_audit_refuse_change();
CREATE TRIGGER audit_digests_no_truncate BEFORE TRUNCATE ON audit_digests
    FOR EACH STATEMENT EXECUTE FUNCTION numail_audit_refuse_change();
CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION numail_audit_refuse_change();
CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads
    FOR EACH STATEMENT EXECUTE FUNCTION numail_audit_refuse_change();

-- Once per INSERT statement: every new row must follow its predecessor (the previous new row
-- of its workspace, else the stored head), and carry a ts taken inside this transaction; then
-- the heads move. A writer working from a stale head is refused here, and two writers racing
-- for the same seq are refused by the unique key, so a chain can't fork even if a client skips
-- numail.db.audit's lock. The hash itself is checked by verify(), which knows the encoding.
-- SECURITY DEFINER because the application roles may only read audit_heads; row-level security
-- still applies to the owner (FORCE), so it moves only the current workspace's head.
CREATE FUNCTION numail_audit_advance_heads() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.workspace_id, n.seq,
           CASE WHEN n.ts < now() OR n.ts > clock_timestamp()
                THEN 'its ts is not the time of this transaction'
                ELSE format('it must be seq %s with prev_hash %s',
                            coalesce(n.before_seq, h.seq, 0) + 1,
                            coalesce(n.before_hash, h.hash, repeat('0', 64)))
           END AS reason
      INTO bad
      FROM (SELECT workspace_id, seq, prev_hash, ts,
                   lag(seq) OVER w AS before_seq, lag(hash) OVER w AS before_hash
              FROM new_events
            WINDOW w AS (PARTITION BY workspace_id ORDER BY seq)) n
      LEFT JOIN audit_heads h USING (workspace_id)
     WHERE n.seq <> coalesce(n.before_seq, h.seq, 0) + 1
        OR n.prev_hash <> coalesce(n.before_hash, h.hash, repeat('0', 64))
        OR n.ts < now() OR n.ts > clock_timestamp()
     ORDER BY n.workspace_id, n.seq
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit chain of workspace % refused seq %: %',
            bad.workspace_id, bad.seq, bad.reason
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'append through numail.db.audit.record_many, which locks the head';
    END IF;
    INSERT INTO audit_heads AS h (workspace_id, seq, hash)
    SELECT DISTINCT ON (workspace_id) workspace_id, seq, hash
      FROM new_events
     ORDER BY workspace_id, seq DESC
        ON CONFLICT (workspace_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_events_chain AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION numail_audit_advance_heads();

SELECT numail_protect_tenant_table(t)
FROM unnest(ARRAY['audit_events', 'audit_heads', 'audit_digests']::regclass[]) AS t;

-- INSERT and SELECT only, never UPDATE, DELETE or TRUNCATE.
GRANT SELECT ON audit_events, audit_heads, audit_digests
    TO numail_operator, numail_worker, numail_readonly;
GRANT INSERT ON audit_events TO numail_operator, numail_worker;
GRANT INSERT ON audit_digests TO numail_operator;
