// The explorer's behaviour: filtering the models table, panning and zooming the
// lineage graph, and live job updates over server-sent events. Pages work without it.
"use strict";

function filterModels() {
  const table = document.getElementById("models");
  if (!table) return;
  const search = document.getElementById("search");
  const kind = document.getElementById("kind-filter");
  const relation = document.getElementById("relation-filter");
  const apply = () => {
    const text = search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of table.tBodies[0].rows) {
      const visible = row.dataset.name.toLowerCase().includes(text)
        && (!kind.value || row.dataset.kind === kind.value)
        && (!relation.value || row.dataset.relation.split(", ").includes(relation.value));
      row.hidden = !visible;
      if (visible) shown++;
    }
    document.getElementById("model-count").textContent = shown;
  };
  for (const control of [search, kind, relation]) control.addEventListener("input", apply);
}

// Tables marked sortable sort by a column when its header is clicked (again: reversed).
function sortableTables() {
  for (const table of document.querySelectorAll("table.sortable")) {
    table.tHead.querySelectorAll("th").forEach((header, column) => {
      header.style.cursor = "pointer";
      header.addEventListener("click", () => {
        const descending = header.dataset.sorted === "ascending";
        table.tHead.querySelectorAll("th").forEach((th) => delete th.dataset.sorted);
        header.dataset.sorted = descending ? "descending" : "ascending";
        const key = (row) => row.cells[column].textContent.trim();
        const rows = [...table.tBodies[0].rows].sort((a, b) => {
          const [x, y] = [key(a), key(b)];
          const order = !isNaN(x) && !isNaN(y) ? Number(x) - Number(y) : x.localeCompare(y);
          return descending ? -order : order;
        });
        table.tBodies[0].append(...rows);
      });
    });
  }
}

function panAndZoom() {
  const box = document.querySelector("[data-pan-zoom]");
  const svg = box && box.querySelector("svg");
  if (!svg) return;
  let [x, y, width, height] = svg.getAttribute("viewBox").split(" ").map(Number);
  const show = () => svg.setAttribute("viewBox", `${x} ${y} ${width} ${height}`);
  svg.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = svg.getBoundingClientRect();
    const factor = event.deltaY > 0 ? 1.15 : 1 / 1.15;
    const px = x + (event.clientX - rect.left) / rect.width * width;
    const py = y + (event.clientY - rect.top) / rect.height * height;
    width *= factor; height *= factor;
    x = px - (px - x) * factor; y = py - (py - y) * factor;
    show();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, moved: false };
  });
  svg.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const rect = svg.getBoundingClientRect();
    const dx = (event.clientX - drag.x) / rect.width * width;
    const dy = (event.clientY - drag.y) / rect.height * height;
    if (Math.abs(event.clientX - drag.x) + Math.abs(event.clientY - drag.y) > 3) drag.moved = true;
    x -= dx; y -= dy; drag.x = event.clientX; drag.y = event.clientY;
    show();
  });
  svg.addEventListener("pointerup", () => { setTimeout(() => { drag = null; }, 0); });
  // A drag that ends on a model is a pan, not a click.
  svg.addEventListener("click", (event) => { if (drag && drag.moved) event.preventDefault(); }, true);
}

function liveJobs() {
  const table = document.querySelector("[data-live-jobs]");
  const state = document.getElementById("job-state");
  if (!table && !(state && state.dataset.final === "false")) return;
  // New and finished jobs: the rows are fetched again, without reloading the page (which
  // would drop the event stream and miss what happens meanwhile).
  let refreshing = null, again = false;
  const refresh = async () => {
    if (refreshing) { again = true; return; }
    refreshing = (async () => {
      do {
        again = false;
        const response = await fetch("/jobs");
        if (!response.ok) break;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        table.tBodies[0].replaceWith(fresh.querySelector("#jobs tbody"));
      } while (again);
    })();
    await refreshing;
    refreshing = null;
  };
  const source = new EventSource("/jobs/stream");
  source.onmessage = async (message) => {
    const update = JSON.parse(message.data);
    if (table) {
      const row = document.getElementById("job-" + update.id);
      if (!row || update.final) { refresh(); return; }
      row.querySelector(".state-cell").innerHTML = `<span class="state ${update.state}">${update.state}</span>`;
      row.querySelector(".progress-cell").textContent = update.progress;
    } else if (update.id === state.dataset.job) {
      state.innerHTML = `<span class="state ${update.state}">${update.state}</span>`;
      const box = document.getElementById("chart-box");
      const response = await fetch(box.dataset.chart);
      if (response.ok) box.innerHTML = await response.text();
      if (update.final) location.reload();
    }
  };
  source.onerror = () => { const live = document.getElementById("live"); if (live) live.textContent = "reconnecting"; };
  source.onopen = () => { const live = document.getElementById("live"); if (live) live.textContent = "live"; };
}

document.addEventListener("DOMContentLoaded", () => { filterModels(); sortableTables(); panAndZoom(); liveJobs(); });
