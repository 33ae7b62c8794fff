// ActTail dashboard: live job status. Plain JS, no dependencies; text goes in via textContent only.
"use strict";

const POLL_MS = 1500;
const ACTIVE = new Set(["queued", "running"]);

function setField(scope, name, value) {
  const el = scope.querySelector(`[data-field="${name}"]`);
  if (el) el.textContent = value;
}

function showJob(scope, job) {
  const status = scope.querySelector('[data-field="status"]');
  if (status) {
    status.textContent = job.status;
    status.className = `status status-${job.status}`;
  }
  setField(scope, "stage", job.stage);
  setField(scope, "percent", `${Math.round(100 * job.progress)}%`);
  setField(scope, "error", job.error || "");
  const bar = scope.querySelector("progress");
  if (bar) bar.value = job.progress;
  const link = scope.querySelector('[data-field="model_url"]');
  if (link && job.model_url) {
    link.href = job.model_url;
    link.hidden = false;
  }
}

async function fetchJson(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    window.location.assign(`/ui/login?next=${encodeURIComponent(window.location.pathname)}`);
    return null;
  }
  if (response.status === 404) return null; // gone (or never ours): stop polling
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function poll(url, update) {
  const tick = async () => {
    let again = true;
    try {
      const body = await fetchJson(url);
      again = body !== null && update(body);
    } catch (err) {
      console.warn(err); // a blip (server restarting): keep trying
    }
    if (again) window.setTimeout(tick, POLL_MS);
  };
  window.setTimeout(tick, POLL_MS);
}

function watchJobList(table) {
  poll(table.dataset.poll, (body) => {
    const rows = new Map([...table.querySelectorAll("tr[data-job]")].map((row) => [row.dataset.job, row]));
    if (body.items.some((job) => !rows.has(job.id))) {
      window.location.reload(); // a job submitted elsewhere: render the list again
      return false;
    }
    body.items.forEach((job) => showJob(rows.get(job.id), job));
    return body.items.some((job) => ACTIVE.has(job.status));
  });
}

function watchJob(section) {
  poll(section.dataset.poll, (job) => {
    showJob(section, job);
    return ACTIVE.has(job.status);
  });
}

// The model page's ESD projection selector: swap the image in place (the form's button reloads
// the page instead when scripts are off) and keep the choice in the URL.
function watchEsdSelector(select) {
  const image = document.getElementById("esd-plot");
  const button = select.form.querySelector('button[type="submit"]');
  if (!image) return;
  if (button) button.hidden = true;
  select.addEventListener("change", () => {
    image.src = `${select.dataset.srcPrefix}${encodeURIComponent(select.value)}${select.dataset.srcSuffix}`;
    image.alt = image.alt.replace(/^ESD of \S+/, `ESD of ${select.value}`);
    const url = new URL(window.location.href);
    url.searchParams.set("projection", select.value);
    window.history.replaceState(null, "", url);
  });
}

// Sortable tables (the leaderboard): a header click sorts by that column, a second click reverses.
// Numeric columns (th[data-sort="num"]) sort by each cell's data-value; empty values sort last.
function makeSortable(table) {
  const headers = [...table.querySelectorAll("thead th")];
  headers.forEach((th, column) => {
    if (!th.dataset.sort) return;
    th.tabIndex = 0;
    th.classList.add("sort-header");
    const sort = () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const numeric = th.dataset.sort === "num";
      const key = (row) => {
        const cell = row.children[column];
        if (!numeric) return cell.textContent.trim();
        const raw = cell.dataset.value;
        return raw === undefined || raw === "" ? null : Number(raw);
      };
      const body = table.tBodies[0];
      const rows = [...body.rows];
      rows.sort((a, b) => {
        const x = key(a);
        const y = key(b);
        if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;
        const order = numeric ? x - y : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach((row) => body.appendChild(row));
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sort();
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  const list = document.querySelector("table#jobs[data-poll]");
  if (list) watchJobList(list);
  const job = document.querySelector("section#job[data-poll]");
  if (job) watchJob(job);
  const projection = document.querySelector("select#esd-projection");
  if (projection) watchEsdSelector(projection);
});
