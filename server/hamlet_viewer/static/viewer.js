// Hamlet viewer page: renders the `session` and `frame` messages of /ws and sends the controls back.
// Plain JS, no build step, no dependencies.
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

  const view = {
    session: null, envs: [], layouts: [], focus: 0, history: [], socket: null, playing: false,
    lastFrameEnvs: null,
  };

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs = {}, parent = null, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function send(message) {
    if (view.socket && view.socket.readyState === WebSocket.OPEN) view.socket.send(JSON.stringify(message));
  }

  let bannerTimer = null;
  function showError(text) {
    const banner = $("error-banner");
    banner.textContent = text;
    banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { banner.hidden = true; }, 10000);
  }

  function fillSelect(select, options, value) {
    select.replaceChildren(...options.map(([v, label]) => {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = label;
      return option;
    }));
    select.value = value;
  }

  // ------------------------------------------------------------------ session: controls and grids

  function onSession(s) {
    view.session = s;
    view.focus = Math.min(view.focus, s.num_envs - 1);
    view.envs = s.envs.map((e) => ({ ...e, status: "alive", q_values: null, mask: null, action: null }));
    view.layouts = s.envs.map((e) => e.layout);
    view.history = s.survival.slice();
    $("model-label").textContent = s.model;
    $("version-label").textContent = s.version;
    $("network-label").textContent = s.recurrent ? "CNN+LSTM (server-held state)" : "MLP";
    if (s.source === "local") $("network-label").textContent = s.recurrent ? "CNN+LSTM (local)" : "MLP (local)";
    $("source-label").textContent = s.target;
    $("tick").textContent = s.tick;
    fillSelect($("model"), s.models.map((m) => [m.name, `${m.name} (obs ${m.obs_dim})`]), s.model);
    const entry = s.models.find((m) => m.name === s.model) || { versions: [s.version], latest_version: s.version };
    const versions = [["latest", `latest (${entry.latest_version})`]].concat(
      entry.versions.slice().reverse().map((v) => [String(v), String(v)]));
    fillSelect($("version"), versions, s.follow_version ? "latest" : String(s.version));
    fillSelect($("level"), s.levels.map((l) => [l, l]), s.level.name);
    const counts = [1, 2, 4, 9, 16].filter((n) => n <= s.max_envs);
    fillSelect($("envs"), counts.map((n) => [String(n), String(n)]), String(s.num_envs));
    $("layout").value = s.layout;
    $("follow-latest").checked = s.follow_latest;
    $("epsilon").value = s.epsilon;
    $("epsilon-value").textContent = Number(s.epsilon).toFixed(2);
    $("layout-note").textContent = {
      trained: "the affordance layout the model was trained on (from its metadata)",
      seed: "a layout drawn from the seed (the model's metadata names none)",
      random: "each env draws a new layout every episode",
    }[s.layout_source];
    $("legend").textContent = s.level.partial
      ? `${s.level.name}: ${s.level.grid_size}x${s.level.grid_size} grid; the dashed square is the `
        + `${2 * s.level.vision_range + 1}x${2 * s.level.vision_range + 1} window the agent sees`
      : `${s.level.name}: ${s.level.grid_size}x${s.level.grid_size} grid, fully observed`;
    buildGrids();
    buildMeters();
    renderAll();
    renderSurvival();
  }

  function buildGrids() {
    const s = view.session;
    const g = s.level.grid_size;
    const size = s.num_envs === 1 ? 440 : s.num_envs <= 4 ? 230 : 150;
    const grids = $("grids");
    grids.replaceChildren();
    for (let i = 0; i < s.num_envs; i++) {
      const card = document.createElement("div");
      card.className = "grid-card";
      card.id = `card-${i}`;
      card.addEventListener("click", () => { view.focus = i; renderAll(); });
      const svg = el("svg", { viewBox: `0 0 ${g} ${g}`, width: size, height: size, id: `grid-${i}` }, card);
      for (let y = 0; y < g; y++) for (let x = 0; x < g; x++) {
        el("rect", { x, y, width: 1, height: 1, class: "cell" }, svg);
      }
      el("g", { id: `affs-${i}` }, svg);
      if (s.level.partial) el("rect", { id: `window-${i}`, class: "window" }, svg);
      el("circle", { id: `agent-${i}`, class: "agent", r: 0.3, cx: 0.5, cy: 0.5 }, svg);
      const caption = document.createElement("div");
      caption.className = "caption";
      caption.id = `caption-${i}`;
      card.appendChild(caption);
      grids.appendChild(card);
      drawLayout(i);
    }
  }

  function drawLayout(i) {
    const group = $(`affs-${i}`);
    if (!group) return;
    group.replaceChildren();
    for (const cell of view.layouts[i] || []) {
      const [abbr, colour] = AFFORDANCES[cell.name] || [cell.name.slice(0, 2), "#ddd"];
      const rect = el("rect", {
        x: cell.x + 0.06, y: cell.y + 0.06, width: 0.88, height: 0.88, rx: 0.12, fill: colour,
        class: "aff", "data-name": cell.name, id: `aff-${i}-${cell.name}`,
      }, group);
      el("title", {}, rect, cell.name);
      el("text", { x: cell.x + 0.5, y: cell.y + 0.5, class: "aff-label" }, group, abbr);
    }
  }

  function buildMeters() {
    const box = $("meters");
    box.replaceChildren();
    for (const [i, meter] of view.session.meters.entries()) {
      const row = document.createElement("div");
      row.className = "meter";
      row.id = `meter-${i}`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = meter.name + (meter.fatal_at_zero ? " ☠" : "");
      name.title = (meter.threshold !== null ? `below ${meter.threshold} it drains other meters` : "")
        + (meter.fatal_at_zero ? "; the agent dies at 0" : "");
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

  function count(kind) {  // message counters on <body data-*>, for people and browser tests alike
    document.body.dataset[kind] = String(Number(document.body.dataset[kind] || 0) + 1);
  }

  function onFrame(f) {
    if (!view.session || f.envs.length !== view.session.num_envs) return;  // a frame of a session being replaced
    $("tick").textContent = f.tick;
    $("version-label").textContent = f.version;
    for (const e of f.envs) {
      if (e.layout) { view.layouts[e.env] = e.layout; drawLayout(e.env); }
      view.envs[e.env] = e;
    }
    if (f.finished.length) {
      view.history.push(...f.finished);
      renderSurvival();
    }
    renderAll();
  }

  function renderAll() {
    if (!view.session) return;
    view.envs.forEach((e, i) => renderGrid(i, e));
    renderInspector(view.envs[view.focus]);
  }

  function renderGrid(i, e) {
    const s = view.session;
    const [x, y] = e.position;
    const agent = $(`agent-${i}`);
    agent.setAttribute("cx", x + 0.5);
    agent.setAttribute("cy", y + 0.5);
    agent.setAttribute("data-x", x);
    agent.setAttribute("data-y", y);
    agent.setAttribute("class", `agent ${e.status || "alive"}`);
    if (s.level.partial) {
      const r = s.level.vision_range;
      const g = s.level.grid_size;
      const x0 = Math.max(0, x - r), y0 = Math.max(0, y - r);
      const x1 = Math.min(g, x + r + 1), y1 = Math.min(g, y + r + 1);
      const win = $(`window-${i}`);
      win.setAttribute("x", x0 + 0.03);
      win.setAttribute("y", y0 + 0.03);
      win.setAttribute("width", x1 - x0 - 0.06);
      win.setAttribute("height", y1 - y0 - 0.06);
    }
    for (const rect of $(`affs-${i}`).querySelectorAll("rect")) {
      rect.classList.toggle("used", rect.dataset.name === e.interaction);
    }
    $(`card-${i}`).classList.toggle("focus", i === view.focus);
    $(`caption-${i}`).textContent = `env ${i} · ep ${e.episode} · step ${e.step}`
      + (e.status && e.status !== "alive" ? ` · ${e.status}` : "");
  }

  function renderInspector(e) {
    const s = view.session;
    $("focus-env").textContent = e.env;
    $("episode").textContent = e.episode;
    $("step").textContent = e.step;
    $("reward").textContent = Number(e.reward).toFixed(2);
    $("time-of-day").textContent = e.time_of_day === null || e.time_of_day === undefined
      ? "– (no clock in this level)" : `${String(e.time_of_day).padStart(2, "0")}:00`;
    $("env-status").textContent = e.status || "alive";
    if (e.action === null || e.action === undefined) {
      $("action-label").textContent = "–";
    } else {
      const explored = e.action !== e.greedy_action ? " (random, ε)" : " (greedy)";
      $("action-label").textContent = s.actions[e.action] + explored + (e.interaction ? ` → used ${e.interaction}` : "");
    }
    s.meters.forEach((meter, i) => {
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
    const defs = el("defs", {}, svg);
    const pattern = el("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, fill: "#eee" }, pattern);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#bbb", "stroke-width": 3 }, pattern);
    const names = view.session.actions;
    if (!e.q_values) {
      svg.setAttribute("data-q", "");
      el("text", { x: 180, y: 85, class: "qname" }, svg, "press Play or Step: Q-values appear with the first decision");
      return;
    }
    const q = e.q_values;
    svg.setAttribute("data-q", q.join(","));
    svg.setAttribute("data-action", e.action);
    const lo = Math.min(...q), hi = Math.max(...q);
    const span = hi - lo || 1;
    const floor = lo - span * 0.25;  // bars start below the smallest Q so small differences show
    const top = 22, bottom = 140, width = 360 / q.length;
    q.forEach((value, a) => {
      const h = ((value - floor) / (hi - floor || 1)) * (bottom - top);
      const masked = !e.mask[a];
      const cls = masked ? "masked" : a === e.action ? "chosen" : "";
      el("rect", { x: a * width + 8, y: bottom - h, width: width - 16, height: h, class: `qbar ${cls}`,
        id: `qbar-${a}` }, svg);
      el("text", { x: (a + 0.5) * width, y: bottom - h - 5, class: "qlabel" }, svg, value.toFixed(2));
      el("text", { x: (a + 0.5) * width, y: bottom + 14, class: `qname ${cls}` }, svg,
        names[a] + (masked ? " ✕" : ""));
      if (a === e.greedy_action && a !== e.action) {
        el("text", { x: (a + 0.5) * width, y: bottom + 27, class: "qname" }, svg, "greedy");
      }
      if (a === e.action) el("text", { x: (a + 0.5) * width, y: bottom + 27, class: "qname chosen" }, svg, "chosen");
    });
    el("line", { x1: 0, x2: 360, y1: bottom, y2: bottom, class: "axis" }, svg);
  }

  // ------------------------------------------------------------------ survival plot

  function renderSurvival() {
    const svg = $("survival-plot");
    svg.replaceChildren();
    const s = view.session;
    const records = view.history.slice(-60);
    const W = 720, H = 170, L = 40, R = 10, T = 10, B = 24;
    const maxY = s ? s.level.max_steps : 500;
    const y = (v) => T + (1 - v / maxY) * (H - T - B);
    for (const v of [0, maxY / 2, maxY]) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }, svg);
      el("text", { x: L - 4, y: y(v) + 3, class: "tick-label", "text-anchor": "end" }, svg, String(v));
    }
    el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, svg);
    if (!records.length) {
      el("text", { x: W / 2, y: H / 2, class: "tick-label", "text-anchor": "middle" }, svg,
        "no finished episode yet");
      $("survival-summary").textContent = "";
      return;
    }
    const step = (W - L - R) / Math.max(records.length, 2);
    const x = (i) => L + (i + 0.5) * step;
    const path = (key) => records.map((r, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ");
    records.forEach((r, i) => {
      if (i > 0 && (r.model !== records[i - 1].model || r.version !== records[i - 1].version)) {
        el("line", { x1: x(i) - step / 2, x2: x(i) - step / 2, y1: T, y2: H - B, class: "version-mark" }, svg);
      }
    });
    el("path", { d: path("baseline"), class: "base-line" }, svg);
    el("path", { d: path("steps"), class: "model-line" }, svg);
    records.forEach((r, i) => {
      const dot = el("circle", { cx: x(i), cy: y(r.steps), r: 3, class: "model-dot" }, svg);
      el("title", {}, dot, `episode ${r.episode} (env ${r.env}, ${r.model} v${r.version}): ${r.steps} steps, `
        + `${r.reason}; random policy ${r.baseline}`);
      el("circle", { cx: x(i), cy: y(r.baseline), r: 2, class: "base-dot" }, svg);
    });
    const mean = (key) => records.reduce((a, r) => a + r[key], 0) / records.length;
    $("survival-summary").innerHTML = "";
    $("survival-summary").append(
      `last ${records.length} episodes: `,
      Object.assign(document.createElement("b"), { textContent: `model ${mean("steps").toFixed(1)} steps` }),
      ` vs random policy ${mean("baseline").toFixed(1)} (dashed; same layout and start cell). `
      + "Orange lines mark a change of model or version.");
  }

  // ------------------------------------------------------------------ status, socket, controls

  function onStatus(st) {
    view.playing = st.playing;
    document.body.dataset.playing = String(st.playing);
    $("play").classList.toggle("active", st.playing);
    $("pause").classList.toggle("active", !st.playing);
    $("speed").value = Math.min(60, Math.max(1, st.speed));
    $("speed-value").textContent = st.speed;
  }

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
      const message = JSON.parse(event.data);
      if (message.type === "session") onSession(message);
      else if (message.type === "frame") onFrame(message);
      else if (message.type === "status") onStatus(message);
      const counter = { session: "sessions", frame: "frames", status: "statuses", error: "errors" }[message.type];
      if (counter) count(counter);
      else if (message.type === "error") { console.warn("viewer:", message.message); showError(message.message); }
    };
  }

  function configure(settings) { send({ type: "configure", settings }); }

  $("play").addEventListener("click", () => send({ type: "play" }));
  $("pause").addEventListener("click", () => send({ type: "pause" }));
  $("step-once").addEventListener("click", () => send({ type: "step" }));
  $("new-episode").addEventListener("click", () => send({ type: "new_episode" }));
  $("speed").addEventListener("input", (ev) => { $("speed-value").textContent = ev.target.value; });
  $("speed").addEventListener("change", (ev) => send({ type: "speed", value: Number(ev.target.value) }));
  $("epsilon").addEventListener("input", (ev) => { $("epsilon-value").textContent = Number(ev.target.value).toFixed(2); });
  $("epsilon").addEventListener("change", (ev) => configure({ epsilon: Number(ev.target.value) }));
  $("model").addEventListener("change", (ev) => configure({ model: ev.target.value }));
  $("version").addEventListener("change", (ev) => configure({ version: ev.target.value }));
  $("level").addEventListener("change", (ev) => configure({ level: ev.target.value }));
  $("envs").addEventListener("change", (ev) => configure({ num_envs: Number(ev.target.value) }));
  $("layout").addEventListener("change", (ev) => configure({ layout: ev.target.value }));
  $("follow-latest").addEventListener("change", (ev) => configure({ follow_latest: ev.target.checked }));
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "SELECT" || ev.target.tagName === "INPUT") return;
    if (ev.key === " ") { ev.preventDefault(); send({ type: view.playing ? "pause" : "play" }); }
    if (ev.key === "ArrowRight") send({ type: "step" });
  });
  connect();
})();
