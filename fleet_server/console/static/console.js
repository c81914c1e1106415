/* edgefleet console: fills the page shells from /console/api/v1 (the server's relay to /api/v1)
   and keeps them live by polling. API data is written with textContent only, never as HTML.
   No build step: plain ES2020 that Chromium and Firefox run as is. */
"use strict";

const PAGE = document.body.dataset.page;
const ROLE = document.body.dataset.role;
const ARG = document.body.dataset.arg;
const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const POLL_MS = 2000;

class ApiError extends Error {}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: { Accept: "application/json" },
                 credentials: "same-origin" };
  if (init.method !== "GET") init.headers["X-CSRF-Token"] = CSRF;
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const res = await fetch("/console/api/v1/" + path, init);
  if (res.status === 401) { location.href = "/console/login?next=" + encodeURIComponent(location.pathname); }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const detail = data && data.detail ? data.detail : res.status + " " + res.statusText;
    throw new ApiError(data && data.fix ? detail + " (" + data.fix + ")" : detail);
  }
  return data;
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function table(el, headers, rows, empty = "nothing yet") {
  el.replaceChildren(h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", r.attrs || {}, (r.cells || r).map((c) => h("td", {}, c))))
                              : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty))));
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toFixed(digits);
  return String(x);
}

function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
function bytes(n) { return n > 1048576 ? (n / 1048576).toFixed(2) + " MiB" : (n / 1024).toFixed(1) + " KiB"; }
function badge(text) { return h("span", { class: "badge " + String(text).split(" ")[0] }, text); }
function labelsText(labels) { return Object.entries(labels || {}).map(([k, v]) => k + "=" + v).join(", "); }

function ask(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"),
                                                          { once: true }));
}

function poll(fn, ms = POLL_MS) {
  let busy = false;
  const run = async () => {
    if (busy) return;
    busy = true;
    try { await fn(); document.body.dataset.updated = new Date().toISOString(); }
    catch (e) { console.error(e); }
    finally { busy = false; }
  };
  run();
  return setInterval(run, ms);
}

function chart(id, config) {
  const el = $(id);
  if (!el || typeof Chart === "undefined") return null;
  config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options || {});
  el.parentElement.classList.add("chart-box");
  return new Chart(el, config);
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

/* ------------------------------------------------------------------ fleet */

async function fleetPage() {
  const profiles = chart("chart-profiles", { type: "bar", data: { labels: [], datasets: [
    { label: "online", data: [], backgroundColor: "#16a34a" }, { label: "offline", data: [], backgroundColor: "#9ca3af" }] },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } } });
  poll(async () => {
    // Counts from the server (GET /api/v1/fleet/summary): the page never fetches every device.
    const [fleet, alerts, rollouts] = await Promise.all([api("fleet/summary"), api("alerts"), api("rollouts")]);
    $("fleet-cards").replaceChildren(
      h("div", { class: "card", id: "card-online" }, h("b", {}, fleet.devices.online), " online"),
      h("div", { class: "card", id: "card-offline" }, h("b", {}, fleet.devices.offline), " offline"),
      h("div", { class: "card", id: "card-revoked" }, h("b", {}, fleet.devices.revoked), " revoked"),
      h("div", { class: "card" + (alerts.firing ? " alarm" : ""), id: "card-alerts" }, h("b", {}, alerts.firing), " alerts firing"));
    const byProfile = fleet.profiles.map((p) => [p.profile, p.online, p.offline]);
    table($("by-profile"), ["profile", "online", "offline"], byProfile);
    table($("by-label"), ["label", "online", "offline"], fleet.labels.map((l) => [l.label, l.online, l.offline]));
    if (profiles) {
      profiles.data.labels = byProfile.map(([g]) => g);
      profiles.data.datasets[0].data = byProfile.map(([, on]) => on);
      profiles.data.datasets[1].data = byProfile.map(([, , off]) => off);
      profiles.update();
    }
    table($("versions"), ["model@version", "devices"], fleet.versions.map((v) => [v.model + "@" + v.version, v.devices]),
      "no device reports a model yet");
    table($("alerts"), ["rule", "subject", "value", "since"],
      alerts.episodes.filter((e) => e.state === "firing").map((e) =>
        [e.rule, e.subject, fmt(e.value), new Date(1000 * e.since).toLocaleTimeString()]), "no alert firing");
    const running = rollouts.filter((r) => ["pending", "running", "paused", "halted"].includes(r.state));
    table($("live-rollouts"), ["rollout", "model@version", "state", "devices"], running.map((r) =>
      [h("a", { href: "/console/rollouts/" + r.id }, r.id), r.model + "@" + r.version, badge(r.state),
       Object.entries(r.devices).map(([s, n]) => s + " " + n).join(", ")]), "no live rollout");
  });
}

/* ------------------------------------------------------------------ devices */

async function devicesPage() {
  // One page of the filtered list from the server (GET /api/v1/fleet/devices): the filters run
  // there, and only the page's devices get their telemetry columns.
  const PAGE_SIZE = 50;
  let offset = 0;
  let asked = 0;
  const query = () => {
    const q = new URLSearchParams({ offset: String(offset), limit: String(PAGE_SIZE) });
    const text = $("f-text").value.trim();
    if (text) q.set("q", text);
    if ($("f-state").value) q.set("state", $("f-state").value);
    if ($("f-profile").value) q.set("profile", $("f-profile").value);
    if ($("f-label").value.trim()) q.set("label", $("f-label").value.trim());
    return q.toString();
  };
  const refresh = async () => {
    const ticket = ++asked;
    const page = await api("fleet/devices?" + query());
    if (ticket !== asked) return;  // a newer filter was asked for meanwhile: its answer wins
    const known = new Set([...$("f-profile").options].map((o) => o.value));
    for (const p of page.profiles) if (!known.has(p)) $("f-profile").append(h("option", {}, p));
    const last = Math.min(page.offset + page.devices.length, page.matched);
    $("device-count").textContent = page.matched + " of " + page.total + " devices" +
      (page.matched > page.devices.length ? " (" + (page.matched ? page.offset + 1 : 0) + "-" + last + " shown)" : "");
    $("page-prev").disabled = page.offset === 0;
    $("page-next").disabled = last >= page.matched;
    table($("devices-table"), ["device", "state", "profile", "labels", "models", "p95 ms", "drift", "last seen"],
      page.devices.map((d) => ({ attrs: { "data-device": d.id }, cells: [
        h("a", { href: "/console/devices/" + d.id }, d.id), badge(d.state), d.profile, labelsText(d.labels),
        Object.entries(d.versions || {}).map(([m, v]) => m + "@" + v).join(", "), fmt(d.p95_ms, 2),
        d.drift_band || "–", d.last_seen || "–"] })));
  };
  let timer = null;
  const filtered = () => { offset = 0; clearTimeout(timer); timer = setTimeout(() => refresh().catch(console.error), 150); };
  for (const id of ["f-text", "f-state", "f-profile", "f-label"]) $(id).addEventListener("input", filtered);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("page-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); refresh(); });
  $("page-next").addEventListener("click", () => { offset += PAGE_SIZE; refresh(); });
  poll(refresh);
}

async function devicePage() {
  const id = ARG;
  $("device-id").textContent = id;
  let current = null;
  $("labels-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const wanted = {};
    for (const part of $("labels-input").value.split(",")) {
      const [k, v] = part.split("=").map((s) => s.trim());
      if (k) wanted[k] = v === undefined ? "" : v;
    }
    const patch = Object.assign({}, wanted);
    for (const k of Object.keys(current.labels)) if (!(k in wanted)) patch[k] = null;
    if (!(await ask("Set the labels of " + id + " to " + (labelsText(wanted) || "none") + "?"))) return;
    try { await api("devices/" + id + "/labels", { method: "PATCH", body: { labels: patch } }); await refresh(); }
    catch (err) { alertError(err); }
  });
  $("revoke").addEventListener("click", async () => {
    if (!(await ask("Revoke " + id + "? Its token stops working at once; this cannot be undone."))) return;
    try { await api("devices/" + id + "/revoke", { method: "POST" }); await refresh(); }
    catch (err) { alertError(err); }
  });
  const refresh = async () => {
    const [d, events] = await Promise.all([api("devices/" + id), api("devices/" + id + "/events?limit=50")]);
    const firstLoad = current === null;
    current = d;
    $("device-state").replaceChildren(badge(d.status === "revoked" ? "revoked" : d.state));
    const rep = d.reported || {};
    const update = rep.update || {};
    table($("device-facts"), ["", ""], [
      ["status", d.status], ["state", d.state], ["profile", d.profile], ["hostname", d.hostname || "–"],
      ["agent version", d.agent_version || "–"],
      ["active models", Object.entries(d.versions || {}).map(([m, v]) => m + "@" + v).join(", ") || "none"],
      ["update", update.state ? update.state + (update.reason ? " (" + update.reason + ")" : "") : "–"],
      ["last seen", d.last_seen || "–"], ["enrolled", d.enrolled_at || "–"], ["revoked", d.revoked_at || "–"]]);
    table($("device-labels"), ["label", "value"], Object.entries(d.labels).map(([k, v]) => [k, v]), "no labels");
    if (firstLoad || document.activeElement !== $("labels-input")) $("labels-input").value = labelsText(d.labels);
    const health = events.filter((e) => e.event === "health_passed" || e.event === "failed" || e.event === "rolled_back")[0];
    table($("device-health"), ["figure", "value"], [
      ["p95 latency (ms, worst model, telemetry window)", fmt(d.p95_ms, 2)],
      ["drift band of its inputs", d.drift_band || "no data"],
      ["last health check", health ? health.event + (health.reason ? ": " + health.reason : "") +
        (health.timings ? " · " + Object.entries(health.timings).map(([k, v]) => k + " " + fmt(v) + " s").join(", ") : "") : "–"],
      ["refused messages", (d.refused_messages || []).map((r) => r.topic + "/" + r.reason + " ×" + r.count).join(", ") || "none"],
      ["problems", (d.problems || []).join("; ") || "none"]]);
    table($("device-events"), ["time", "event", "model@version", "reason", "timings (s)"], events.map((e) => [
      e.ts.replace("T", " ").slice(0, 23), badge(e.event), (e.model || "") + (e.version ? "@" + e.version : ""),
      e.reason || "", Object.entries(e.timings || {}).map(([k, v]) => k + " " + fmt(v)).join(", ")]), "no update events");
    if (d.status === "revoked") for (const el of document.querySelectorAll(".act")) el.hidden = true;
  };
  poll(refresh);
}

/* ------------------------------------------------------------------ models */

async function modelsPage() {
  const detail = async (m) => {
    const full = await api("models/" + m.name + "/" + m.version);
    const report = full.manifest.report || {};
    const rows = Object.entries(report).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : fmt(v, 4)]);
    $("model-detail").replaceChildren(h("h2", {}, "Conversion proof of " + m.name + "@" + m.version),
      h("table", { id: "proof" }), h("p", { class: "muted" }, "format " + full.manifest.format + ", profiles " +
        (full.manifest.profiles || []).join(", ")));
    table($("proof"), ["figure", "value"], rows, "no report in the manifest");
  };
  poll(async () => {
    const models = await api("models");
    table($("models-table"), ["model", "version", "size", "profiles", "published", "state", ""], models.map((m) => ({
      attrs: { "data-model": m.name + "@" + m.version }, cells: [
        h("a", { href: "#", onclick: (e) => { e.preventDefault(); detail(m); } }, m.name), m.version, bytes(m.length),
        m.profiles.join(", "), m.created_at, m.yanked ? badge("yanked") : badge("published"),
        m.yanked || ROLE !== "admin" ? "" : h("button", { class: "danger act", onclick: async () => {
          if (!(await ask("Yank " + m.name + "@" + m.version + "? It can never be rolled out again."))) return;
          try { await api("models/" + m.name + "/" + m.version + "/yank", { method: "POST" }); }
          catch (err) { alertError(err); }
        } }, "Yank")] })), "no model published yet");
  }, 5000);
}

/* ------------------------------------------------------------------ rollouts */

async function rolloutsPage() {
  let models = [];
  const fillVersions = () => {
    const name = $("r-model").value;
    $("r-version").replaceChildren(...models.filter((m) => m.name === name && !m.yanked).reverse()
      .map((m) => h("option", {}, m.version)));
  };
  let timer = null;
  const preview = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!$("r-model").value) return;
      const q = new URLSearchParams({ model: $("r-model").value, selector: $("r-selector").value });
      if ($("r-version").value) q.set("version", $("r-version").value);
      try {
        const p = await api("rollouts/preview?" + q);
        $("r-preview").textContent = "matches " + p.matches + " device" + (p.matches === 1 ? "" : "s") +
          (p.eligible !== p.matches ? " (" + p.eligible + " with a profile this version was built for)" : "");
        $("r-preview").className = "preview";
      } catch (err) { $("r-preview").textContent = err.message; $("r-preview").className = "preview error"; }
    }, 250);
  };
  $("r-model").addEventListener("change", () => { fillVersions(); preview(); });
  $("r-version").addEventListener("change", preview);
  $("r-selector").addEventListener("input", preview);
  $("rollout-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("r-error").textContent = "";
    const body = { model: $("r-model").value, version: $("r-version").value, selector: $("r-selector").value,
      waves: $("r-waves").value.split(",").map((s) => parseFloat(s)), bake_seconds: parseFloat($("r-bake").value),
      max_failure_rate: parseFloat($("r-maxfail").value), device_timeout_seconds: parseFloat($("r-timeout").value),
      auto_rollback: $("r-autorollback").checked };
    if (!(await ask("Roll out " + body.model + "@" + body.version + " to " + ($("r-preview").textContent || "the selected devices") + "?"))) return;
    try { const r = await api("rollouts", { method: "POST", body }); location.href = "/console/rollouts/" + r.id; }
    catch (err) { $("r-error").textContent = err.message; }
  });
  models = await api("models");
  const names = [...new Set(models.filter((m) => !m.yanked).map((m) => m.name))].sort();
  $("r-model").replaceChildren(...names.map((n) => h("option", {}, n)));
  fillVersions();
  preview();
  poll(async () => {
    const rollouts = await api("rollouts");
    table($("rollouts-table"), ["rollout", "model@version", "selector", "state", "wave", "devices", "created"],
      rollouts.map((r) => [h("a", { href: "/console/rollouts/" + r.id }, r.id), r.model + "@" + r.version,
        r.selector, badge(r.state), r.current_wave === null ? "–" : String(r.current_wave + 1) + "/" + r.waves.length,
        Object.entries(r.devices).map(([s, n]) => s + " " + n).join(", "), r.created_at]), "no rollout yet");
  });
}

async function rolloutPage() {
  const id = ARG;
  $("rollout-id").textContent = id;
  const states = chart("chart-states", { type: "doughnut", data: { labels: [], datasets: [{ data: [], backgroundColor: COLORS }] } });
  const allowed = { pending: ["pause", "abort"], running: ["pause", "abort", "rollback"], paused: ["resume", "abort", "rollback"],
                    halted: ["abort", "rollback"], completed: ["rollback"], aborted: ["rollback"], rolled_back: [] };
  for (const b of document.querySelectorAll("#rollout-actions button")) {
    b.addEventListener("click", async () => {
      const cmd = b.dataset.command;
      if (!(await ask(b.textContent + " rollout " + id + "?"))) return;
      $("action-error").textContent = "";
      try { await api("rollouts/" + id + "/" + cmd, { method: "POST" }); await refresh(); }
      catch (err) { $("action-error").textContent = err.message; }
    });
  }
  const refresh = async () => {
    const r = await api("rollouts/" + id + "?devices=true");
    $("rollout-state").replaceChildren(badge(r.state));
    $("rollout-state").dataset.state = r.state;
    $("rollout-summary").textContent = r.model + "@" + r.version + " to " + r.selector + " · " +
      Object.values(r.devices).reduce((a, b) => a + b, 0) + " devices in " + r.waves.length + " waves · " +
      (r.current_wave === null ? "" : "wave " + (r.current_wave + 1) + " · ") + "policy: max failure " +
      pct(r.policy.max_failure_rate) + ", bake " + r.policy.bake_time_s + " s" + (r.policy.auto_rollback ? ", auto rollback" : "");
    $("halt-reason").textContent = r.halt_reason ? "Halted: " + r.halt_reason : "";
    for (const b of document.querySelectorAll("#rollout-actions button")) {
      b.disabled = !(allowed[r.state] || []).includes(b.dataset.command);
    }
    const counts = Object.entries(r.devices);
    table($("rollout-counts"), ["state", "devices"], counts.map(([s, n]) => ({ attrs: { "data-state": s }, cells: [s, n] })));
    if (states) {
      states.data.labels = counts.map(([s]) => s);
      states.data.datasets[0].data = counts.map(([, n]) => n);
      states.update();
    }
    // A shadow or canary stage (issue 18): one more column, the server's own words for each wave's stage.
    const staged = Boolean(r.policy.stage);
    table($("rollout-waves"), ["wave", "%", "size", "pending", "in flight", "committed", "failed", "rolled back", "failure rate",
      ...(staged ? [r.policy.stage.mode] : [])],
      r.waves.map((w) => ({ attrs: { class: w.index === r.current_wave ? "current" : "", "data-stage": (w.stage || {}).verdict || "" },
        cells: [w.index + 1, w.percent, w.size, w.pending, w.in_flight, w.committed, w.failed, w.rolled_back, pct(w.failure_rate),
          ...(staged ? [w.stage_summary || ""] : [])] })));
    const failed = (r.device_records || []).filter((d) => ["failed", "rolled_back", "timed_out"].includes(d.status) || d.reason);
    table($("rollout-failures"), ["device", "wave", "status", "last event", "reason"], failed.map((d) => [
      h("a", { href: "/console/devices/" + d.device_id }, d.device_id), d.wave + 1, d.status, d.last_event || "", d.reason || ""]),
      "no failures");
    table($("rollout-log"), ["time", "entry"], r.log.slice().reverse().map((l) => [l.ts || l.at || "", l.message || l.text || JSON.stringify(l)]));
  };
  poll(refresh, 1500);
}

/* ------------------------------------------------------------------ drift */

async function driftPage() {
  const models = await api("models");
  const names = [...new Set(models.map((m) => m.name))].sort();
  $("d-model").replaceChildren(...names.map((n) => h("option", {}, n)));
  const fillVersions = () => $("d-version").replaceChildren(...models.filter((m) => m.name === $("d-model").value)
    .reverse().map((m) => h("option", {}, m.version)));
  fillVersions();
  const psi = chart("chart-psi", { type: "line", data: { labels: [], datasets: [] },
    options: { scales: { y: { beginAtZero: true, title: { display: true, text: "PSI" } } } } });
  const quality = chart("chart-quality", { type: "line", data: { labels: [], datasets: [
    { label: "output PSI", data: [], borderColor: COLORS[0], yAxisID: "y" },
    { label: "feedback accuracy", data: [], borderColor: COLORS[2], yAxisID: "y1" }] },
    options: { scales: { y: { beginAtZero: true }, y1: { position: "right", min: 0, max: 1 } } } });
  const alertsChart = chart("chart-alerts", { type: "line", data: { labels: [], datasets: [
    { label: "alerts firing", data: [], borderColor: COLORS[1], stepped: true }] },
    options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } } });
  const reset = () => {
    for (const c of [psi, quality, alertsChart]) if (c) { c.data.labels = []; for (const d of c.data.datasets) d.data = []; }
    if (psi) psi.data.datasets = [];
  };
  for (const id of ["d-model", "d-version", "d-by", "d-label", "d-window"]) {
    $(id).addEventListener("change", () => { if (id === "d-model") fillVersions(); reset(); });
  }
  $("drift-form").addEventListener("submit", (e) => e.preventDefault());
  const MAX_POINTS = 120;
  const push = (c, label, values) => {
    if (!c) return;
    c.data.labels.push(label);
    values.forEach((v, i) => c.data.datasets[i].data.push(v));
    if (c.data.labels.length > MAX_POINTS) { c.data.labels.shift(); for (const d of c.data.datasets) d.data.shift(); }
    c.update();
  };
  poll(async () => {
    if (!$("d-model").value || !$("d-version").value) { $("drift-status").textContent = "no model published yet"; return; }
    const q = new URLSearchParams({ window: $("d-window").value || "300" });
    const by = $("d-label").value.trim() ? "label:" + $("d-label").value.trim() : $("d-by").value;
    if (by) q.set("by", by);
    const [drift, alerts] = await Promise.all([
      api("models/" + $("d-model").value + "/" + $("d-version").value + "/drift?" + q), api("alerts")]);
    const group = drift.groups[0];
    const now = new Date().toLocaleTimeString();
    $("drift-status").textContent = group ? "group " + group.group + ": " + group.devices + " devices, band " + group.band +
      ", max PSI " + fmt(group.max_psi) + ", " + group.requests + " requests in the last " + drift.window_s + " s"
      : "no telemetry for this version in the window";
    document.body.dataset.maxPsi = group ? String(group.max_psi) : "";
    if (group && psi) {
      if (!psi.data.datasets.length) {
        psi.data.datasets.push({ label: "max PSI", data: [], borderColor: "#111827", borderWidth: 3 });
      }
      for (const f of group.features) {
        if (!psi.data.datasets.find((d) => d.label === f.feature)) {
          const i = psi.data.datasets.length;
          psi.data.datasets.push({ label: f.feature, data: psi.data.labels.map(() => null), borderColor: COLORS[i % COLORS.length],
                                   borderWidth: 1, pointRadius: 0 });
        }
      }
      // Many features (an image has dozens): the legend names the max line only; hover names the rest.
      psi.options.plugins.legend.labels.filter = (item) => psi.data.datasets.length <= 9 || item.datasetIndex === 0;
      push(psi, now, psi.data.datasets.map((d, i) => {
        if (i === 0) return group.max_psi;
        const f = group.features.find((x) => x.feature === d.label);
        return f ? f.psi : null;
      }));
    }
    if (group) push(quality, now, [group.output ? group.output.psi : null, group.accuracy]);
    push(alertsChart, now, [alerts.firing]);
    table($("drift-table"), ["group", "feature", "rows", "PSI", "JS", "Hellinger", "band"], drift.groups.flatMap((g) =>
      g.features.concat(g.output ? [Object.assign({}, g.output, { feature: "output: " + g.output.feature })] : [])
        .map((f) => ({ attrs: { "data-feature": f.feature }, cells: [g.group, f.feature, f.rows, fmt(f.psi), fmt(f.js), fmt(f.hellinger), badge(f.band)] }))),
      "no telemetry in the window");
    table($("alert-table"), ["rule", "subject", "state", "value", "since"], alerts.episodes.map((e) =>
      [e.rule, e.subject, badge(e.state), fmt(e.value), new Date(1000 * e.since).toLocaleString()]), "no alert episode in progress");
  }, 3000);
}

function alertError(err) {
  const p = $("action-error") || document.querySelector("main").appendChild(h("p", { id: "action-error", class: "error" }));
  p.textContent = err.message;
}

if (ROLE && ROLE !== "admin") {
  document.body.classList.add("viewer");
  for (const el of document.querySelectorAll(".act")) el.hidden = true;
}
const PAGES = { fleet: fleetPage, devices: devicesPage, device: devicePage, models: modelsPage,
                rollouts: rolloutsPage, rollout: rolloutPage, drift: driftPage };
if (PAGES[PAGE]) PAGES[PAGE]().catch((e) => console.error(e));
