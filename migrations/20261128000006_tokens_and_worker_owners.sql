-- Bearer tokens with roles. Only a token's SHA-256 is kept: the secret is shown once.
CREATE TABLE tokens (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    role           text NOT NULL,
    secret_sha256  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    -- The token that created this one; NULL for a bootstrap token.
    created_by     uuid REFERENCES tokens (id),
    CONSTRAINT tokens_role_valid CHECK (role IN ('admin', 'submitter', 'reader', 'worker')),
    CONSTRAINT tokens_secret_unique UNIQUE (secret_sha256)
);
-- A name means one token among those not revoked.
CREATE UNIQUE INDEX tokens_name_active ON tokens (name) WHERE revoked_at IS NULL;

-- Every worker belongs to the worker token that registered it: that token, and no other,
-- acts for the worker and its leases. Workers registered before tokens existed have none
-- and can no longer be acted for.
ALTER TABLE workers ADD COLUMN token_id uuid REFERENCES tokens (id);
