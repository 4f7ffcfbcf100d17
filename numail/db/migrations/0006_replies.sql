-- The reply detector: where each mailbox's inbound reading stopped, and what one inbound
-- message does to the workspace.
--
-- numail/db/replies.py calls the function below; docs/reply-detector.md explains the rules.
-- Everything is SECURITY INVOKER and runs inside numail.db.workspace_session, so row-level
-- security scopes it: a reply can only ever match a sent message of the workspace reading it.

-- One row per mailbox: how far the detector has read. Only the columns of the mailbox's
-- provider are used: IMAP (uidvalidity, last_uid), Gmail (history_id), Graph (delta_link).
-- None of them is a secret: a history id or a delta link is useless without an access token.
CREATE TABLE inbound_cursors (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    mailbox_id uuid NOT NULL,
    uidvalidity bigint,
    last_uid bigint CHECK (last_uid >= 0),
    history_id text,
    delta_link text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, mailbox_id),
    FOREIGN KEY (workspace_id, mailbox_id) REFERENCES mailboxes (workspace_id, id)
        ON DELETE CASCADE
);

SELECT numail_protect_tenant_table('inbound_cursors'::regclass);

GRANT SELECT ON inbound_cursors TO numail_operator, numail_worker, numail_readonly;
GRANT INSERT, UPDATE ON inbound_cursors TO numail_worker;

-- Records one classified inbound message of mailbox p_mailbox_id, in the caller's transaction:
--   * the first of p_candidates (Message-IDs, best first) that names a sent message of this
--     workspace is the one it answers; none: 'unmatched', nothing is stored (it may be
--     personal mail);
--   * the replies row is inserted once per (workspace, mailbox, Message-ID): a second call
--     with the same message returns 'duplicate' and changes nothing;
--   * a hard bounce must name the lead: unless one of p_failed_recipients (the addresses the
--     DSN says failed as bad) is the lead's email, case-insensitively, it is recorded as a
--     soft bounce (a bounce of some other address, or of a forward, must not suppress the
--     lead);
--   * a real reply moves the lead from active to replied; a hard bounce suppresses the lead's
--     email_hash and moves it to bounced. Both cancel the lead's `scheduled` jobs. Jobs that
--     are `claimed` are leased to a send worker and are not touched: the engine locks a job
--     and then its lead when it finishes one, so locking the lead and then its claimed jobs
--     here could deadlock with it. The engine refuses to start an attempt for a lead that is
--     no longer active (it checks leads.state), which covers them. `sending` and `unknown`
--     jobs may already be with the provider; their outcome is recorded by the engine.
--   * an auto-reply or a soft bounce is recorded only.
CREATE FUNCTION numail_record_inbound(
    p_mailbox_id uuid,
    p_message_id text,
    p_kind text,
    p_bounce_type text,
    p_candidates text[],
    p_received_at timestamptz,
    p_failed_recipients text[]
) RETURNS TABLE (
    o_outcome text, o_reply_id uuid, o_sent_message_id uuid, o_lead_id uuid,
    o_cancelled integer
)
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    v_sent uuid;
    v_lead uuid;
    v_matched text;
    v_reply uuid;
    v_cancelled integer := 0;
    v_why text;
    v_bounce_type text := p_bounce_type;
BEGIN
    IF ws IS NULL THEN
        RAISE EXCEPTION 'numail_record_inbound needs a workspace'
            USING HINT = 'call it inside numail.db.workspace_session';
    END IF;

    SELECT sm.id, sm.lead_id, sm.message_id INTO v_sent, v_lead, v_matched
      FROM unnest(p_candidates) WITH ORDINALITY AS c (message_id, n)
      JOIN sent_messages sm ON sm.workspace_id = ws AND sm.message_id = c.message_id
     ORDER BY c.n
     LIMIT 1;
    IF v_sent IS NULL THEN
        RETURN QUERY SELECT 'unmatched'::text, NULL::uuid, NULL::uuid, NULL::uuid, 0;
        RETURN;
    END IF;

    IF p_kind = 'bounce' AND p_bounce_type = 'hard' AND NOT EXISTS (
        SELECT 1
          FROM leads l, unnest(coalesce(p_failed_recipients, '{}'::text[])) AS f (address)
         WHERE l.workspace_id = ws AND l.id = v_lead
           AND lower(btrim(f.address)) = lower(btrim(l.email))
    ) THEN
        v_bounce_type := 'soft';
    END IF;

    INSERT INTO replies (workspace_id, mailbox_id, sent_message_id, lead_id, message_id,
                         in_reply_to, kind, bounce_type, received_at)
    VALUES (ws, p_mailbox_id, v_sent, v_lead, p_message_id, v_matched, p_kind, v_bounce_type,
            coalesce(p_received_at, now()))
    ON CONFLICT (workspace_id, mailbox_id, message_id) DO NOTHING
    RETURNING id INTO v_reply;
    IF v_reply IS NULL THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::uuid, v_sent, v_lead, 0;
        RETURN;
    END IF;

    IF p_kind = 'reply' THEN
        UPDATE leads SET state = 'replied'
         WHERE workspace_id = ws AND id = v_lead AND state = 'active';
        v_why := 'cancelled: the lead replied, which stops the lead''s sequence';
    ELSIF p_kind = 'bounce' AND v_bounce_type = 'hard' THEN
        INSERT INTO suppression_entries (workspace_id, email_hash, reason)
        SELECT l.workspace_id, l.email_hash, 'hard_bounce'
          FROM leads l WHERE l.workspace_id = ws AND l.id = v_lead
        ON CONFLICT (workspace_id, email_hash) DO NOTHING;
        UPDATE leads SET state = 'bounced'
         WHERE workspace_id = ws AND id = v_lead AND state IN ('active', 'replied');
        v_why := 'cancelled: the address hard-bounced, which stops the lead''s sequence';
    END IF;

    IF v_why IS NOT NULL THEN
        UPDATE send_jobs j
           SET state = 'cancelled', lease_owner = NULL, updated_at = now(),
               last_error = v_why
         WHERE j.workspace_id = ws AND j.lead_id = v_lead
           AND j.state = 'scheduled';
        GET DIAGNOSTICS v_cancelled = ROW_COUNT;
    END IF;

    RETURN QUERY SELECT CASE WHEN p_kind = 'bounce' THEN v_bounce_type || '_bounce'
                             ELSE p_kind END,
                        v_reply, v_sent, v_lead, v_cancelled;
END
$$;

REVOKE ALL ON FUNCTION numail_record_inbound(uuid, text, text, text, text[], timestamptz, text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION numail_record_inbound(uuid, text, text, text, text[], timestamptz, text[])
    TO numail_worker;
