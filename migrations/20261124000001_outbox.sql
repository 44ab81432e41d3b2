-- Change stream: every committed change to organizations, leads and conversations appends rows
-- to the outbox (in the writing transaction) and NOTIFYs `sidecache_changes` with the newest id.
-- NOTIFY is delivered at commit and lost while a listener is away; the outbox is not, so
-- listeners replay it on every (re)connect.
--
-- The triggers are statement-level with transition tables: a batch job that updates 100,000 rows
-- in one statement costs one INSERT ... SELECT and one NOTIFY, not 100,000 trigger calls.
--
-- Ids come from a sequence, so a transaction can commit a lower id after a higher one is seen.
-- Each row therefore records its transaction id (`txid`): a reader remembers the snapshot xmin
-- of its last read and re-reads every row of a transaction that might still have been open then
-- (`id > last_id OR txid >= last_xmin`). Sidecache's own writes also use `txid` to recognise
-- changes they have already invalidated.

CREATE TABLE sidecache_outbox (
    id              bigserial   PRIMARY KEY,
    txid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    table_name      text        NOT NULL,
    op              text        NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    row_id          uuid        NOT NULL,
    organization_id uuid,
    lead_id         uuid,
    old_phone       text,
    new_phone       text,
    -- Who wrote it: `application_name` of the writing session (sidecache sets `sidecache/<id>`).
    origin          text        DEFAULT current_setting('application_name', true),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX sidecache_outbox_txid_idx ON sidecache_outbox (txid);
CREATE INDEX sidecache_outbox_created_at_idx ON sidecache_outbox (created_at);

-- NOTIFY once per statement that wrote outbox rows; the payload is the newest id (informative:
-- listeners read the outbox, not the payload).
CREATE FUNCTION sidecache_notify_outbox(written bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF written > 0 THEN
        PERFORM pg_notify('sidecache_changes', currval('sidecache_outbox_id_seq')::text);
    END IF;
END;
$$;

CREATE FUNCTION sidecache_capture_organizations() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, new_phone)
        SELECT 'organizations', 'insert', n.id, n.id, n.phone_number FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        -- A full join: an update that changes the primary key drops the old id and adds the new.
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, old_phone, new_phone)
        SELECT 'organizations',
               CASE WHEN o.id IS NULL THEN 'insert' WHEN n.id IS NULL THEN 'delete' ELSE 'update' END,
               COALESCE(n.id, o.id), COALESCE(n.id, o.id), o.phone_number, n.phone_number
        FROM new_rows n FULL JOIN old_rows o ON o.id = n.id;
    ELSE
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, old_phone)
        SELECT 'organizations', 'delete', o.id, o.id, o.phone_number FROM old_rows o;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    PERFORM sidecache_notify_outbox(written);
    RETURN NULL;
END;
$$;

CREATE FUNCTION sidecache_capture_leads() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, lead_id, new_phone)
        SELECT 'leads', 'insert', n.id, n.organization_id, n.id, n.phone_number FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, lead_id, old_phone, new_phone)
        SELECT 'leads',
               CASE WHEN o.id IS NULL THEN 'insert' WHEN n.id IS NULL THEN 'delete' ELSE 'update' END,
               COALESCE(n.id, o.id), COALESCE(n.organization_id, o.organization_id),
               COALESCE(n.id, o.id),
               -- A lead moved to another organization: the old organization's phone key is
               -- written as a delete below, so the update only names the new one.
               CASE WHEN o.organization_id IS DISTINCT FROM n.organization_id AND n.id IS NOT NULL
                    THEN NULL ELSE o.phone_number END,
               n.phone_number
        FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
        UNION ALL
        SELECT 'leads', 'delete', o.id, o.organization_id, o.id, o.phone_number, NULL
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.organization_id IS DISTINCT FROM n.organization_id;
    ELSE
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, lead_id, old_phone)
        SELECT 'leads', 'delete', o.id, o.organization_id, o.id, o.phone_number FROM old_rows o;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    PERFORM sidecache_notify_outbox(written);
    RETURN NULL;
END;
$$;

CREATE FUNCTION sidecache_capture_conversations() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, lead_id)
        SELECT 'conversations', 'insert', n.id, n.organization_id, n.lead_id FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, lead_id)
        SELECT 'conversations',
               CASE WHEN o.id IS NULL THEN 'insert' WHEN n.id IS NULL THEN 'delete' ELSE 'update' END,
               COALESCE(n.id, o.id), COALESCE(n.organization_id, o.organization_id),
               COALESCE(n.lead_id, o.lead_id)
        FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
        UNION ALL
        -- Moved to another lead: the old lead's derived entries go too.
        SELECT 'conversations', 'delete', o.id, o.organization_id, o.lead_id
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.lead_id IS DISTINCT FROM n.lead_id;
    ELSE
        INSERT INTO sidecache_outbox (table_name, op, row_id, organization_id, lead_id)
        SELECT 'conversations', 'delete', o.id, o.organization_id, o.lead_id FROM old_rows o;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    PERFORM sidecache_notify_outbox(written);
    RETURN NULL;
END;
$$;

CREATE TRIGGER organizations_capture_insert AFTER INSERT ON organizations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_organizations();
CREATE TRIGGER organizations_capture_update AFTER UPDATE ON organizations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_organizations();
CREATE TRIGGER organizations_capture_delete AFTER DELETE ON organizations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_organizations();

CREATE TRIGGER leads_capture_insert AFTER INSERT ON leads
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_leads();
CREATE TRIGGER leads_capture_update AFTER UPDATE ON leads
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_leads();
CREATE TRIGGER leads_capture_delete AFTER DELETE ON leads
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_leads();

CREATE TRIGGER conversations_capture_insert AFTER INSERT ON conversations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_conversations();
CREATE TRIGGER conversations_capture_update AFTER UPDATE ON conversations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_conversations();
CREATE TRIGGER conversations_capture_delete AFTER DELETE ON conversations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sidecache_capture_conversations();
