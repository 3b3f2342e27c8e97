// hotmesh ui: the chart on the overview, and live updates. One EventSource per tab on
// /events; the server holds the only LISTEN connection. On `change` the page fetches itself
// and swaps <main> (no reload); on `db` it shows or hides the "unreachable" banner.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  parent.appendChild(el);
  return el;
}

// Starts and completions per minute over the last hour: two bars per minute, oldest left.
function drawChart() {
  const figure = document.getElementById("chart");
  if (!figure) return;
  const series = JSON.parse(figure.dataset.series);
  const perMinute = (pairs) => {
    const out = new Array(60).fill(0);
    for (const [ago, n] of pairs) if (ago >= 0 && ago < 60) out[59 - ago] = n;
    return out;
  };
  const starts = perMinute(series.starts), done = perMinute(series.completions);
  const top = Math.max(1, ...starts, ...done);
  const w = 600, h = 120, bar = w / 60;
  figure.textContent = "";
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h + 20}`, role: "img", class: "chart" }, figure);
  starts.forEach((n, i) => {
    const sh = (n / top) * h, dh = (done[i] / top) * h;
    svg("rect", { x: i * bar, y: h - sh, width: bar / 2 - 1, height: sh, class: "starts" }, chart)
      .appendChild(document.createElementNS(SVG, "title")).textContent = `${59 - i} min ago: ${n} started`;
    svg("rect", { x: i * bar + bar / 2, y: h - dh, width: bar / 2 - 1, height: dh, class: "done" }, chart)
      .appendChild(document.createElementNS(SVG, "title")).textContent = `${59 - i} min ago: ${done[i]} finished`;
  });
  svg("text", { x: 0, y: h + 15, class: "axis" }, chart).textContent = "60 min ago";
  svg("text", { x: w, y: h + 15, class: "axis", "text-anchor": "end" }, chart).textContent = "now";
  const legend = svg("text", { x: w / 2, y: h + 15, class: "axis", "text-anchor": "middle" }, chart);
  svg("tspan", { class: "starts" }, legend).textContent = "■ started ";
  svg("tspan", { class: "done" }, legend).textContent = "■ finished";
  svg("tspan", {}, legend).textContent = ` per minute (max ${top})`;
}

let refreshing = false, again = false;
// Set once the user changes a field of this page: its forms then stay as they are.
let edited = false;
for (const kind of ["input", "change"]) {
  document.addEventListener(kind, (e) => { if (e.target.closest && e.target.closest("#main form")) edited = true; });
}

// Fetch this page and swap its <main>: what the server renders is the only truth.
async function refresh() {
  if (!document.querySelector("#main[data-live]")) return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const response = await fetch(location.href);
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("main");
    const main = document.getElementById("main");
    // A form being filled in is not replaced under the user's fingers.
    const active = document.activeElement;
    const typing = edited || (active && main && main.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName));
    if (fresh && main && !typing) {
      main.replaceWith(fresh);
      drawChart();
    }
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    // the dashboard itself is gone: the EventSource reconnects and tells us
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
}

function live() {
  const badge = document.getElementById("live");
  const banner = document.getElementById("db-down");
  const source = new EventSource(document.body.dataset.root + "/events");
  source.addEventListener("change", refresh);
  source.addEventListener("db", (e) => {
    const up = e.data === "up";
    banner.hidden = up;
    badge.textContent = up ? "live" : "database unreachable";
    badge.className = up ? "live on" : "live off";
    if (up && document.querySelector("[data-down]")) location.reload();
    else if (up) refresh();
  });
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "live off"; };
}

document.addEventListener("DOMContentLoaded", () => { drawChart(); live(); });
