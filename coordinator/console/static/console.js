// clustral web console: copy buttons, live countdowns, the live
// access request queue and the session recording player. No inline script: the page's CSP allows this
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

// plain is a recording's output as text: CSI sequences (colours, cursor
// movement, erasing), OSC sequences (window titles) and other escape
// sequences are dropped, "\r\n" is a line break, and a backspace removes
// the character before it. Everything else is kept as text: the player
// never renders markup.
function plain(screen, out) {
  out = out.replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, "")
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, "")
    .replace(/\x1b[@-_]/g, "")
    .replace(/\r+\n/g, "\n")
    .replace(/\r/g, "");
  for (const ch of out) {
    if (ch === "\b") screen = screen.slice(0, -1);
    else if (ch >= " " || ch === "\n" || ch === "\t") screen += ch;
  }
  return screen;
}

function clock(s) {
  s = Math.floor(s);
  return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

// player plays the asciicast v2 recording at el.dataset.cast: its output
// events ("o"), timed, with play/pause, speed, a position slider and
// skip-idle (pauses over 2s play as 2s).
function player(el) {
  const screen = el.querySelector("[data-screen]");
  const status = el.querySelector("[data-player-status]");
  const btn = el.querySelector("[data-play]");
  const speed = el.querySelector("[data-speed]");
  const skip = el.querySelector("[data-skip-idle]");
  const slider = el.querySelector("[data-position]");
  const time = el.querySelector("[data-clock]");
  let events = [], at = [], shown = 0, text = "", pos = 0, timer = null, anchor = 0;

  const retime = () => {
    let t = 0, prev = 0;
    at = events.map((e) => {
      const gap = Math.max(0, e.t - prev);
      prev = e.t;
      t += skip.checked ? Math.min(gap, 2) : gap;
      return t;
    });
    slider.max = at.length ? at[at.length - 1] : 0;
  };
  const show = () => {
    screen.textContent = text;
    screen.scrollTop = screen.scrollHeight;
    slider.value = pos;
    time.textContent = clock(pos) + " / " + clock(Number(slider.max));
  };
  // seek shows the output up to position p.
  const seek = (p) => {
    if (p < pos) { shown = 0; text = ""; }
    pos = p;
    while (shown < events.length && at[shown] <= pos) text = plain(text, events[shown++].o);
    show();
  };
  const pause = () => {
    clearTimeout(timer);
    timer = null;
    btn.textContent = "Play";
  };
  const step = () => {
    const p = (performance.now() - anchor) / 1000 * Number(speed.value);
    seek(Math.min(p, Number(slider.max)));
    if (shown >= events.length) { pause(); status.textContent = "End of the recording."; return; }
    timer = setTimeout(step, Math.min(100, Math.max(10, (at[shown] - pos) * 1000 / Number(speed.value))));
  };
  const play = () => {
    if (shown >= events.length) seek(0);
    anchor = performance.now() - pos * 1000 / Number(speed.value);
    btn.textContent = "Pause";
    status.textContent = "Playing.";
    step();
  };
  btn.addEventListener("click", () => (timer ? pause() : play()));
  speed.addEventListener("change", () => { if (timer) { pause(); play(); } });
  skip.addEventListener("change", () => {
    const playing = timer;
    pause();
    retime();
    seek(shown ? at[shown - 1] : 0);
    if (playing) play();
  });
  slider.addEventListener("input", () => {
    const playing = timer;
    pause();
    seek(Number(slider.value));
    if (playing) play();
  });

  status.textContent = "Loading the recording…";
  fetch(el.dataset.cast, { credentials: "same-origin" })
    .then((r) => { if (!r.ok) throw new Error("the coordinator answered " + r.status); return r.text(); })
    .then((cast) => {
      for (const line of cast.split("\n").slice(1)) {
        let e;
        try { e = JSON.parse(line); } catch (_) { continue; }
        if (Array.isArray(e) && e[1] === "o" && typeof e[2] === "string" && isFinite(e[0])) events.push({ t: Number(e[0]), o: e[2] });
      }
      retime();
      show();
      btn.disabled = false;
      status.textContent = events.length + " output events. Press Play.";
      el.dataset.loaded = "true";
    })
    .catch((err) => { status.textContent = "The recording could not be loaded: " + err.message + ". Reload the page."; });
}

// follower shows a running session's recording, at el.dataset.follow, as
// it grows: once a second it asks for the bytes after those it has
// (&offset=N), shows the output events of the complete lines, and keeps
// an incomplete last line for the next answer. It stops when the
// answer's X-Clustral-Recording-State is "stored" (the session ended),
// and shows the link to the stored recording.
function follower(el) {
  const screen = el.querySelector("[data-screen]");
  const status = el.querySelector("[data-player-status]");
  const stored = el.querySelector("[data-stored]");
  const decoder = new TextDecoder();
  let offset = 0, pending = "", header = true, text = "", events = 0;
  const take = (chunk) => {
    const lines = (pending + chunk).split("\n");
    pending = lines.pop();
    for (const line of lines) {
      if (header) { header = false; continue; }
      let e;
      try { e = JSON.parse(line); } catch (_) { continue; }
      if (Array.isArray(e) && e[1] === "o" && typeof e[2] === "string") { text = plain(text, e[2]); events++; }
    }
    screen.textContent = text;
    screen.scrollTop = screen.scrollHeight;
  };
  const poll = () => {
    fetch(el.dataset.follow + "&offset=" + offset, { credentials: "same-origin", cache: "no-store" })
      .then((r) => {
        if (!r.ok) throw new Error("the coordinator answered " + r.status);
        const state = r.headers.get("X-Clustral-Recording-State");
        return r.arrayBuffer().then((b) => ({ b, state }));
      })
      .then(({ b, state }) => {
        offset += b.byteLength;
        take(decoder.decode(b, { stream: true }));
        el.dataset.offset = String(offset);
        if (state === "stored") {
          status.textContent = "The session ended (" + events + " output events).";
          stored.hidden = false;
          el.dataset.ended = "true";
          return;
        }
        status.textContent = "Live: " + events + " output events so far.";
        setTimeout(poll, 1000);
      })
      .catch((err) => {
        status.textContent = "The session could not be followed: " + err.message + ". Trying again.";
        setTimeout(poll, 5000);
      });
  };
  status.textContent = "Connecting to the session…";
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  if (window.EventSource) document.querySelectorAll("[data-live]").forEach(live);
  document.querySelectorAll("[data-cast]").forEach(player);
  document.querySelectorAll("[data-follow]").forEach(follower);
});

// The header's menus are <details>: they open and close without this
// script. It only closes an open one on Escape (handing the focus back
// to its summary) or on a click elsewhere, as a menu is expected to.
document.addEventListener("keydown", (ev) => {
  if (ev.key !== "Escape") return;
  for (const m of document.querySelectorAll("details.menu[open]")) {
    m.open = false;
    m.querySelector("summary").focus();
  }
});
document.addEventListener("click", (ev) => {
  for (const m of document.querySelectorAll("details.menu[open]")) {
    if (!m.contains(ev.target)) m.open = false;
  }
});
