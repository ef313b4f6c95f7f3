-- Every blob (tensor, dataset, program) lives under its sha256 alone: a dataset's path
-- is no longer stored.
ALTER TABLE datasets DROP COLUMN path;

-- Blobs a worker or client was told are stored (or is about to upload) are held from
-- garbage collection until `held_until`, so what a running job will refer to survives.
CREATE TABLE blob_holds (
    sha256      text PRIMARY KEY,
    held_until  timestamptz NOT NULL
);
