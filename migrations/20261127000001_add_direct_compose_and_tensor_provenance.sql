-- Direct and compose jobs, several parents per job, jobs without data, and per-tensor
-- provenance. A job's parents live in its spec (they are models, which are never
-- deleted); lineage edges in model_parents are what queries walk.

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_valid;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_valid
    CHECK (kind IN ('train', 'finetune', 'transfer', 'direct', 'compose'));
ALTER TABLE jobs DROP CONSTRAINT jobs_parent_matches_kind;
ALTER TABLE jobs DROP CONSTRAINT jobs_parent_fk;
ALTER TABLE jobs DROP COLUMN parent_id;
-- A direct job needs no data.
ALTER TABLE jobs ALTER COLUMN dataset_id DROP NOT NULL;

ALTER TABLE models DROP CONSTRAINT models_source_valid;
ALTER TABLE models ADD CONSTRAINT models_source_valid
    CHECK (source IN ('import', 'train', 'finetune', 'transfer', 'direct', 'compose'));

-- 'eval': the data a model that trained nothing was scored on.
ALTER TABLE model_datasets DROP CONSTRAINT model_datasets_role_valid;
ALTER TABLE model_datasets ADD CONSTRAINT model_datasets_role_valid CHECK (role IN ('train', 'eval'));

CREATE TABLE model_tensors (
    model_id        uuid NOT NULL REFERENCES models (id),
    name            text NOT NULL,
    sha256          text NOT NULL,
    dtype           text NOT NULL,
    shape           bigint[] NOT NULL,
    status          text NOT NULL,
    origin_model_id uuid REFERENCES models (id),
    origin_tensor   text,
    PRIMARY KEY (model_id, name),
    CONSTRAINT model_tensors_status_valid
        CHECK (status IN ('inherited', 'trained', 'new', 'interpolated')),
    -- Only a new tensor has no origin.
    CONSTRAINT model_tensors_origin_matches_status
        CHECK ((status = 'new') = (origin_model_id IS NULL)
               AND (origin_model_id IS NULL) = (origin_tensor IS NULL)),
    CONSTRAINT model_tensors_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$')
);
-- Tensor blame and "who inherited this tensor" walk from origins.
CREATE INDEX model_tensors_by_origin ON model_tensors (origin_model_id, origin_tensor);
