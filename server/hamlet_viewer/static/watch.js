// Hamlet viewer, watch mode: draws the `watch` and `watch_frame` messages of /ws (a server session followed
// read-only, rendered from its observations). Plain JS, no build step, no dependencies.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const AFFORDANCES = {
    Bed: ["Bd", "#8fb3f5"], LuxuryBed: ["LB", "#5d8ef0"], Shower: ["Sh", "#8fe0e6"],
    HomeMeal: ["HM", "#f7c27b"], FastFood: ["FF", "#f59e42"], Doctor: ["Dr", "#f5a3a3"],
    Hospital: ["Ho", "#e35d5d"], Therapist: ["Th", "#c9a6f0"], Recreation: ["Re", "#e3b5f5"],
    Bar: ["Ba", "#f29ec8"], Job: ["Jb", "#8fd19e"], Labor: ["La", "#5fb877"],
    Gym: ["Gy", "#f2e27a"], Park: ["Pk", "#b9e07a"],
  };
  const view = { watch: null, envs: [], focus: 0, socket: null };

  function el(tag, attrs = {}, parent = null, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function count(kind) {
    document.body.dataset[kind] = String(Number(document.body.dataset[kind] || 0) + 1);
  }

  function banner(id, text) {
    $(id).textContent = text || "";
    $(id).hidden = !text;
  }

  // ------------------------------------------------------------------ sessions and the watched one

  function onSessions(m) {
    const select = $("session");
    const options = m.sessions.map((s) => {
      const option = document.createElement("option");
      option.value = s.session_id;
      option.textContent = `${s.session_id} · ${s.model} v${s.version} · ${s.num_envs} env${s.num_envs > 1 ? "s" : ""}`;
      return option;
    });
    if (!options.length) {
      const none = document.createElement("option");
      none.value = "";
      none.textContent = "no open episode stream";
      options.push(none);
    }
    select.replaceChildren(...options);
    select.value = m.watching || "";
  }

  function onWatch(w) {
    view.watch = w;
    view.envs = [];
    view.focus = Math.min(view.focus, w.num_envs - 1);
    banner("status-banner", "");
    $("model-label").textContent = w.model;
    $("version-label").textContent = w.version;
    $("session-label").textContent = w.session_id;
    $("num-envs").textContent = w.num_envs;
    $("level-label").textContent = w.level.name;
    $("obs-label").textContent = w.level.partial
      ? `${w.obs_dim} floats: the ${2 * w.level.vision_range + 1}x${2 * w.level.vision_range + 1} window`
      : `${w.obs_dim} floats: the whole ${w.level.grid_size}x${w.level.grid_size} grid`;
    const g = w.level.grid_size;
    $("legend").textContent = (w.level.partial
      ? `${w.level.name}: only the dashed window is in the observation; the rest of the ${g}x${g} grid is greyed out.`
      : `${w.level.name}: the observation holds the whole ${g}x${g} grid (where affordances are, not which).`)
      + (w.layout_known ? " Types come from the layout the model trained on, while the observation agrees with it."
        : " A type shows once the agent stands on it (\"?\" until then).");
    buildGrids();
    buildMeters();
  }

  function buildGrids() {
    const w = view.watch;
    const g = w.level.grid_size;
    const size = w.num_envs === 1 ? 440 : w.num_envs <= 4 ? 230 : 150;
    const grids = $("grids");
    grids.replaceChildren();
    for (let i = 0; i < w.num_envs; i++) {
      const card = document.createElement("div");
      card.className = "grid-card";
      card.id = `card-${i}`;
      card.addEventListener("click", () => { view.focus = i; renderAll(); });
      const svg = el("svg", { viewBox: `0 0 ${g} ${g}`, width: size, height: size, id: `grid-${i}` }, card);
      for (let y = 0; y < g; y++) for (let x = 0; x < g; x++) el("rect", { x, y, width: 1, height: 1, class: "cell" }, svg);
      el("g", { id: `dyn-${i}` }, svg);
      const caption = document.createElement("div");
      caption.className = "caption";
      caption.id = `caption-${i}`;
      caption.textContent = `env ${i} · waiting for a frame`;
      card.appendChild(caption);
      grids.appendChild(card);
    }
  }

  function buildMeters() {
    const box = $("meters");
    box.replaceChildren();
    for (const [i, meter] of view.watch.meters.entries()) {
      const row = document.createElement("div");
      row.className = "meter";
      row.id = `meter-${i}`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = meter.name + (meter.fatal_at_zero ? " ☠" : "");
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      track.appendChild(fill);
      if (meter.threshold !== null) {
        const mark = document.createElement("div");
        mark.className = "threshold";
        mark.style.left = `${meter.threshold * 100}%`;
        track.appendChild(mark);
      }
      const value = document.createElement("span");
      value.className = "value";
      row.append(name, track, value);
      box.appendChild(row);
    }
  }

  // ------------------------------------------------------------------ frames

  function onFrame(f) {
    if (!view.watch || f.session_id !== view.watch.session_id || f.envs.length !== view.watch.num_envs) return;
    $("step-index").textContent = f.step_index;
    $("version-label").textContent = f.version;
    $("dropped").textContent = f.frames_dropped;
    $("skipped").textContent = f.skipped;
    document.body.dataset.stepIndex = String(f.step_index);
    view.envs = f.envs;
    renderAll();
  }

  function renderAll() {
    view.envs.forEach((e, i) => renderGrid(i, e));
    if (view.envs.length) renderInspector(view.envs[view.focus]);
  }

  function renderGrid(i, e) {
    const w = view.watch;
    const g = w.level.grid_size;
    const group = $(`dyn-${i}`);
    group.replaceChildren();
    const [x0, y0, x1, y1] = e.region;
    for (const cell of e.cells) {
      const [abbr, colour] = cell.name ? (AFFORDANCES[cell.name] || [cell.name.slice(0, 2), "#ddd"]) : ["?", null];
      const attrs = { x: cell.x + 0.06, y: cell.y + 0.06, width: 0.88, height: 0.88, rx: 0.12,
        class: cell.name ? "aff" : "aff unknown" };
      if (colour) attrs.fill = colour;
      const rect = el("rect", attrs, group);
      el("title", {}, rect, cell.name || "an affordance (type not in the observation)");
      el("text", { x: cell.x + 0.5, y: cell.y + 0.5, class: "aff-label" }, group, abbr);
    }
    for (let y = 0; y < g; y++) for (let x = 0; x < g; x++) {
      if (x < x0 || x >= x1 || y < y0 || y >= y1) el("rect", { x, y, width: 1, height: 1, class: "unseen" }, group);
    }
    if (w.level.partial) {
      el("rect", { x: x0 + 0.03, y: y0 + 0.03, width: x1 - x0 - 0.06, height: y1 - y0 - 0.06, class: "window" }, group);
    }
    for (const [cx, cy] of e.candidates) {
      el("circle", { cx: cx + 0.5, cy: cy + 0.5, r: 0.36, class: "cand" }, group);
    }
    if (e.position) {
      el("circle", { id: `agent-${i}`, class: "agent", r: 0.3, cx: e.position[0] + 0.5, cy: e.position[1] + 0.5,
        "data-x": e.position[0], "data-y": e.position[1] }, group);
    }
    $(`card-${i}`).dataset.agent = e.position ? e.position.join(",") : "";
    $(`card-${i}`).classList.toggle("focus", i === view.focus);
    $(`card-${i}`).classList.toggle("reset", e.reset);
    $(`caption-${i}`).textContent = `env ${i} · step ${e.step}` + (e.reset ? " · new episode" : "")
      + (e.position ? "" : " · agent: one of the circled cells");
  }

  function renderInspector(e) {
    const w = view.watch;
    $("focus-env").textContent = e.env;
    $("step").textContent = e.step + (e.reset ? " (new episode)" : "");
    $("time-of-day").textContent = e.time_of_day === null ? "– (no clock in this level)"
      : `${String(e.time_of_day).padStart(2, "0")}:00` + (e.progress ? ` · interaction tick ${e.progress}` : "");
    $("here").textContent = e.affordance_here || "nothing";
    $("action-label").textContent = e.action === null ? "–"
      : w.actions[e.action] + (e.action === e.greedy_action ? " (greedy)" : " (not the argmax: an ε draw?)");
    w.meters.forEach((meter, i) => {
      const row = $(`meter-${i}`);
      const v = e.meters[i];
      row.querySelector(".fill").style.width = `${Math.max(0, Math.min(1, v)) * 100}%`;
      row.querySelector(".value").textContent = meter.name === "money" ? `$${(v * 100).toFixed(0)}` : v.toFixed(2);
      const critical = (meter.threshold !== null && v < meter.threshold) || (meter.fatal_at_zero && v < 0.1);
      row.classList.toggle("critical", critical);
      row.classList.toggle("low", !critical && v < 0.5);
    });
    renderQ(e);
  }

  function renderQ(e) {
    const svg = $("qchart");
    svg.replaceChildren();
    const names = view.watch.actions;
    const q = e.q_values;
    svg.setAttribute("data-q", q.join(","));
    svg.setAttribute("data-action", e.action);
    if (!q.length) return;
    const lo = Math.min(...q), hi = Math.max(...q);
    const span = hi - lo || 1;
    const floor = lo - span * 0.25;
    const top = 22, bottom = 140, width = 360 / q.length;
    const defs = el("defs", {}, svg);
    const pattern = el("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, fill: "#eee" }, pattern);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#bbb", "stroke-width": 3 }, pattern);
    q.forEach((value, a) => {
      const h = ((value - floor) / (hi - floor || 1)) * (bottom - top);
      const masked = !e.mask[a];
      const cls = a === e.action ? "chosen" : masked ? "masked" : "";
      el("rect", { x: a * width + 8, y: bottom - h, width: width - 16, height: h, class: `qbar ${cls}`, id: `qbar-${a}` }, svg);
      el("text", { x: (a + 0.5) * width, y: bottom - h - 5, class: "qlabel" }, svg, value.toFixed(2));
      el("text", { x: (a + 0.5) * width, y: bottom + 14, class: `qname ${cls}` }, svg,
        (names[a] || `#${a}`) + (masked ? " ✕" : ""));
      if (a === e.action) el("text", { x: (a + 0.5) * width, y: bottom + 27, class: "qname chosen" }, svg, "chosen");
      else if (a === e.greedy_action) el("text", { x: (a + 0.5) * width, y: bottom + 27, class: "qname" }, svg, "argmax");
    });
    el("line", { x1: 0, x2: 360, y1: bottom, y2: bottom, class: "axis" }, svg);
  }

  // ------------------------------------------------------------------ socket

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    view.socket = socket;
    socket.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn up"; };
    socket.onclose = () => {
      $("conn").textContent = "reconnecting";
      $("conn").className = "conn down";
      setTimeout(connect, 2000);
    };
    socket.onmessage = (event) => {
      const m = JSON.parse(event.data);
      if (m.type === "sessions") onSessions(m);
      else if (m.type === "watch") onWatch(m);
      else if (m.type === "watch_frame") onFrame(m);
      else if (m.type === "watch_status") banner("status-banner", m.message);
      else if (m.type === "error") { console.warn("viewer:", m.message); banner("error-banner", m.message); }
      const counter = { sessions: "sessions", watch: "watches", watch_frame: "frames", error: "errors" }[m.type];
      if (counter) count(counter);
    };
  }

  $("session").addEventListener("change", (ev) => {
    if (view.socket && view.socket.readyState === WebSocket.OPEN && ev.target.value) {
      view.socket.send(JSON.stringify({ type: "watch", session_id: ev.target.value }));
    }
  });
  connect();
})();
