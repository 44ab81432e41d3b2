-- Organizations, leads and conversations. Every row carries a `version` that a trigger bumps on
-- each update (responses expose it as the ETag) and an `updated_at` the same trigger sets.

CREATE TABLE organizations (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    phone_number      text        NOT NULL CHECK (phone_number ~ '^\+[0-9]{4,15}$'),
    timezone          text        NOT NULL DEFAULT 'UTC',
    greeting_template text        NOT NULL DEFAULT 'Good {time_of_day}, {first_name}! Thanks for calling {org_name}.',
    settings          jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(settings) = 'object'),
    version           bigint      NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- The number a caller dialled identifies exactly one organization.
CREATE UNIQUE INDEX organizations_phone_number_key ON organizations (phone_number);

CREATE TABLE leads (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone_number    text        NOT NULL CHECK (phone_number ~ '^\+[0-9]{4,15}$'),
    first_name      text,
    last_name       text,
    email           text,
    status          text        NOT NULL DEFAULT 'new'
                    CHECK (status IN ('new', 'contacted', 'qualified', 'customer', 'lost')),
    attributes      jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    version         bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT leads_organization_id_phone_number_key UNIQUE (organization_id, phone_number)
);
CREATE INDEX leads_phone_number_idx ON leads (phone_number);

CREATE TABLE conversations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lead_id         uuid        NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    channel         text        NOT NULL CHECK (channel IN ('voice', 'sms', 'email', 'chat', 'whatsapp')),
    direction       text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    summary         text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    version         bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_ended_after_started CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX conversations_lead_id_started_at_idx ON conversations (lead_id, started_at DESC);

CREATE FUNCTION sidecache_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER organizations_bump_version BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION sidecache_bump_version();
CREATE TRIGGER leads_bump_version BEFORE UPDATE ON leads
    FOR EACH ROW EXECUTE FUNCTION sidecache_bump_version();
CREATE TRIGGER conversations_bump_version BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION sidecache_bump_version();
