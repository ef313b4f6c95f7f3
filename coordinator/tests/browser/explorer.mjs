// Drives Debian's Chromium through the lineage explorer of a real coordinator and checks
// what each view shows against what the test read over gRPC (the file in EXPECTED).
// Run by coordinator/tests/explorer.rs; talks to it on stdout/stdin to watch a job go live:
// it prints "ready for a job", then reads the new job's id from stdin.
//
// Environment: PLAYWRIGHT (playwright-core's index.mjs), CHROMIUM, EXPLORER (its URL),
// TOKEN (a reader token), WORKER_TOKEN, EXPECTED (a JSON file), SCREENSHOTS (a folder).

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const { chromium } = await import(process.env.PLAYWRIGHT);
const base = process.env.EXPLORER.replace(/\/$/, "");
const expected = JSON.parse(readFileSync(process.env.EXPECTED, "utf8"));
const shots = process.env.SCREENSHOTS;
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

let checks = 0;
function check(condition, message) {
  if (!condition) throw new Error("explorer check failed: " + message);
  checks++;
}
function sameSet(actual, wanted, what) {
  const a = [...actual].sort(), w = [...wanted].sort();
  check(JSON.stringify(a) === JSON.stringify(w), `${what}: shown ${JSON.stringify(a)}, expected ${JSON.stringify(w)}`);
}
async function shot(page, name) {
  const path = `${shots}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot ${path}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const failures = [];
  page.on("pageerror", (error) => failures.push(error.message));

  // What a new user sees first: the login page.
  await page.goto(base + "/");
  check(page.url().startsWith(base + "/login"), "a visitor without a token is sent to log in: " + page.url());
  await shot(page, "login");
  await page.fill("input[name=token]", process.env.WORKER_TOKEN);
  await page.click("button[type=submit]");
  check((await page.textContent(".error")).includes("a worker's"), "a worker token is refused");
  await page.fill("input[name=token]", process.env.TOKEN);
  await page.click("button[type=submit]");
  await page.waitForURL(base + "/");

  // Models: every model, searchable and filterable.
  const names = await page.$$eval("#models tbody tr", (rows) => rows.map((r) => r.dataset.name));
  sameSet(names, expected.models.map((m) => m.name), "models table");
  for (const model of expected.models) {
    const row = page.locator(`#models tbody tr[data-name="${model.name}"]`);
    check((await row.getAttribute("data-kind")) === model.source, `${model.name}'s kind`);
    const accuracy = (await row.locator("td").nth(4).textContent()).trim();
    check(model.accuracy === null ? accuracy === "—" : Math.abs(Number(accuracy) - model.accuracy) < 0.0006,
      `${model.name}'s accuracy ${accuracy} vs ${model.accuracy}`);
  }
  await page.click("#models th:nth-child(1)");
  const sorted = await page.$$eval("#models tbody tr", (rows) => rows.map((r) => r.dataset.name));
  check(JSON.stringify(sorted) === JSON.stringify([...sorted].sort((a, b) => a.localeCompare(b))), "a header click sorts by name");
  await shot(page, "models");
  await page.fill("#search", expected.search);
  const shown = await page.$$eval("#models tbody tr:not([hidden])", (rows) => rows.map((r) => r.dataset.name));
  sameSet(shown, expected.models.filter((m) => m.name.includes(expected.search)).map((m) => m.name), "search");
  await page.fill("#search", "");
  await page.selectOption("#relation-filter", "module");
  const composedOnly = await page.$$eval("#models tbody tr:not([hidden])", (rows) => rows.map((r) => r.dataset.name));
  sameSet(composedOnly, expected.models.filter((m) => m.relations.includes("module")).map((m) => m.name), "relation filter");
  await page.selectOption("#relation-filter", "");

  // A model: its tensor provenance, coloured by status, origins linked.
  const focus = expected.models.find((m) => m.name === expected.provenance_model);
  await page.click(`#models a:text-is("${focus.name}")`);
  await page.waitForURL(`${base}/models/${focus.id}`);
  const statuses = await page.$$eval("#tensors tbody tr", (rows) =>
    Object.fromEntries(rows.map((r) => [r.querySelector("code").textContent, r.dataset.status])));
  check(JSON.stringify(statuses, Object.keys(statuses).sort()) === JSON.stringify(focus.tensors, Object.keys(focus.tensors).sort()),
    `tensor statuses ${JSON.stringify(statuses)} vs ${JSON.stringify(focus.tensors)}`);
  const parents = await page.$$eval("#parents a", (links) => links.map((a) => a.textContent));
  sameSet(parents, focus.parents, "parents");
  const colour = await page.$eval("#tensors tbody tr.inherited td:nth-child(2)", (td) => getComputedStyle(td).backgroundColor);
  check(colour === "rgb(220, 252, 231)", "inherited tensors are shaded green: " + colour);
  await shot(page, "model-provenance");
  const origin = page.locator("#tensors tbody tr.inherited a").first();
  const originHref = await origin.getAttribute("href");
  await origin.click();
  await page.waitForURL((url) => url.href.startsWith(base + originHref.split("#")[0]));
  check(page.url().includes("#t-"), "an origin link lands on the tensor's row");

  // The graph: the same nodes and edges as LineageGraph, pan and zoom, click to open.
  await page.goto(`${base}/models/${expected.graph.focus}/graph?depth=${expected.graph.depth}`);
  const nodes = await page.$$eval("#lineage a.node", (as) => as.map((a) => a.dataset.model));
  sameSet(nodes, expected.graph.nodes, "graph nodes");
  const edges = await page.$$eval("#lineage g.edge", (gs) => gs.map((g) => `${g.dataset.parent}>${g.dataset.child}:${g.dataset.relation}`));
  sameSet(edges, expected.graph.edges, "graph edges");
  const before = await page.getAttribute("#lineage", "viewBox");
  const box = await page.locator("#lineage").boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, -400);
  const zoomed = await page.getAttribute("#lineage", "viewBox");
  check(zoomed !== before, "the wheel zooms the graph");
  await page.mouse.move(box.x + 20, box.y + 20);
  await page.mouse.down();
  await page.mouse.move(box.x + 120, box.y + 80, { steps: 5 });
  await page.mouse.up();
  check((await page.getAttribute("#lineage", "viewBox")) !== zoomed, "dragging pans the graph");
  await page.goto(`${base}/models/${expected.graph.focus}/graph?depth=${expected.graph.depth}`);
  await shot(page, "graph");
  await page.click(`#lineage a.node[data-model="${expected.graph.click}"]`);
  await page.waitForURL(/\/models\/[0-9a-f-]{36}$/);
  check((await page.textContent("h1")).startsWith(expected.graph.click), "clicking a node opens that model");
  await page.goto(`${base}/models/${expected.graph.focus}/graph?depth=1`);
  const shallow = await page.$$eval("#lineage a.node", (as) => as.length);
  check(shallow === expected.graph.nodes_at_depth_1, `depth 1 shows ${shallow} models, expected ${expected.graph.nodes_at_depth_1}`);

  // Jobs: every job with its state, then one new job followed live. The server
  // subscribes the page's event stream before it answers, so once the answer is in, no
  // update can be missed.
  const streaming = page.waitForResponse((response) => response.url().endsWith("/jobs/stream"));
  await page.goto(base + "/jobs");
  const states = await page.$$eval("#jobs tbody tr", (rows) =>
    Object.fromEntries(rows.map((r) => [r.dataset.job, r.querySelector(".state").textContent])));
  check(JSON.stringify(Object.keys(states).sort()) === JSON.stringify(Object.keys(expected.jobs).sort()), "jobs listed");
  for (const [id, state] of Object.entries(expected.jobs)) check(states[id] === state, `job ${id} is ${states[id]}, expected ${state}`);
  await streaming;
  console.log("ready for a job");
  const live = (await lines.next()).value.trim();
  await page.waitForSelector(`#job-${live} .state.succeeded`, { timeout: 120000 });
  await shot(page, "jobs");

  // A job: its curves drawn from its progress reports.
  await page.goto(`${base}/jobs/${expected.chart.job}`);
  const points = Number(await page.getAttribute("#chart", "data-points"));
  check(points === expected.chart.points, `the chart draws ${points} reports, expected ${expected.chart.points}`);
  const loss = (await page.getAttribute("#loss-line", "points")).trim().split(" ");
  check(loss.length === expected.chart.points, "one loss point per report");
  // It trained on two ranks: the attempt says how many, over what, and where.
  const ranks = await page.textContent("#attempts tbody tr:last-child .ranks");
  check(ranks.includes(expected.chart.ranks), `the attempt shows its ranks: ${ranks}`);
  await shot(page, "job");

  // Dataset impact: every model downstream of the dataset.
  await page.goto(base + "/datasets");
  await page.click(`#datasets a:text-is("${expected.impact.dataset}")`);
  const impacted = await page.$$eval("#impact tbody tr td:first-child a", (as) => as.map((a) => a.textContent));
  // The job followed live above fine-tuned a descendant of the dataset's model too.
  sameSet(impacted, [...expected.impact.models, expected.live_model], "dataset impact");
  await shot(page, "impact");

  check(failures.length === 0, "no script errors: " + failures.join("; "));
  const anonymous = await browser.newContext({ ignoreHTTPSErrors: true });
  const stranger = await anonymous.newPage();
  await stranger.goto(`${base}/models/${focus.id}`);
  check(stranger.url().startsWith(`${base}/login?next=`), "pages need a token");
  console.log(`explorer: ${checks} checks passed`);
} finally {
  await browser.close();
  input.close(); // an open stdin would keep Node running
}
