// clustral web console: copy buttons, live countdowns and the live
// access request queue. No inline script: the page's CSP allows this
// file only.
"use strict";

function left(until) {
  let s = Math.floor((until - Date.now()) / 1000);
  if (s <= 0) return "now (ended)";
  const d = Math.floor(s / 86400); s %= 86400;
  const h = Math.floor(s / 3600); s %= 3600;
  const m = Math.floor(s / 60); s %= 60;
  const parts = [];
  if (d) parts.push(d + "d");
  if (h) parts.push(h + "h");
  if (m) parts.push(m + "m");
  if (!d && !h) parts.push(s + "s");
  return "in " + parts.join(" ");
}

function tick() {
  for (const el of document.querySelectorAll("[data-until]")) {
    const until = Date.parse(el.dataset.until);
    if (!isNaN(until)) {
      el.textContent = left(until);
      el.title = new Date(until).toLocaleString();
    }
  }
}

document.addEventListener("click", (ev) => {
  const btn = ev.target.closest("[data-copy]");
  if (!btn) return;
  const done = (text) => { btn.textContent = text; setTimeout(() => { btn.textContent = "Copy"; }, 1500); };
  if (navigator.clipboard) {
    navigator.clipboard.writeText(btn.dataset.copy).then(() => done("Copied"), () => done("Select and copy"));
  } else {
    done("Select and copy");
  }
});

// live opens the event stream of each [data-live] element and puts the
// HTML of its "html" events into its target: in place of what is there
// (data-live-mode="replace") or before it ("prepend").
function live(el) {
  const target = document.getElementById(el.dataset.liveTarget);
  const es = new EventSource(el.dataset.live);
  es.addEventListener("html", (ev) => {
    // The HTML is rendered and escaped by the server's templates.
    const focused = document.activeElement && document.activeElement.id;
    if (el.dataset.liveMode === "prepend") {
      target.insertAdjacentHTML("afterbegin", ev.data);
    } else {
      target.innerHTML = ev.data;
    }
    if (focused) {
      const f = document.getElementById(focused);
      if (f) f.focus();
    }
    tick();
    el.dataset.changed = new Date().toLocaleTimeString();
  });
  es.addEventListener("end", (ev) => {
    es.close();
    el.textContent = ev.data + " Reload the page.";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  if (window.EventSource) document.querySelectorAll("[data-live]").forEach(live);
});
