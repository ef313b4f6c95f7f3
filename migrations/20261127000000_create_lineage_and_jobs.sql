-- Lineage (datasets, models, their edges) and the job queue (jobs, events, workers).
-- States and kinds are text with named CHECK constraints rather than Postgres enums:
-- adding a value later is a constraint swap inside a transaction, which ALTER TYPE is not.

CREATE TABLE datasets (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    sha256        text NOT NULL,
    size_bytes    bigint NOT NULL,
    num_examples  bigint NOT NULL,
    num_features  integer NOT NULL,
    num_classes   integer NOT NULL,
    -- Relative to the artifact root.
    path          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT datasets_name_unique UNIQUE (name),
    CONSTRAINT datasets_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$')
);

CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL,
    state         text NOT NULL DEFAULT 'queued',
    -- The validated spec with defaults filled in: what the job really ran with.
    spec          jsonb NOT NULL,
    model_name    text NOT NULL,
    dataset_id    uuid NOT NULL REFERENCES datasets (id),
    parent_id     uuid,
    priority      integer NOT NULL DEFAULT 0,
    request_id    text,
    worker_id     uuid,
    -- The fencing token: bumped on every lease, and every report must carry it.
    attempt       integer NOT NULL DEFAULT 0,
    error         text,
    model_id      uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_kind_valid CHECK (kind IN ('train', 'finetune', 'transfer')),
    CONSTRAINT jobs_state_valid
        CHECK (state IN ('queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled')),
    CONSTRAINT jobs_parent_matches_kind CHECK ((kind = 'train') = (parent_id IS NULL)),
    CONSTRAINT jobs_leased_has_worker
        CHECK (state NOT IN ('leased', 'running') OR worker_id IS NOT NULL),
    CONSTRAINT jobs_succeeded_has_model CHECK ((state = 'succeeded') = (model_id IS NOT NULL)),
    CONSTRAINT jobs_request_id_unique UNIQUE (request_id)
);

-- Shaped like the claim query: the next queued job by priority, then age.
CREATE INDEX jobs_claim_order ON jobs (priority DESC, created_at, id) WHERE state = 'queued';
CREATE INDEX jobs_by_worker ON jobs (worker_id) WHERE state IN ('leased', 'running');

CREATE TABLE models (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    architecture    jsonb NOT NULL,
    weights_sha256  text NOT NULL,
    weights_bytes   bigint NOT NULL,
    -- Relative to the artifact root.
    weights_path    text NOT NULL,
    -- 'import' or the kind of the job that made it.
    source          text NOT NULL,
    job_id          uuid REFERENCES jobs (id),
    metrics         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_name_unique UNIQUE (name),
    CONSTRAINT models_source_valid CHECK (source IN ('import', 'train', 'finetune', 'transfer')),
    CONSTRAINT models_job_matches_source CHECK ((source = 'import') = (job_id IS NULL)),
    CONSTRAINT models_sha256_format CHECK (weights_sha256 ~ '^[0-9a-f]{64}$')
);

ALTER TABLE jobs ADD CONSTRAINT jobs_parent_fk FOREIGN KEY (parent_id) REFERENCES models (id);
ALTER TABLE jobs ADD CONSTRAINT jobs_model_fk FOREIGN KEY (model_id) REFERENCES models (id);

-- A parent always exists before its child and rows are never updated, so the lineage
-- graph cannot hold a cycle.
CREATE TABLE model_parents (
    child_id   uuid NOT NULL REFERENCES models (id),
    parent_id  uuid NOT NULL REFERENCES models (id),
    relation   text NOT NULL,
    details    jsonb NOT NULL,
    PRIMARY KEY (child_id, parent_id),
    CONSTRAINT model_parents_relation_valid
        CHECK (relation IN ('finetune', 'transfer', 'direct', 'module')),
    CONSTRAINT model_parents_not_self CHECK (child_id <> parent_id)
);
CREATE INDEX model_parents_by_parent ON model_parents (parent_id);

CREATE TABLE model_datasets (
    model_id    uuid NOT NULL REFERENCES models (id),
    dataset_id  uuid NOT NULL REFERENCES datasets (id),
    role        text NOT NULL DEFAULT 'train',
    PRIMARY KEY (model_id, dataset_id, role),
    CONSTRAINT model_datasets_role_valid CHECK (role IN ('train'))
);
CREATE INDEX model_datasets_by_dataset ON model_datasets (dataset_id);

CREATE TABLE job_events (
    sequence  bigserial PRIMARY KEY,
    job_id    uuid NOT NULL REFERENCES jobs (id),
    at        timestamptz NOT NULL DEFAULT now(),
    -- A state change carries `state`; a progress report carries `progress`.
    state     text,
    progress  jsonb,
    message   text NOT NULL DEFAULT '',
    CONSTRAINT job_events_one_kind CHECK ((state IS NULL) <> (progress IS NULL))
);
CREATE INDEX job_events_by_job ON job_events (job_id, sequence);

CREATE TABLE workers (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    devices        jsonb NOT NULL,
    labels         jsonb NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD CONSTRAINT jobs_worker_fk FOREIGN KEY (worker_id) REFERENCES workers (id);

-- A model name is taken from the moment a job that will create it is submitted, so two
-- jobs cannot race to the same name; a failed or cancelled job gives its name back.
CREATE UNIQUE INDEX jobs_model_name_active ON jobs (model_name)
    WHERE state NOT IN ('failed', 'cancelled');
