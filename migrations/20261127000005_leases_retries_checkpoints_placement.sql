-- Jobs that survive failure: leases that expire unless renewed, retries with backoff up
-- to a per-job maximum, checkpoints to resume from, and placement requirements.
ALTER TABLE jobs
    -- A leased or running job whose lease passes this moment goes back to the queue.
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    -- Attempts that ended in a retryable error or an expired lease (hand-backs do not count).
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    -- A retried job waits for its backoff to pass before it can be leased again.
    ADD COLUMN not_before timestamptz NOT NULL DEFAULT now(),
    -- The last checkpoint of an unfinished job: {step, loss_sum, correct, tensors}.
    ADD COLUMN checkpoint jsonb,
    -- What a worker must offer: {device, min_device_memory_bytes, labels}.
    ADD COLUMN requirements jsonb NOT NULL DEFAULT '{}',
    -- The sha256 of the submission a request id stands for: a different one is refused.
    ADD COLUMN request_fingerprint text;

ALTER TABLE workers
    ADD COLUMN concurrency integer NOT NULL DEFAULT 1 CHECK (concurrency >= 1);

-- Every attempt at a job: who ran it, when, and how it ended.
CREATE TABLE job_attempts (
    job_id      uuid NOT NULL REFERENCES jobs (id),
    attempt     integer NOT NULL,
    worker_id   uuid NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    -- running, succeeded, failed, retried, lease_expired, released, cancelled
    outcome     text NOT NULL DEFAULT 'running',
    error       text,
    PRIMARY KEY (job_id, attempt)
);

CREATE INDEX jobs_queued ON jobs (priority DESC, created_at) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state IN ('leased', 'running');
