-- Jobs trained on several ranks at once (data parallel). A job's requirements may ask for
-- `world_size` ranks (and `min_ranks` for an elastic run); every rank takes one slot of a
-- worker (of its `concurrency`). All ranks of an attempt are leased together, in one
-- transaction, or none are. The job's own lease (`jobs.worker_id`, `lease_expires_at`)
-- is rank 0's: rank 0 reports progress, checkpoints and completes. Every rank has a row
-- here, rank 0's included, so an attempt's placement reads from one table.

-- Where a worker's ranks meet their peers: the address other workers reach it at, and
-- the port its rank 0 hosts the c10d store on (0: it hosts no ranks of a gang).
ALTER TABLE workers
    ADD COLUMN collective_address text NOT NULL DEFAULT '',
    ADD COLUMN collective_port integer NOT NULL DEFAULT 0
        CHECK (collective_port BETWEEN 0 AND 65535);

CREATE TABLE job_ranks (
    job_id      uuid NOT NULL REFERENCES jobs (id),
    attempt     integer NOT NULL,
    rank        integer NOT NULL CHECK (rank >= 0),
    worker_id   uuid NOT NULL REFERENCES workers (id),
    -- The device the rank is pinned to (`cpu`, `cuda:1`).
    device      text NOT NULL,
    -- Ranks other than 0 hold a lease of their own, renewed by their worker's heartbeats;
    -- one that expires ends the attempt for every rank.
    lease_expires_at timestamptz NOT NULL,
    -- Whether the worker has been sent its assignment for this rank.
    delivered   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, attempt, rank)
);
CREATE INDEX job_ranks_by_worker ON job_ranks (worker_id);

-- What each attempt ran as: its ranks, the collectives' backend, and, when it failed
-- because a rank was lost, which one.
ALTER TABLE job_attempts
    ADD COLUMN world_size integer NOT NULL DEFAULT 1,
    ADD COLUMN backend text NOT NULL DEFAULT '',
    ADD COLUMN failed_rank integer;

-- The slots a worker's leases take now: its single-rank jobs and rank-0 roles (one each,
-- through jobs.worker_id) and every other rank of a current attempt it hosts. PL/pgSQL,
-- not SQL: a SQL function holding subqueries is never inlined, and was planned again on
-- every call — 0.6 ms of every claim, a quarter of the queue's throughput.
CREATE FUNCTION worker_busy(worker uuid) RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT count(*) FROM jobs
             WHERE worker_id = worker AND state IN ('leased', 'running'))
         + (SELECT count(*) FROM job_ranks r JOIN jobs j ON j.id = r.job_id AND j.attempt = r.attempt
             WHERE r.worker_id = worker AND r.rank > 0 AND j.state IN ('leased', 'running'));
END
$$;

-- The claim of migration 000007, aware of gangs. The worker's row is share-locked, so a
-- gang placement (which locks the rows of the workers it places ranks on) and this claim
-- never both count the same free slot. The next fitting job is leased when it has one
-- rank; a gang job is returned unleased (state `queued`, still locked by this statement
-- only) for the caller to place in a transaction of its own (`Db::claim_gang`).
-- `singles_only` skips gangs: the claim after a gang could not be placed.
DROP FUNCTION claim_job(uuid, double precision, text);
CREATE FUNCTION claim_job(worker uuid, lease_seconds double precision, events_channel text,
                          singles_only boolean)
RETURNS SETOF jobs
LANGUAGE sql
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
    WITH me AS (
        SELECT concurrency, labels, devices FROM workers WHERE id = worker FOR SHARE),
    next AS (
        SELECT j.id, coalesce((j.requirements->>'world_size')::int, 1) AS world_size
          FROM jobs j
         WHERE j.state = 'queued' AND j.not_before <= now()
           AND (NOT singles_only OR coalesce((j.requirements->>'world_size')::int, 1) = 1)
           AND worker_busy(worker) < (SELECT concurrency FROM me)
           AND (SELECT labels FROM me) @> coalesce(j.requirements->'labels', '{}')
           AND (coalesce(j.requirements->>'device', '') = ''
                AND coalesce((j.requirements->>'min_device_memory_bytes')::numeric, 0) = 0
                OR EXISTS (
                   SELECT 1 FROM me, jsonb_array_elements(me.devices) d
                    WHERE (coalesce(j.requirements->>'device', '') = ''
                           OR split_part(d->>'name', ':', 1) = j.requirements->>'device')
                      AND coalesce((d->>'memory_bytes')::numeric, 0)
                          >= coalesce((j.requirements->>'min_device_memory_bytes')::numeric, 0)))
         ORDER BY j.priority DESC, j.created_at, j.id
         LIMIT 1
         FOR UPDATE OF j SKIP LOCKED),
    leased AS (
        UPDATE jobs SET state = 'leased', worker_id = worker, attempt = attempt + 1,
                        lease_expires_at = now() + make_interval(secs => lease_seconds),
                        updated_at = now()
          FROM next WHERE jobs.id = next.id AND next.world_size = 1
        RETURNING jobs.*),
    attempt AS (
        INSERT INTO job_attempts (job_id, attempt, worker_id)
        SELECT id, attempt, worker FROM leased),
    event AS (
        INSERT INTO job_events (job_id, state, message)
        SELECT id, 'leased',
               format('leased to worker %s, attempt %s%s', worker, attempt,
                      ', resuming from step ' || (checkpoint->>'step'))
          FROM leased)
    SELECT leased.* FROM leased
     CROSS JOIN LATERAL (SELECT pg_notify(events_channel, leased.id::text)) notified
    UNION ALL
    SELECT j.* FROM jobs j JOIN next ON j.id = next.id WHERE next.world_size > 1;
$$;

-- When a worker's assignment stream last closed: a worker is connected while it has been
-- seen since. A gang that loses a rank names the one whose worker went away, and the next
-- placement skips it at once instead of counting it connected for another 15 s.
ALTER TABLE workers ADD COLUMN disconnected_at timestamptz;
