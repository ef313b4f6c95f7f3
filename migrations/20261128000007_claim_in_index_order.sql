-- jobs_queued (priority DESC, created_at) WHERE state = 'queued' repeated the leading
-- columns of jobs_claim_order, which the claim uses; every change of a job's state paid
-- for both.
DROP INDEX jobs_queued;

-- The claim: leases to a worker the next queued job that fits it (its devices, memory and
-- labels meet the job's requirements, its backoff has passed), highest priority first,
-- then oldest; none while the worker runs as many jobs as its concurrency. One call, so
-- one round trip, atomic: the lease, its attempt row, its event and the event's
-- notification. SKIP LOCKED lets concurrent dispatchers (other workers, other replicas)
-- pass over a row another one is claiming instead of queueing behind it.
--
-- It walks jobs_claim_order and stops at the first fit. Left to itself, the planner,
-- whose statistics of a queue are always stale, chose to fetch every queued row, and the
-- dead index entries of every job claimed since the last vacuum, then sort them, on every
-- claim: a drain of 5,000 jobs ran at half the speed of one of 2,000. The settings below
-- hold for the planning of this function's statement only.
CREATE FUNCTION claim_job(worker uuid, lease_seconds double precision, events_channel text)
RETURNS SETOF jobs
LANGUAGE sql
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
    WITH next AS (
        SELECT j.id FROM jobs j
         WHERE j.state = 'queued' AND j.not_before <= now()
           AND (SELECT count(*) FROM jobs busy
                 WHERE busy.worker_id = worker AND busy.state IN ('leased', 'running'))
               < (SELECT concurrency FROM workers WHERE id = worker)
           AND (SELECT labels FROM workers WHERE id = worker)
               @> coalesce(j.requirements->'labels', '{}')
           AND (coalesce(j.requirements->>'device', '') = ''
                AND coalesce((j.requirements->>'min_device_memory_bytes')::numeric, 0) = 0
                OR EXISTS (
                   SELECT 1 FROM workers w, jsonb_array_elements(w.devices) d
                    WHERE w.id = worker
                      AND (coalesce(j.requirements->>'device', '') = ''
                           OR split_part(d->>'name', ':', 1) = j.requirements->>'device')
                      AND coalesce((d->>'memory_bytes')::numeric, 0)
                          >= coalesce((j.requirements->>'min_device_memory_bytes')::numeric, 0)))
         ORDER BY j.priority DESC, j.created_at, j.id
         LIMIT 1
         FOR UPDATE SKIP LOCKED),
    leased AS (
        UPDATE jobs SET state = 'leased', worker_id = worker, attempt = attempt + 1,
                        lease_expires_at = now() + make_interval(secs => lease_seconds),
                        updated_at = now()
          FROM next WHERE jobs.id = next.id
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
     CROSS JOIN LATERAL (SELECT pg_notify(events_channel, leased.id::text)) notified;
$$;
