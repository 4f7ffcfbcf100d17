-- The mailbox registry the operator keeps (numail/db/mailboxes.py): one row per Mailbox object.
--
-- A row's id is the Mailbox's metadata.uid. A Mailbox deleted and created again under the same
-- name is a new object with a new uid, so it gets a new row; the old one stays, `disconnected`,
-- because send jobs reference it. Only one row per name may be live, which is all the old
-- UNIQUE (workspace_id, namespace, name) was meant to say.
ALTER TABLE mailboxes DROP CONSTRAINT mailboxes_workspace_id_namespace_name_key;
CREATE UNIQUE INDEX mailboxes_live_name ON mailboxes (workspace_id, namespace, name)
    WHERE state <> 'disconnected';
