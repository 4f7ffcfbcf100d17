-- The send engine: job states, idempotent enqueue, attempts, daily caps, claiming and settling.
--
-- numail/db/jobs.py calls the functions below; docs/send-engine.md explains the state machine.
-- A job moves scheduled -> claimed (a lease) -> sending (an attempt is recorded) -> sent,
-- failed, suppressed or cancelled. An attempt whose outcome nobody knows (the worker died or
-- timed out after handing the message over) is `unknown`, and is settled by asking the provider
-- for its Message-ID before anything is sent again. Every function is SECURITY INVOKER and
-- works inside numail.db.workspace_session, so row-level security scopes all of it.

-- Mailbox details the workers need and that are not secret: the address (its domain names the
-- Message-IDs) and the servers and OAuth client from the Mailbox spec, in the spec's camelCase.
-- The operator writes both; credentials never come here.
ALTER TABLE mailboxes
    ADD COLUMN address text,
    ADD COLUMN settings jsonb NOT NULL DEFAULT '{}';

ALTER TABLE send_jobs DROP CONSTRAINT send_jobs_state_check;
ALTER TABLE send_jobs ADD CONSTRAINT send_jobs_state_check CHECK (state IN (
    'scheduled', 'claimed', 'sending', 'sent', 'failed', 'suppressed', 'cancelled', 'unknown'));
ALTER TABLE send_jobs DROP CONSTRAINT send_jobs_claim_has_lease;
ALTER TABLE send_jobs ADD CONSTRAINT send_jobs_work_has_lease CHECK (
    state NOT IN ('claimed', 'sending') OR (lease_owner IS NOT NULL AND lease_until IS NOT NULL));

-- A job may be a one-off send, outside any sequence.
ALTER TABLE send_jobs ALTER COLUMN sequence_id DROP NOT NULL, ALTER COLUMN step DROP NOT NULL;

-- idempotency_key: enqueueing the same key twice in a workspace makes one job.
-- due_at: when the job may next be claimed (scheduled_at, then pushed back by retries).
-- subject, body: the rendered message; NULL takes the sequence step's template.
-- cap_day: the UTC day whose daily cap this job counts against, once claimed.
ALTER TABLE send_jobs
    ADD COLUMN idempotency_key text,
    ADD COLUMN due_at timestamptz,
    ADD COLUMN subject text,
    ADD COLUMN body text,
    ADD COLUMN cap_day date,
    ADD COLUMN sent_at timestamptz,
    ADD COLUMN provider_message_id text,
    ADD COLUMN last_reply text,
    ADD COLUMN unknown_since timestamptz,
    ADD COLUMN settle_checks integer NOT NULL DEFAULT 0 CHECK (settle_checks >= 0);
UPDATE send_jobs SET idempotency_key = id::text, due_at = scheduled_at;
ALTER TABLE send_jobs
    ALTER COLUMN idempotency_key SET NOT NULL,
    ALTER COLUMN due_at SET NOT NULL,
    ADD CONSTRAINT send_jobs_idempotency_key UNIQUE (workspace_id, idempotency_key);

-- Rows inserted without the engine (fixtures, older writers) still get a key and a due time.
CREATE FUNCTION numail_send_jobs_defaults() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.idempotency_key := coalesce(NEW.idempotency_key, NEW.id::text);
    NEW.due_at := coalesce(NEW.due_at, NEW.scheduled_at);
    RETURN NEW;
END
$$;
CREATE TRIGGER send_jobs_defaults BEFORE INSERT ON send_jobs
    FOR EACH ROW EXECUTE FUNCTION numail_send_jobs_defaults();

-- Wakes idle workers of the workspace (LISTEN numail_send_<workspace id without dashes>); they
-- also poll, so a lost notification only delays a send.
CREATE FUNCTION numail_send_jobs_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('numail_send_' || replace(d.workspace_id::text, '-', ''), '')
       FROM (SELECT DISTINCT workspace_id FROM inserted) d;
    RETURN NULL;
END
$$;
CREATE TRIGGER send_jobs_notify AFTER INSERT ON send_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION numail_send_jobs_notify();

-- Daily caps are counted in mailbox_daily_sends now, so nothing needs send_jobs_mailbox_day,
-- and every job's last state change would pay for its upkeep.
DROP INDEX send_jobs_mailbox_day;
DROP INDEX send_jobs_due;
DROP INDEX send_jobs_lease;
CREATE INDEX send_jobs_due ON send_jobs (workspace_id, due_at) WHERE state = 'scheduled';
CREATE INDEX send_jobs_lease ON send_jobs (workspace_id, lease_until)
    WHERE state IN ('claimed', 'sending');
CREATE INDEX send_jobs_unknown ON send_jobs (workspace_id, due_at) WHERE state = 'unknown';

-- One row per attempt, written when the job enters `sending`; outcome NULL means in progress.
-- `settled` is what asking the provider found out about an `unknown` attempt. Half-empty pages
-- let the update that records the outcome stay on its page (a HOT update: no index writes).
-- The statements below find rows by job id alone and let row-level security add the workspace:
-- a plan that starts from workspace_id scans the whole workspace when statistics are stale.
CREATE TABLE send_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    send_job_id uuid NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    worker text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome text CHECK (outcome IN ('sent', 'transient', 'permanent', 'unknown', 'released')),
    reply_code integer,
    detail text,
    settled text CHECK (settled IN ('found', 'not_found')),
    UNIQUE (send_job_id, attempt),
    FOREIGN KEY (workspace_id, send_job_id) REFERENCES send_jobs (workspace_id, id)
        ON DELETE CASCADE
) WITH (fillfactor = 50);

-- Jobs of one mailbox that took a slot of that UTC day's cap. Claims lock the row, so workers
-- claiming together never exceed the cap; a job keeps its slot through retries that day.
CREATE TABLE mailbox_daily_sends (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    mailbox_id uuid NOT NULL,
    day date NOT NULL,
    reserved integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (workspace_id, mailbox_id, day),
    FOREIGN KEY (workspace_id, mailbox_id) REFERENCES mailboxes (workspace_id, id)
        ON DELETE CASCADE
);

SELECT numail_protect_tenant_table(t)
FROM unnest(ARRAY['send_attempts', 'mailbox_daily_sends']::regclass[]) AS t;

GRANT SELECT ON send_attempts, mailbox_daily_sends
    TO numail_operator, numail_worker, numail_readonly;
GRANT INSERT, UPDATE ON send_attempts, mailbox_daily_sends TO numail_worker;

-- Claims up to p_limit jobs for p_owner, in one transaction of the caller's workspace session:
--   1. a `sending` job whose lease expired becomes `unknown` (its attempt too): never resent
--      blindly, settled after p_settle_delay_seconds;
--   2. a `claimed` job whose lease expired is scheduled again (nothing was sent);
--   3. `unknown` jobs that are due are leased for settling (state stays `unknown`);
--   4. due `scheduled` jobs are taken oldest first, FOR UPDATE SKIP LOCKED, skipping mailboxes
--      that are disconnected or at their daily cap; suppressed recipients become `suppressed`;
--      each mailbox's counter row is locked (in mailbox order, so claimers never deadlock)
--      and admits only what the cap leaves.
-- Returns the leased jobs (state claimed or unknown) and the ones just suppressed.
CREATE FUNCTION numail_claim_send_jobs(
    p_owner text,
    p_limit integer,
    p_lease_seconds double precision,
    p_settle_delay_seconds double precision
) RETURNS TABLE (
    o_job_id uuid, o_mailbox_id uuid, o_state text, o_message_id text, o_attempts integer,
    o_recipient text, o_first_name text, o_last_name text, o_company text,
    o_subject text, o_body text
)
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_lease timestamptz := now() + make_interval(secs => p_lease_seconds);
    v_unknown uuid[];
    v_disconnected uuid[];
    v_capped uuid[];
    c_ids uuid[];
    c_mbs uuid[];
    c_need boolean[];
    v_suppressed uuid[];
    v_claim uuid[];
    v_admit uuid[] := '{}';
    v_mb uuid;
    v_cap integer;
    v_used integer;
    v_ids uuid[];
BEGIN
    IF ws IS NULL THEN
        RAISE EXCEPTION 'numail_claim_send_jobs needs a workspace'
            USING HINT = 'call it inside numail.db.workspace_session';
    END IF;

    WITH lost AS (
        SELECT j.id FROM send_jobs j
         WHERE j.workspace_id = ws AND j.state = 'sending' AND j.lease_until < now()
         FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE send_jobs j
           SET state = 'unknown', lease_owner = NULL, lease_until = NULL, unknown_since = now(),
               due_at = now() + make_interval(secs => p_settle_delay_seconds),
               updated_at = now(), last_error = 'the worker lost its lease while sending'
          FROM lost
         WHERE j.id = lost.id
        RETURNING j.workspace_id, j.id, j.attempts
    )
    UPDATE send_attempts a
       SET outcome = 'unknown', finished_at = now(),
           detail = 'the worker lost its lease while sending'
      FROM moved
     WHERE a.send_job_id = moved.id AND a.attempt = moved.attempts AND a.outcome IS NULL;

    WITH stale AS (
        SELECT j.id FROM send_jobs j
         WHERE j.workspace_id = ws AND j.state = 'claimed' AND j.lease_until < now()
         FOR UPDATE SKIP LOCKED
    )
    UPDATE send_jobs j
       SET state = 'scheduled', lease_owner = NULL, lease_until = NULL, updated_at = now()
      FROM stale
     WHERE j.id = stale.id;

    SELECT coalesce(array_agg(s.id), '{}') INTO v_unknown
      FROM (SELECT j.id FROM send_jobs j
             WHERE j.workspace_id = ws AND j.state = 'unknown' AND j.due_at <= now()
               AND (j.lease_until IS NULL OR j.lease_until < now())
             ORDER BY j.due_at
             LIMIT p_limit
             FOR UPDATE SKIP LOCKED) s;

    SELECT coalesce(array_agg(m.id) FILTER (WHERE m.state = 'disconnected'), '{}'),
           coalesce(array_agg(m.id) FILTER (WHERE coalesce(c.reserved, 0) >= m.daily_cap), '{}')
      INTO v_disconnected, v_capped
      FROM mailboxes m
      LEFT JOIN mailbox_daily_sends c
        ON c.workspace_id = m.workspace_id AND c.mailbox_id = m.id AND c.day = v_today
     WHERE m.workspace_id = ws
       AND (m.state = 'disconnected' OR coalesce(c.reserved, 0) >= m.daily_cap);

    SELECT coalesce(array_agg(s.id ORDER BY s.due_at), '{}'),
           coalesce(array_agg(s.mailbox_id ORDER BY s.due_at), '{}'),
           coalesce(array_agg(s.cap_day IS DISTINCT FROM v_today ORDER BY s.due_at), '{}')
      INTO c_ids, c_mbs, c_need
      FROM (SELECT j.id, j.mailbox_id, j.cap_day, j.due_at FROM send_jobs j
             WHERE j.workspace_id = ws AND j.state = 'scheduled' AND j.due_at <= now()
               AND NOT j.mailbox_id = ANY (v_disconnected)
               AND (NOT j.mailbox_id = ANY (v_capped) OR j.cap_day = v_today)
             ORDER BY j.due_at
             LIMIT greatest(p_limit - cardinality(v_unknown), 0)
             FOR UPDATE SKIP LOCKED) s;

    SELECT coalesce(array_agg(j.id), '{}') INTO v_suppressed
      FROM send_jobs j
      JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
     WHERE j.id = ANY (c_ids)
       AND EXISTS (SELECT 1 FROM suppression_entries se
                    WHERE se.workspace_id = l.workspace_id AND se.email_hash = l.email_hash);
    IF cardinality(v_suppressed) > 0 THEN
        UPDATE send_jobs
           SET state = 'suppressed', updated_at = now(),
               last_error = 'the recipient is on the suppression list'
         WHERE id = ANY (v_suppressed);
    END IF;

    FOR v_mb IN
        SELECT DISTINCT x.mb FROM unnest(c_ids, c_mbs, c_need) AS x (id, mb, need)
         WHERE x.need AND NOT x.id = ANY (v_suppressed)
         ORDER BY 1
    LOOP
        SELECT m.daily_cap INTO v_cap FROM mailboxes m WHERE m.workspace_id = ws AND m.id = v_mb;
        INSERT INTO mailbox_daily_sends (workspace_id, mailbox_id, day, reserved)
        VALUES (ws, v_mb, v_today, 0)
        ON CONFLICT DO NOTHING;
        SELECT c.reserved INTO v_used FROM mailbox_daily_sends c
         WHERE c.workspace_id = ws AND c.mailbox_id = v_mb AND c.day = v_today
         FOR UPDATE;
        SELECT coalesce(array_agg(a.id ORDER BY a.n), '{}') INTO v_ids
          FROM (SELECT x.id, x.n
                  FROM unnest(c_ids, c_mbs, c_need) WITH ORDINALITY AS x (id, mb, need, n)
                 WHERE x.mb = v_mb AND x.need AND NOT x.id = ANY (v_suppressed)
                 ORDER BY x.n
                 LIMIT greatest(v_cap - v_used, 0)) a;
        IF cardinality(v_ids) > 0 THEN
            UPDATE mailbox_daily_sends SET reserved = reserved + cardinality(v_ids)
             WHERE workspace_id = ws AND mailbox_id = v_mb AND day = v_today;
            v_admit := v_admit || v_ids;
        END IF;
    END LOOP;

    -- Jobs that already hold a slot of today (re-claimed after an expired claim) need no new one.
    SELECT v_admit || coalesce(array_agg(x.id), '{}') INTO v_claim
      FROM unnest(c_ids, c_need) AS x (id, need)
     WHERE NOT x.need AND NOT x.id = ANY (v_suppressed);

    UPDATE send_jobs j
       SET state = 'claimed', lease_owner = p_owner, lease_until = v_lease, updated_at = now(),
           cap_day = v_today
     WHERE j.id = ANY (v_claim);
    UPDATE send_jobs j
       SET lease_owner = p_owner, lease_until = v_lease, updated_at = now()
     WHERE j.id = ANY (v_unknown);

    RETURN QUERY
    SELECT j.id, j.mailbox_id, j.state, j.message_id, j.attempts,
           l.email, l.first_name, l.last_name, l.company,
           coalesce(j.subject, st.subject_template, ''), coalesce(j.body, st.body_template, '')
      FROM send_jobs j
      JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
      LEFT JOIN sequence_steps st
        ON st.workspace_id = j.workspace_id AND st.sequence_id = j.sequence_id
       AND st.position = j.step
     WHERE j.id = ANY (v_claim || v_unknown || v_suppressed);
END
$$;

-- Moves p_owner's leased jobs to `sending` and records an attempt for each, just before the
-- message is handed over; only the jobs returned with state `sending` may be sent. A job
-- whose recipient was suppressed since the claim becomes `suppressed` instead. From `unknown`
-- this is only called after the provider said the Message-ID was not sent.
CREATE FUNCTION numail_start_send_attempts(
    p_owner text,
    p_ids uuid[],
    p_lease_seconds double precision
) RETURNS TABLE (o_job_id uuid, o_attempt integer, o_state text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    v_suppressed uuid[];
    v_settled uuid[];
BEGIN
    SELECT coalesce(array_agg(j.id), '{}') INTO v_suppressed
      FROM send_jobs j
      JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
     WHERE j.id = ANY (p_ids) AND j.lease_owner = p_owner
       AND j.state IN ('claimed', 'unknown')
       AND EXISTS (SELECT 1 FROM suppression_entries se
                    WHERE se.workspace_id = l.workspace_id AND se.email_hash = l.email_hash);
    IF cardinality(v_suppressed) > 0 THEN
        UPDATE send_jobs
           SET state = 'suppressed', lease_owner = NULL, lease_until = NULL, updated_at = now(),
               last_error = 'the recipient is on the suppression list'
         WHERE id = ANY (v_suppressed);
    END IF;

    WITH settled AS (
        UPDATE send_jobs j SET settle_checks = j.settle_checks + 1
         WHERE j.id = ANY (p_ids) AND j.lease_owner = p_owner
           AND j.state = 'unknown' AND NOT j.id = ANY (v_suppressed)
        RETURNING j.workspace_id, j.id, j.attempts
    ), marked AS (
        UPDATE send_attempts a SET settled = 'not_found'
          FROM settled s
         WHERE a.send_job_id = s.id AND a.attempt = s.attempts
        RETURNING a.send_job_id
    )
    SELECT coalesce(array_agg(s.id), '{}') INTO v_settled FROM settled s;

    RETURN QUERY
    WITH started AS (
        UPDATE send_jobs j
           SET state = 'sending', attempts = j.attempts + 1,
               lease_until = now() + make_interval(secs => p_lease_seconds), updated_at = now()
         WHERE j.id = ANY (p_ids) AND j.lease_owner = p_owner
           AND j.state IN ('claimed', 'unknown') AND NOT j.id = ANY (v_suppressed)
        RETURNING j.workspace_id, j.id, j.attempts
    ), recorded AS (
        INSERT INTO send_attempts (workspace_id, send_job_id, attempt, worker)
        SELECT s.workspace_id, s.id, s.attempts, p_owner FROM started s
        RETURNING send_job_id, attempt
    )
    SELECT r.send_job_id, r.attempt, 'sending'::text FROM recorded r
    UNION ALL
    SELECT x.id, 0, 'suppressed'::text FROM unnest(v_suppressed) AS x (id);
END
$$;

-- Records what happened to p_owner's jobs, one outcome per job:
--   sent       sending -> sent (and a sent_messages row)
--   found      unknown -> sent: the provider has the Message-ID
--   unknown    sending -> unknown: handed over, no answer; settle after p_delays seconds
--   unsettled  unknown -> unknown: the provider could not be asked; ask again after the delay
--   retry      claimed|sending -> scheduled after the delay: nothing was sent (transient)
--   failed     claimed|sending -> failed (permanent); with p_bounces, suppress the recipient
--   release    claimed|sending -> scheduled now, unknown -> unknown: not attempted (shutdown)
-- A job whose lease p_owner no longer holds is left alone: whoever took it over decides.
-- Returns the outcomes that were applied.
CREATE FUNCTION numail_finish_send_jobs(
    p_owner text,
    p_ids uuid[],
    p_outcomes text[],
    p_delays double precision[],
    p_codes integer[],
    p_details text[],
    p_provider_ids text[],
    p_bounces boolean[]
) RETURNS TABLE (o_job_id uuid, o_outcome text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    a_ids uuid[];
    a_outcomes text[];
    a_attempts integer[];
    a_codes integer[];
    a_details text[];
    a_bounces boolean[];
BEGIN
    WITH o AS (
        SELECT * FROM unnest(p_ids, p_outcomes, p_delays, p_codes, p_details, p_provider_ids,
                             p_bounces)
            AS o (id, outcome, delay, code, detail, provider_id, bounce)
    ), applied AS (
        UPDATE send_jobs j
           SET state = CASE
                   WHEN o.outcome IN ('sent', 'found') THEN 'sent'
                   WHEN o.outcome IN ('unknown', 'unsettled') THEN 'unknown'
                   WHEN o.outcome = 'failed' THEN 'failed'
                   WHEN o.outcome = 'release' AND j.state = 'unknown' THEN 'unknown'
                   ELSE 'scheduled' END,
               lease_owner = NULL,
               lease_until = NULL,
               updated_at = now(),
               due_at = CASE WHEN o.outcome IN ('retry', 'unknown', 'unsettled', 'release')
                             THEN now() + make_interval(secs => coalesce(o.delay, 0))
                             ELSE j.due_at END,
               sent_at = CASE WHEN o.outcome IN ('sent', 'found') THEN now() ELSE j.sent_at END,
               provider_message_id = coalesce(o.provider_id, j.provider_message_id),
               last_reply = CASE WHEN o.code IS NOT NULL THEN o.detail ELSE j.last_reply END,
               last_error = CASE WHEN o.outcome IN ('sent', 'found') THEN NULL
                                 ELSE coalesce(o.detail, j.last_error) END,
               unknown_since = CASE WHEN o.outcome = 'unknown' THEN now()
                                    WHEN o.outcome IN ('sent', 'found') THEN NULL
                                    ELSE j.unknown_since END,
               settle_checks = j.settle_checks
                   + CASE WHEN o.outcome IN ('found', 'unsettled') THEN 1 ELSE 0 END
          FROM o
         WHERE j.id = ANY (p_ids) AND j.id = o.id AND j.lease_owner = p_owner
           AND CASE o.outcome
                   WHEN 'sent' THEN j.state = 'sending'
                   WHEN 'unknown' THEN j.state = 'sending'
                   WHEN 'found' THEN j.state = 'unknown'
                   WHEN 'unsettled' THEN j.state = 'unknown'
                   WHEN 'retry' THEN j.state IN ('claimed', 'sending')
                   WHEN 'failed' THEN j.state IN ('claimed', 'sending')
                   WHEN 'release' THEN j.state IN ('claimed', 'sending', 'unknown')
                   ELSE false END
        RETURNING j.id, o.outcome, j.attempts, o.code, o.detail, coalesce(o.bounce, false) AS bounce
    )
    SELECT coalesce(array_agg(a.id), '{}'), coalesce(array_agg(a.outcome), '{}'),
           coalesce(array_agg(a.attempts), '{}'), coalesce(array_agg(a.code), '{}'),
           coalesce(array_agg(a.detail), '{}'), coalesce(array_agg(a.bounce), '{}')
      INTO a_ids, a_outcomes, a_attempts, a_codes, a_details, a_bounces
      FROM applied a;

    -- The attempt in progress (outcome NULL) is the one that just ended; a job leaving
    -- `claimed` has none, since every earlier attempt already has its outcome.
    UPDATE send_attempts a
       SET outcome = CASE x.outcome WHEN 'sent' THEN 'sent' WHEN 'unknown' THEN 'unknown'
                                    WHEN 'retry' THEN 'transient' WHEN 'failed' THEN 'permanent'
                                    ELSE 'released' END,
           finished_at = now(), reply_code = x.code, detail = x.detail
      FROM unnest(a_ids, a_outcomes, a_attempts, a_codes, a_details)
           AS x (id, outcome, attempt, code, detail)
     WHERE a.send_job_id = ANY (a_ids) AND a.send_job_id = x.id AND a.attempt = x.attempt
       AND a.outcome IS NULL AND x.outcome IN ('sent', 'unknown', 'retry', 'failed', 'release');

    UPDATE send_attempts a SET settled = 'found'
      FROM unnest(a_ids, a_outcomes, a_attempts) AS x (id, outcome, attempt)
     WHERE a.send_job_id = ANY (a_ids) AND a.send_job_id = x.id AND a.attempt = x.attempt
       AND x.outcome = 'found';

    INSERT INTO sent_messages (workspace_id, send_job_id, mailbox_id, lead_id, message_id,
                               provider_message_id, sent_at)
    SELECT j.workspace_id, j.id, j.mailbox_id, j.lead_id, j.message_id, j.provider_message_id,
           j.sent_at
      FROM unnest(a_ids, a_outcomes) AS x (id, outcome)
      JOIN send_jobs j ON j.id = x.id
     WHERE x.outcome IN ('sent', 'found') AND j.id = ANY (a_ids)
    ON CONFLICT (send_job_id) DO NOTHING;

    INSERT INTO suppression_entries (workspace_id, email_hash, reason)
    SELECT l.workspace_id, l.email_hash, 'hard_bounce'
      FROM unnest(a_ids, a_outcomes, a_bounces) AS x (id, outcome, bounce)
      JOIN send_jobs j ON j.id = x.id
      JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
     WHERE x.outcome = 'failed' AND x.bounce
    ON CONFLICT (workspace_id, email_hash) DO NOTHING;
    UPDATE leads l SET state = 'bounced'
      FROM unnest(a_ids, a_outcomes, a_bounces) AS x (id, outcome, bounce)
      JOIN send_jobs j ON j.id = x.id
     WHERE x.outcome = 'failed' AND x.bounce
       AND l.workspace_id = j.workspace_id AND l.id = j.lead_id;

    RETURN QUERY SELECT x.id, x.outcome FROM unnest(a_ids, a_outcomes) AS x (id, outcome);
END
$$;

REVOKE ALL ON FUNCTION numail_claim_send_jobs(text, integer, double precision, double precision),
    numail_start_send_attempts(text, uuid[], double precision),
    numail_finish_send_jobs(text, uuid[], text[], double precision[], integer[], text[], text[],
                            boolean[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    numail_claim_send_jobs(text, integer, double precision, double precision),
    numail_start_send_attempts(text, uuid[], double precision),
    numail_finish_send_jobs(text, uuid[], text[], double precision[], integer[], text[], text[],
                            boolean[])
    TO numail_worker;
