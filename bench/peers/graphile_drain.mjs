// The peer of the queue throughput in bench/queue_peers.sh: graphile-worker, a job queue
// on PostgreSQL, drains N no-op jobs with C slots in one worker process, with its default
// settings (one claim and one completion per job). Prints one line: "<jobs/s> <seconds>".
// Usage: node graphile_drain.mjs DATABASE_URL N C
import { run, runMigrations, makeWorkerUtils, Logger } from 'graphile-worker';
import pg from 'pg';

const [connectionString, N, C] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const quiet = new Logger(() => (level, message) => {
  if (level === 'error') console.error(message);
});
await runMigrations({ connectionString, logger: quiet });
const utils = await makeWorkerUtils({ connectionString, logger: quiet });
for (let i = 0; i < N; i += 5000) {
  const specs = [];
  for (let j = i; j < Math.min(N, i + 5000); j++) specs.push({ identifier: 'noop', payload: { i: j } });
  await utils.addJobs(specs);
}
await utils.release();

let first = null;
let seen = 0;
let allHandled;
const handled = new Promise((resolve) => (allHandled = resolve));
const runner = await run({
  connectionString, concurrency: C, maxPoolSize: C + 2, noHandleSignals: true, logger: quiet,
  taskList: {
    noop: async () => {
      first ??= performance.now();
      if (++seen === N) allHandled();
    },
  },
});
await handled;
// Done when the last completion is committed: the queue table is empty.
const client = new pg.Client({ connectionString });
await client.connect();
while (Number((await client.query('SELECT count(*) AS n FROM graphile_worker._private_jobs')).rows[0].n) > 0) {
  await new Promise((resolve) => setTimeout(resolve, 10));
}
const seconds = (performance.now() - first) / 1000;
await client.end();
await runner.stop();
console.log(`${Math.round(N / seconds)} ${seconds.toFixed(2)}`);
