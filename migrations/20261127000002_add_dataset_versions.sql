-- Datasets are versioned by name: registering new content under a name adds the next
-- version; content a name already holds is refused. Models point at one exact version.
ALTER TABLE datasets ADD COLUMN version integer NOT NULL DEFAULT 1;
ALTER TABLE datasets DROP CONSTRAINT datasets_name_unique;
ALTER TABLE datasets ADD CONSTRAINT datasets_name_version_unique UNIQUE (name, version);
ALTER TABLE datasets ADD CONSTRAINT datasets_name_sha256_unique UNIQUE (name, sha256);
ALTER TABLE datasets ADD CONSTRAINT datasets_version_positive CHECK (version > 0);
