-- Application roles and the session setting that every row-level security policy keys on.
--
-- The roles are NOLOGIN groups: deployments create LOGIN users that are members of one of them.
-- Roles are cluster-wide, so they are created only if absent; an existing role that could bypass
-- row-level security is refused, because every policy below would then be void for it.

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['numail_operator', 'numail_worker', 'numail_readonly'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS NOSUPERUSER', role_name);
        ELSIF EXISTS (
            SELECT 1 FROM pg_roles WHERE rolname = role_name AND (rolbypassrls OR rolsuper)
        ) THEN
            RAISE EXCEPTION 'role % bypasses row-level security', role_name
                USING HINT = format('run ALTER ROLE %I NOSUPERUSER NOBYPASSRLS, then migrate again',
                                    role_name);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO numail_operator, numail_worker, numail_readonly;

-- The workspace of the current transaction, or NULL outside numail.db.workspace_session().
-- current_setting('app.workspace_id', true) is '' (not NULL) once a transaction-local value has
-- been set and rolled back in this session, hence the NULLIF. A plain SQL function, so the
-- planner inlines it into each policy and can still use the workspace_id indexes.
CREATE FUNCTION numail_current_workspace() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.workspace_id', true), '')::uuid $$;
