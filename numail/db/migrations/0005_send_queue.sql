-- The send engine, made cheap per job: a queue table for what waits, a lease per worker rather
-- than per job, and one attempt row per attempt, written when its outcome is known.
--
-- Why: in 0004 every transition of a job (claimed, sending, sent) changed `state` and
-- `lease_until`, which partial indexes referenced, so each one wrote a new row version into all
-- seven indexes of send_jobs, and the heartbeat rewrote every held job. Here no index of
-- send_jobs names a column a transition changes, so with room on the page (fillfactor 50)
-- those updates are HOT: one heap write, no index write. What indexes used to find lives in
-- two small tables instead:
--   send_queue    a row per job that waits (scheduled, or unknown and not leased) with its due
--                 time; claiming deletes it. A trigger on send_jobs keeps it, so any writer that
--                 schedules a job (a retry, a release, a test, an operator) queues it too. A row
--                 whose job is no longer waiting is stale and is dropped when a claim meets it:
--                 the job's own state is the truth, the queue only says where to look.
--   send_workers  a row per worker process of the workspace: its lease and the jobs it holds.
--                 A heartbeat is one row update; a claim that finds a worker whose lease ran
--                 out takes that worker's jobs back (claimed -> scheduled, sending -> unknown,
--                 leased unknown -> unknown) and deletes the row.
-- Lock order, so that claimers, heartbeats and recovery never deadlock: a worker row first,
-- then job rows. Every function below locks its own worker row before touching a job.

-- Rows from 0004's per-job leases are carried over below; these go with them.
DROP INDEX send_jobs_due;
DROP INDEX send_jobs_lease;
DROP INDEX send_jobs_unknown;
ALTER TABLE send_jobs DROP CONSTRAINT send_jobs_work_has_lease;
ALTER TABLE send_jobs ADD CONSTRAINT send_jobs_work_has_owner CHECK (
    state NOT IN ('claimed', 'sending') OR lease_owner IS NOT NULL);
-- Room for a new version of every row on its own page: a batch updates whole pages at once.
ALTER TABLE send_jobs SET (fillfactor = 50);

-- One foreign key per row written on the fast path, not four: each check is a lookup and a
-- row lock on the referenced row (the workspace's and the mailbox's rows are the same for
-- every job, so concurrent workers would share those locks as multixacts). A sent message must
-- agree with its job on workspace, mailbox and lead, which is stronger than the separate keys
-- it replaces; deleting a workspace or a lead still cascades, through send_jobs.
ALTER TABLE send_jobs
    ADD CONSTRAINT send_jobs_identity UNIQUE (workspace_id, id, mailbox_id, lead_id);
ALTER TABLE sent_messages
    DROP CONSTRAINT sent_messages_workspace_id_fkey,
    DROP CONSTRAINT sent_messages_workspace_id_send_job_id_fkey,
    DROP CONSTRAINT sent_messages_workspace_id_mailbox_id_fkey,
    DROP CONSTRAINT sent_messages_workspace_id_lead_id_fkey,
    ADD CONSTRAINT sent_messages_job FOREIGN KEY (workspace_id, send_job_id, mailbox_id, lead_id)
        REFERENCES send_jobs (workspace_id, id, mailbox_id, lead_id) ON DELETE CASCADE;
ALTER TABLE send_attempts DROP CONSTRAINT send_attempts_workspace_id_fkey;

CREATE TABLE send_queue (
    job_id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    due_at timestamptz NOT NULL,
    FOREIGN KEY (workspace_id, job_id) REFERENCES send_jobs (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX send_queue_due ON send_queue (workspace_id, due_at);

CREATE TABLE send_workers (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    owner text NOT NULL,
    lease_until timestamptz NOT NULL,
    jobs uuid[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, owner)
);

SELECT numail_protect_tenant_table(t)
FROM unnest(ARRAY['send_queue', 'send_workers']::regclass[]) AS t;
GRANT SELECT ON send_queue, send_workers TO numail_operator, numail_worker, numail_readonly;
GRANT INSERT, UPDATE, DELETE ON send_queue, send_workers TO numail_worker;

-- Carry over 0004's state: waiting jobs are queued, leased ones belong to their owner's row
-- with the latest of their leases. The migrating role owns these tables but need not be a
-- superuser, and FORCE ROW LEVEL SECURITY binds owners too: with no workspace in the session
-- every row would be hidden and the carry-over would move nothing, silently. So the tables are
-- unforced for these statements (in the migration's transaction) and a check below refuses to
-- commit if anything was left behind.
ALTER TABLE send_jobs NO FORCE ROW LEVEL SECURITY;
ALTER TABLE send_attempts NO FORCE ROW LEVEL SECURITY;
ALTER TABLE send_queue NO FORCE ROW LEVEL SECURITY;
ALTER TABLE send_workers NO FORCE ROW LEVEL SECURITY;
INSERT INTO send_queue (job_id, workspace_id, due_at)
SELECT id, workspace_id, due_at FROM send_jobs
 WHERE state IN ('scheduled', 'unknown') AND lease_owner IS NULL;
INSERT INTO send_workers (workspace_id, owner, lease_until, jobs)
SELECT workspace_id, lease_owner, max(coalesce(lease_until, now())), array_agg(id)
  FROM send_jobs
 WHERE lease_owner IS NOT NULL AND state IN ('claimed', 'sending', 'unknown')
 GROUP BY workspace_id, lease_owner;
-- An attempt in progress had a row with outcome NULL; attempts are now written when they end,
-- and a lost worker's attempt is written by whoever takes its jobs back.
DELETE FROM send_attempts a USING send_jobs j
 WHERE a.outcome IS NULL AND j.id = a.send_job_id AND j.state = 'sending';
UPDATE send_jobs SET lease_until = NULL WHERE lease_until IS NOT NULL;
DO $$
DECLARE
    v_waiting bigint;
    v_leased bigint;
BEGIN
    SELECT count(*) INTO v_waiting FROM send_jobs j
     WHERE j.state IN ('scheduled', 'unknown') AND j.lease_owner IS NULL
       AND NOT EXISTS (SELECT 1 FROM send_queue q WHERE q.job_id = j.id);
    SELECT count(*) INTO v_leased FROM send_jobs j
     WHERE j.lease_owner IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM send_workers w
                        WHERE w.workspace_id = j.workspace_id AND w.owner = j.lease_owner
                          AND j.id = ANY (w.jobs));
    IF v_waiting + v_leased > 0 THEN
        RAISE EXCEPTION '0005 left % waiting jobs unqueued and % leased jobs without a worker',
            v_waiting, v_leased;
    END IF;
END
$$;
ALTER TABLE send_jobs FORCE ROW LEVEL SECURITY;
ALTER TABLE send_attempts FORCE ROW LEVEL SECURITY;
ALTER TABLE send_queue FORCE ROW LEVEL SECURITY;
ALTER TABLE send_workers FORCE ROW LEVEL SECURITY;

-- Queues a job that starts or goes back to waiting. Per row, with a WHEN clause on the
-- triggers, so the transitions of the fast path (claimed, sending, sent) never call it.
CREATE FUNCTION numail_send_jobs_queue() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO send_queue (job_id, workspace_id, due_at)
    VALUES (NEW.id, NEW.workspace_id, NEW.due_at)
    ON CONFLICT (job_id) DO UPDATE SET due_at = EXCLUDED.due_at;
    RETURN NULL;
END
$$;

-- Enqueueing inserts thousands of rows at once: one statement-level insert for all of them.
CREATE FUNCTION numail_send_jobs_queue_inserted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO send_queue (job_id, workspace_id, due_at)
    SELECT i.id, i.workspace_id, i.due_at FROM inserted i
     WHERE i.state IN ('scheduled', 'unknown') AND i.lease_owner IS NULL
    ON CONFLICT (job_id) DO UPDATE SET due_at = EXCLUDED.due_at;
    RETURN NULL;
END
$$;

CREATE TRIGGER send_jobs_queue_inserted AFTER INSERT ON send_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION numail_send_jobs_queue_inserted();
CREATE TRIGGER send_jobs_queue_updated AFTER UPDATE OF state, due_at, lease_owner ON send_jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('scheduled', 'unknown') AND NEW.lease_owner IS NULL
          AND (OLD.state, OLD.due_at, OLD.lease_owner)
              IS DISTINCT FROM (NEW.state, NEW.due_at, NEW.lease_owner))
    EXECUTE FUNCTION numail_send_jobs_queue();

-- Takes jobs back from p_owners, workers that lost them (a lease that ran out) or that no
-- longer have them in hand (a heartbeat says which they hold): claimed -> scheduled, since
-- nothing was sent; sending -> unknown, with an attempt row saying so, settled by asking the
-- provider after p_settle_delay_seconds and never resent blindly; leased unknown -> unknown.
-- Only jobs still leased to one of p_owners move. The caller holds their worker rows.
CREATE FUNCTION numail_take_back_send_jobs(
    p_ids uuid[],
    p_owners text[],
    p_settle_delay_seconds double precision
) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_moved integer;
BEGIN
    WITH lost AS (
        SELECT j.id, j.state, j.attempts, j.lease_owner, j.updated_at FROM send_jobs j
         WHERE j.id = ANY (p_ids) AND j.lease_owner = ANY (p_owners)
           AND j.state IN ('claimed', 'sending', 'unknown')
         FOR UPDATE
    ), moved AS (
        UPDATE send_jobs j
           SET state = CASE lost.state WHEN 'claimed' THEN 'scheduled' ELSE 'unknown' END,
               lease_owner = NULL,
               updated_at = now(),
               unknown_since = CASE lost.state WHEN 'sending' THEN now()
                                   ELSE j.unknown_since END,
               due_at = CASE lost.state
                            WHEN 'sending'
                                THEN now() + make_interval(secs => p_settle_delay_seconds)
                            ELSE j.due_at END,
               last_error = CASE lost.state WHEN 'sending'
                                THEN 'the worker lost its lease while sending'
                                ELSE j.last_error END
          FROM lost
         WHERE j.id = lost.id
        RETURNING j.workspace_id, j.id, lost.state AS was, lost.attempts,
                  lost.lease_owner AS owner, lost.updated_at AS began
    ), recorded AS (
        INSERT INTO send_attempts (workspace_id, send_job_id, attempt, worker, started_at,
                                   finished_at, outcome, detail)
        SELECT m.workspace_id, m.id, m.attempts, m.owner, m.began, now(), 'unknown',
               'the worker lost its lease while sending'
          FROM moved m
         WHERE m.was = 'sending'
        ON CONFLICT (send_job_id, attempt) DO NOTHING
    )
    SELECT count(*) INTO v_moved FROM moved;
    RETURN v_moved;
END
$$;

-- Deletes the rows of this workspace's workers whose lease ran out (never p_owner's) and takes
-- their jobs back. A row its owner has locked is skipped: that worker is alive, mid-transaction.
CREATE FUNCTION numail_recover_send_workers(
    p_owner text,
    p_settle_delay_seconds double precision
) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    v_owners text[];
    v_jobs uuid[];
BEGIN
    WITH dead AS (
        SELECT w.owner FROM send_workers w
         WHERE w.workspace_id = ws AND w.lease_until < now() AND w.owner <> p_owner
         FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM send_workers w USING dead
         WHERE w.workspace_id = ws AND w.owner = dead.owner
        RETURNING w.owner, w.jobs
    )
    SELECT coalesce(array_agg(g.owner), '{}'),
           coalesce((SELECT array_agg(x) FROM gone g2, unnest(g2.jobs) AS x), '{}')
      INTO v_owners, v_jobs
      FROM gone g;
    IF cardinality(v_jobs) > 0 THEN
        PERFORM numail_take_back_send_jobs(v_jobs, v_owners, p_settle_delay_seconds);
    END IF;
    RETURN cardinality(v_owners);
END
$$;

-- Claims up to p_limit waiting jobs for p_owner, in one transaction of the caller's session:
--   1. p_owner's worker row is created or locked, and its lease renewed;
--   2. workers whose lease ran out lose their jobs (numail_recover_send_workers);
--   3. due queue rows are taken oldest first, FOR UPDATE SKIP LOCKED, skipping scheduled jobs
--      of mailboxes that are disconnected or at their daily cap; a row whose job no longer
--      waits is dropped;
--   4. unknown jobs are leased for settling (state stays `unknown`); scheduled jobs whose
--      recipient is suppressed become `suppressed`; the others are admitted against each
--      mailbox's counter row (locked in mailbox order, so claimers never deadlock) and become
--      `claimed`. Jobs the cap leaves out keep their queue row.
-- Returns the leased jobs (state claimed or unknown) and the ones just suppressed.
DROP FUNCTION numail_claim_send_jobs(text, integer, double precision, double precision);
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
    v_disconnected uuid[];
    v_capped uuid[];
    c_ids uuid[];
    c_mbs uuid[];
    c_kind text[];
    c_need boolean[];
    v_stale uuid[];
    v_settle uuid[];
    v_stopped uuid[];
    v_suppressed uuid[];
    v_claim uuid[];
    v_admit uuid[] := '{}';
BEGIN
    IF ws IS NULL THEN
        RAISE EXCEPTION 'numail_claim_send_jobs needs a workspace'
            USING HINT = 'call it inside numail.db.workspace_session';
    END IF;

    INSERT INTO send_workers (workspace_id, owner, lease_until)
    VALUES (ws, p_owner, v_lease)
    ON CONFLICT (workspace_id, owner) DO UPDATE SET lease_until = EXCLUDED.lease_until;

    PERFORM numail_recover_send_workers(p_owner, p_settle_delay_seconds);

    SELECT coalesce(array_agg(m.id) FILTER (WHERE m.state = 'disconnected'), '{}'),
           coalesce(array_agg(m.id) FILTER (WHERE coalesce(c.reserved, 0) >= m.daily_cap), '{}')
      INTO v_disconnected, v_capped
      FROM mailboxes m
      LEFT JOIN mailbox_daily_sends c
        ON c.workspace_id = m.workspace_id AND c.mailbox_id = m.id AND c.day = v_today
     WHERE m.workspace_id = ws
       AND (m.state = 'disconnected' OR coalesce(c.reserved, 0) >= m.daily_cap);

    -- A scheduled job whose recipient is suppressed is of kind 'suppressed'; a step of a
    -- sequence whose lead replied is 'stopped' (the reply detector cancels waiting jobs when
    -- the reply comes in; this catches the ones scheduled since).
    SELECT coalesce(array_agg(s.id ORDER BY s.due_at), '{}'),
           coalesce(array_agg(s.mailbox_id ORDER BY s.due_at), '{}'),
           coalesce(array_agg(s.kind ORDER BY s.due_at), '{}'),
           coalesce(array_agg(s.kind = 'send' AND s.cap_day IS DISTINCT FROM v_today
                              ORDER BY s.due_at), '{}')
      INTO c_ids, c_mbs, c_kind, c_need
      FROM (SELECT q.job_id AS id, j.mailbox_id, j.cap_day, q.due_at,
                   CASE WHEN j.lease_owner IS NOT NULL THEN 'stale'
                        WHEN j.state = 'scheduled'
                             AND EXISTS (SELECT 1 FROM suppression_entries se
                                          WHERE se.workspace_id = l.workspace_id
                                            AND se.email_hash = l.email_hash) THEN 'suppressed'
                        WHEN j.state = 'scheduled' AND j.sequence_id IS NOT NULL
                             AND l.state = 'replied' THEN 'stopped'
                        WHEN j.state = 'scheduled' THEN 'send'
                        WHEN j.state = 'unknown' THEN 'settle'
                        ELSE 'stale' END AS kind
              FROM send_queue q
              JOIN send_jobs j ON j.id = q.job_id
              JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
             WHERE q.workspace_id = ws AND q.due_at <= now()
               AND (j.state <> 'scheduled' OR j.lease_owner IS NOT NULL
                    OR (NOT j.mailbox_id = ANY (v_disconnected)
                        AND (NOT j.mailbox_id = ANY (v_capped) OR j.cap_day = v_today)))
             ORDER BY q.due_at
             LIMIT p_limit
             FOR UPDATE OF q SKIP LOCKED) s;

    SELECT coalesce(array_agg(x.id) FILTER (WHERE x.kind = 'stale'), '{}'),
           coalesce(array_agg(x.id) FILTER (WHERE x.kind = 'settle'), '{}'),
           coalesce(array_agg(x.id) FILTER (WHERE x.kind = 'stopped'), '{}'),
           coalesce(array_agg(x.id) FILTER (WHERE x.kind = 'suppressed'), '{}')
      INTO v_stale, v_settle, v_stopped, v_suppressed
      FROM unnest(c_ids, c_kind) AS x (id, kind);
    -- Jobs that end here, rechecked as they are now; only those that did end count below.
    IF cardinality(v_stopped) + cardinality(v_suppressed) > 0 THEN
        WITH s AS (
            UPDATE send_jobs
               SET state = CASE WHEN id = ANY (v_suppressed) THEN 'suppressed'
                                ELSE 'cancelled' END,
                   updated_at = now(),
                   last_error = CASE WHEN id = ANY (v_suppressed)
                                     THEN 'the recipient is on the suppression list'
                                     ELSE 'the lead replied: its sequence is stopped' END
             WHERE id = ANY (v_stopped || v_suppressed) AND state = 'scheduled'
               AND lease_owner IS NULL
            RETURNING id, state
        )
        SELECT coalesce(array_agg(s.id) FILTER (WHERE s.state = 'cancelled'), '{}'),
               coalesce(array_agg(s.id) FILTER (WHERE s.state = 'suppressed'), '{}')
          INTO v_stopped, v_suppressed
          FROM s;
    END IF;

    -- Daily caps, set-wise: each mailbox's counter row of today exists, is locked in mailbox
    -- order (so claimers never deadlock), and admits, oldest first, what its cap leaves.
    IF EXISTS (SELECT 1 FROM unnest(c_need) AS x (need) WHERE x.need) THEN
        INSERT INTO mailbox_daily_sends (workspace_id, mailbox_id, day, reserved)
        SELECT DISTINCT ws, x.mb, v_today, 0
          FROM unnest(c_mbs, c_need) AS x (mb, need)
         WHERE x.need
        ON CONFLICT DO NOTHING;
        WITH counters AS (
            SELECT c.mailbox_id, m.daily_cap - c.reserved AS room
              FROM mailbox_daily_sends c
              JOIN mailboxes m ON m.workspace_id = c.workspace_id AND m.id = c.mailbox_id
             WHERE c.workspace_id = ws AND c.day = v_today
               AND c.mailbox_id IN (SELECT x.mb FROM unnest(c_mbs, c_need) AS x (mb, need)
                                     WHERE x.need)
             ORDER BY c.mailbox_id
             FOR UPDATE OF c
        ), ranked AS (
            SELECT x.id, x.mb,
                   row_number() OVER (PARTITION BY x.mb ORDER BY x.n) AS rank
              FROM unnest(c_ids, c_mbs, c_need) WITH ORDINALITY AS x (id, mb, need, n)
             WHERE x.need AND NOT x.id = ANY (v_suppressed)
        ), admitted AS (
            SELECT r.id, r.mb FROM ranked r JOIN counters k ON k.mailbox_id = r.mb
             WHERE r.rank <= k.room
        ), counted AS (
            UPDATE mailbox_daily_sends c SET reserved = c.reserved + a.n
              FROM (SELECT mb, count(*) AS n FROM admitted GROUP BY mb) a
             WHERE c.workspace_id = ws AND c.mailbox_id = a.mb AND c.day = v_today
        )
        SELECT coalesce(array_agg(a.id), '{}') INTO v_admit FROM admitted a;
    END IF;

    -- Jobs that already hold a slot of today (re-claimed after a lost claim) need no new one.
    SELECT v_admit || coalesce(array_agg(x.id), '{}') INTO v_claim
      FROM unnest(c_ids, c_kind, c_need) AS x (id, kind, need)
     WHERE x.kind = 'send' AND NOT x.need AND NOT x.id = ANY (v_suppressed);

    WITH c AS (
        UPDATE send_jobs j
           SET state = 'claimed', lease_owner = p_owner, updated_at = now(), cap_day = v_today
         WHERE j.id = ANY (v_claim) AND j.state = 'scheduled' AND j.lease_owner IS NULL
        RETURNING j.id
    )
    SELECT coalesce(array_agg(c.id), '{}') INTO v_claim FROM c;
    WITH u AS (
        UPDATE send_jobs j
           SET lease_owner = p_owner, updated_at = now()
         WHERE j.id = ANY (v_settle) AND j.state = 'unknown' AND j.lease_owner IS NULL
        RETURNING j.id
    )
    SELECT coalesce(array_agg(u.id), '{}') INTO v_settle FROM u;

    -- A row judged stale is rechecked against the job as it is now: the scan read the job
    -- from the statement's snapshot, and a writer may have scheduled it again since, updating
    -- this very queue row through the trigger.
    DELETE FROM send_queue q
     WHERE q.job_id = ANY (v_suppressed || v_stopped || v_claim || v_settle);
    IF cardinality(v_stale) > 0 THEN
        DELETE FROM send_queue q USING send_jobs j
         WHERE q.job_id = ANY (v_stale) AND j.id = q.job_id
           AND (j.lease_owner IS NOT NULL OR j.state NOT IN ('scheduled', 'unknown'));
    END IF;
    IF cardinality(v_claim) + cardinality(v_settle) > 0 THEN
        UPDATE send_workers w SET jobs = w.jobs || v_claim || v_settle
         WHERE w.workspace_id = ws AND w.owner = p_owner;
    END IF;

    RETURN QUERY
    SELECT j.id, j.mailbox_id, j.state, j.message_id, j.attempts,
           l.email, l.first_name, l.last_name, l.company,
           coalesce(j.subject, st.subject_template, ''), coalesce(j.body, st.body_template, '')
      FROM send_jobs j
      JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
      LEFT JOIN sequence_steps st
        ON st.workspace_id = j.workspace_id AND st.sequence_id = j.sequence_id
       AND st.position = j.step
     WHERE j.id = ANY (v_claim || v_settle || v_suppressed);
END
$$;

-- Moves p_owner's leased jobs to `sending` just before the messages are handed over, and
-- renews p_owner's lease; only the jobs returned with state `sending` may be sent, and none
-- when p_owner's lease already ran out. A job whose recipient was suppressed since the claim
-- becomes `suppressed` instead, and a sequence step whose lead has replied `cancelled` (the
-- reply detector leaves leased jobs alone, to keep the lock order). From `unknown` this is only called after the provider said the
-- Message-ID was not sent. The attempt row is written when the attempt ends (finish), or by
-- whoever takes the job back if this worker is lost: `sending` with its attempt count is the
-- record that an attempt began.
DROP FUNCTION numail_start_send_attempts(text, uuid[], double precision);
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
    v_stopped uuid[];
    v_unknown uuid[];
BEGIN
    UPDATE send_workers w SET lease_until = now() + make_interval(secs => p_lease_seconds)
     WHERE w.workspace_id = ws AND w.owner = p_owner AND w.lease_until > now();
    IF NOT FOUND THEN
        RETURN;
    END IF;

    SELECT coalesce(array_agg(s.id) FILTER (WHERE s.suppressed), '{}'),
           coalesce(array_agg(s.id) FILTER (WHERE s.stopped AND NOT s.suppressed), '{}'),
           coalesce(array_agg(s.id) FILTER (WHERE s.state = 'unknown' AND NOT s.suppressed
                                              AND NOT s.stopped), '{}')
      INTO v_suppressed, v_stopped, v_unknown
      FROM (SELECT j.id, j.state,
                   EXISTS (SELECT 1 FROM suppression_entries se
                            WHERE se.workspace_id = l.workspace_id
                              AND se.email_hash = l.email_hash) AS suppressed,
                   j.sequence_id IS NOT NULL AND l.state = 'replied' AS stopped
              FROM send_jobs j
              JOIN leads l ON l.workspace_id = j.workspace_id AND l.id = j.lead_id
             WHERE j.id = ANY (p_ids) AND j.lease_owner = p_owner
               AND j.state IN ('claimed', 'unknown')) s;
    IF cardinality(v_unknown) > 0 THEN
        UPDATE send_attempts a SET settled = 'not_found'
          FROM send_jobs j
         WHERE j.id = ANY (v_unknown) AND a.send_job_id = ANY (v_unknown)
           AND a.send_job_id = j.id AND a.attempt = j.attempts;
    END IF;
    IF cardinality(v_suppressed) + cardinality(v_stopped) > 0 THEN
        UPDATE send_jobs
           SET state = CASE WHEN id = ANY (v_suppressed) THEN 'suppressed' ELSE 'cancelled' END,
               lease_owner = NULL, updated_at = now(),
               last_error = CASE WHEN id = ANY (v_suppressed)
                                 THEN 'the recipient is on the suppression list'
                                 ELSE 'the lead replied: its sequence is stopped' END
         WHERE id = ANY (v_suppressed || v_stopped) AND lease_owner = p_owner
           AND state IN ('claimed', 'unknown');
        UPDATE send_workers w
           SET jobs = ARRAY(SELECT x FROM unnest(w.jobs) AS x
                             WHERE NOT x = ANY (v_suppressed || v_stopped))
         WHERE w.workspace_id = ws AND w.owner = p_owner;
    END IF;

    RETURN QUERY
    WITH started AS (
        UPDATE send_jobs j
           SET state = 'sending', attempts = j.attempts + 1, updated_at = now(),
               settle_checks = j.settle_checks + CASE WHEN j.state = 'unknown' THEN 1 ELSE 0 END
         WHERE j.id = ANY (p_ids) AND j.lease_owner = p_owner
           AND j.state IN ('claimed', 'unknown') AND NOT j.id = ANY (v_suppressed || v_stopped)
        RETURNING j.id, j.attempts
    )
    SELECT s.id, s.attempts, 'sending'::text FROM started s
    UNION ALL
    SELECT x.id, 0, 'suppressed'::text FROM unnest(v_suppressed) AS x (id)
    UNION ALL
    SELECT x.id, 0, 'cancelled'::text FROM unnest(v_stopped) AS x (id);
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
-- A job whose lease p_owner no longer holds is left alone: whoever took it over decides. A job
-- that was `sending` gets its attempt row, with the attempt's outcome.
-- Returns the outcomes that were applied.
DROP FUNCTION numail_finish_send_jobs(text, uuid[], text[], double precision[], integer[],
                                      text[], text[], boolean[]);
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
    a_bounced uuid[];
BEGIN
    UPDATE send_workers w
       SET jobs = ARRAY(SELECT x FROM unnest(w.jobs) AS x WHERE NOT x = ANY (p_ids))
     WHERE w.workspace_id = ws AND w.owner = p_owner;

    -- The outcomes drive the update, each finding its job by primary key, through one
    -- materialized list: joined separately, the planner would put the jobs on the outer side
    -- of a nested loop that scans all the outcomes again for every job (quadratic in the batch).
    -- No FOR UPDATE (a row lock is a write of its own): jobs leased to p_owner change only under
    -- p_owner's worker row, which this transaction holds, and the UPDATE rechecks each state.
    WITH o AS MATERIALIZED (
        SELECT o.*, j.state AS was, j.updated_at AS began
          FROM unnest(p_ids, p_outcomes, p_delays, p_codes, p_details, p_provider_ids, p_bounces)
               AS o (id, outcome, delay, code, detail, provider_id, bounce)
          JOIN send_jobs j ON j.id = o.id
         WHERE j.lease_owner = p_owner
    ), applied AS (
        UPDATE send_jobs j
           SET state = CASE
                   WHEN o.outcome IN ('sent', 'found') THEN 'sent'
                   WHEN o.outcome IN ('unknown', 'unsettled') THEN 'unknown'
                   WHEN o.outcome = 'failed' THEN 'failed'
                   WHEN o.outcome = 'release' AND j.state = 'unknown' THEN 'unknown'
                   ELSE 'scheduled' END,
               lease_owner = NULL,
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
         WHERE j.id = o.id AND j.lease_owner = p_owner
           AND CASE o.outcome
                   WHEN 'sent' THEN j.state = 'sending'
                   WHEN 'unknown' THEN j.state = 'sending'
                   WHEN 'found' THEN j.state = 'unknown'
                   WHEN 'unsettled' THEN j.state = 'unknown'
                   WHEN 'retry' THEN j.state IN ('claimed', 'sending')
                   WHEN 'failed' THEN j.state IN ('claimed', 'sending')
                   WHEN 'release' THEN j.state IN ('claimed', 'sending', 'unknown')
                   ELSE false END
        RETURNING j.workspace_id, j.id, j.mailbox_id, j.lead_id, j.message_id,
                  j.provider_message_id, j.sent_at, j.attempts, o.outcome, o.code, o.detail,
                  coalesce(o.bounce, false) AS bounce, o.was, o.began
    ), attempted AS (
        INSERT INTO send_attempts (workspace_id, send_job_id, attempt, worker, started_at,
                                   finished_at, outcome, reply_code, detail)
        SELECT a.workspace_id, a.id, a.attempts, p_owner, a.began, now(),
               CASE a.outcome WHEN 'sent' THEN 'sent' WHEN 'unknown' THEN 'unknown'
                              WHEN 'retry' THEN 'transient' WHEN 'failed' THEN 'permanent'
                              ELSE 'released' END,
               a.code, a.detail
          FROM applied a
         WHERE a.was = 'sending'
        ON CONFLICT (send_job_id, attempt) DO NOTHING
    ), recorded AS (
        INSERT INTO sent_messages (workspace_id, send_job_id, mailbox_id, lead_id, message_id,
                                   provider_message_id, sent_at)
        SELECT a.workspace_id, a.id, a.mailbox_id, a.lead_id, a.message_id,
               a.provider_message_id, a.sent_at
          FROM applied a
         WHERE a.outcome IN ('sent', 'found')
        ON CONFLICT (send_job_id) DO NOTHING
    )
    SELECT coalesce(array_agg(a.id), '{}'), coalesce(array_agg(a.outcome), '{}'),
           coalesce(array_agg(a.attempts), '{}'),
           coalesce(array_agg(a.lead_id) FILTER (WHERE a.outcome = 'failed' AND a.bounce), '{}')
      INTO a_ids, a_outcomes, a_attempts, a_bounced
      FROM applied a;

    IF 'found' = ANY (a_outcomes) THEN
        UPDATE send_attempts t SET settled = 'found'
          FROM unnest(a_ids, a_outcomes, a_attempts) AS x (id, outcome, attempt)
         WHERE t.send_job_id = ANY (a_ids) AND t.send_job_id = x.id AND t.attempt = x.attempt
           AND x.outcome = 'found';
    END IF;
    IF cardinality(a_bounced) > 0 THEN
        INSERT INTO suppression_entries (workspace_id, email_hash, reason)
        SELECT l.workspace_id, l.email_hash, 'hard_bounce'
          FROM leads l
         WHERE l.id = ANY (a_bounced)
        ON CONFLICT (workspace_id, email_hash) DO NOTHING;
        UPDATE leads l SET state = 'bounced' WHERE l.id = ANY (a_bounced);
    END IF;

    RETURN QUERY SELECT x.id, x.outcome FROM unnest(a_ids, a_outcomes) AS x (id, outcome);
END
$$;

-- Renews p_owner's lease and hands back the jobs its row lists that the worker no longer has
-- in hand (p_held): a batch that died with an exception, say. Returns how many jobs p_owner
-- still holds, or -1 when its row is gone: another worker took its jobs back, so none of them
-- may be sent by p_owner any more.
CREATE FUNCTION numail_send_heartbeat(
    p_owner text,
    p_held uuid[],
    p_lease_seconds double precision,
    p_settle_delay_seconds double precision
) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    v_jobs uuid[];
    v_orphans uuid[];
BEGIN
    SELECT w.jobs INTO v_jobs FROM send_workers w
     WHERE w.workspace_id = ws AND w.owner = p_owner
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    v_orphans := ARRAY(SELECT x FROM unnest(v_jobs) AS x WHERE NOT x = ANY (p_held));
    UPDATE send_workers w
       SET lease_until = now() + make_interval(secs => p_lease_seconds),
           jobs = ARRAY(SELECT x FROM unnest(v_jobs) AS x WHERE x = ANY (p_held))
     WHERE w.workspace_id = ws AND w.owner = p_owner;
    IF cardinality(v_orphans) > 0 THEN
        PERFORM numail_take_back_send_jobs(v_orphans, ARRAY[p_owner], p_settle_delay_seconds);
    END IF;
    RETURN cardinality(v_jobs) - cardinality(v_orphans);
END
$$;

-- Ends p_owner's row when the worker stops cleanly, after it released what it held.
CREATE FUNCTION numail_send_worker_stopped(
    p_owner text,
    p_settle_delay_seconds double precision
) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    ws uuid := numail_current_workspace();
    v_jobs uuid[];
BEGIN
    DELETE FROM send_workers w WHERE w.workspace_id = ws AND w.owner = p_owner
    RETURNING w.jobs INTO v_jobs;
    IF v_jobs IS NULL OR cardinality(v_jobs) = 0 THEN
        RETURN 0;
    END IF;
    RETURN numail_take_back_send_jobs(v_jobs, ARRAY[p_owner], p_settle_delay_seconds);
END
$$;

REVOKE ALL ON FUNCTION
    numail_take_back_send_jobs(uuid[], text[], double precision),
    numail_recover_send_workers(text, double precision),
    numail_claim_send_jobs(text, integer, double precision, double precision),
    numail_start_send_attempts(text, uuid[], double precision),
    numail_finish_send_jobs(text, uuid[], text[], double precision[], integer[], text[], text[],
                            boolean[]),
    numail_send_heartbeat(text, uuid[], double precision, double precision),
    numail_send_worker_stopped(text, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    numail_take_back_send_jobs(uuid[], text[], double precision),
    numail_recover_send_workers(text, double precision),
    numail_claim_send_jobs(text, integer, double precision, double precision),
    numail_start_send_attempts(text, uuid[], double precision),
    numail_finish_send_jobs(text, uuid[], text[], double precision[], integer[], text[], text[],
                            boolean[]),
    numail_send_heartbeat(text, uuid[], double precision, double precision),
    numail_send_worker_stopped(text, double precision)
    TO numail_worker;
