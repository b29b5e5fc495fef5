// Hamlet viewer page: renders the `session` and `frame` messages of /ws and sends the controls back.
// Plain JS, no build step, no dependencies but common.js (what both pages draw alike), loaded first.
"use strict";

(() => {
  const {
    $, el, count, connect, serverState, buildGrids, drawAffordance, buildMeters, renderMeters, drawHatch, renderQChart,
  } = window.hamletViewer;  // common.js

  const view = {
    session: null, envs: [], layouts: [], focus: 0, history: [], playing: false,
    lastFrameEnvs: null, freshConnection: true, serverUp: null,
  };

  // ------------------------------------------------------------------ helpers

  // The banner says what is wrong *now*: an error stays until a frame, a fresh connection's session or the
  // server's return shows it is over (or 10 s pass); a notice (something already repaired) goes after 10 s.
  let bannerTimer = null;
  function showBanner(text, kind) {
    const banner = $("error-banner");
    banner.textContent = text;
    banner.className = kind;
    banner.hidden = false;
    document.body.dataset.banner = kind;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(hideBanner, 10000);
  }

  function hideBanner() {
    $("error-banner").hidden = true;
    document.body.dataset.banner = "";
  }

  function clearError() {
    if (document.body.dataset.banner === "error") hideBanner();
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
    if (view.freshConnection) clearError();  // a new connection's first session: what went before is over
    view.freshConnection = false;
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
    buildGrids(s.num_envs, s.level.grid_size, (i) => { view.focus = i; renderAll(); }, (i, svg) => {
      el("g", { id: `affs-${i}` }, svg);
      if (s.level.partial) el("rect", { id: `window-${i}`, class: "window" }, svg);
      el("circle", { id: `agent-${i}`, class: "agent", r: 0.3, cx: 0.5, cy: 0.5 }, svg);
      drawLayout(i);
    });
    buildMeters(s.meters, (meter) => (meter.threshold !== null ? `below ${meter.threshold} it drains other meters` : "")
      + (meter.fatal_at_zero ? "; the agent dies at 0" : ""));
    renderAll();
    renderSurvival();
  }

  function drawLayout(i) {
    const group = $(`affs-${i}`);
    if (!group) return;
    group.replaceChildren();
    for (const cell of view.layouts[i] || []) {
      drawAffordance(group, cell, { "data-name": cell.name, id: `aff-${i}-${cell.name}` });
    }
  }

  // ------------------------------------------------------------------ frames

  function onFrame(f) {
    if (!view.session || f.envs.length !== view.session.num_envs) return;  // a frame of a session being replaced
    clearError();  // a step went through: whatever failed before works again
    $("tick").textContent = f.tick;
    $("version-label").textContent = f.version;
    for (const e of f.envs) {
      if (e.layout) { view.layouts[e.env] = e.layout; drawLayout(e.env); }
      view.envs[e.env] = e;
    }
    view.history.push(...f.finished);
    renderAll();
    renderSurvival();
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
    renderMeters(s.meters, e.meters);
    renderQ(e);
  }

  function renderQ(e) {
    if (e.q_values) {
      renderQChart(e, view.session.actions, "greedy");
      return;
    }
    const svg = $("qchart");
    svg.replaceChildren();
    svg.setAttribute("data-q", "");
    drawHatch(svg);
    el("text", { x: 180, y: 85, class: "qname" }, svg, "press Play or Step: Q-values appear with the first decision");
  }

  // ------------------------------------------------------------------ survival plot

  function renderSurvival() {
    const svg = $("survival-plot");
    svg.replaceChildren();
    const s = view.session;
    const records = view.history.slice(-60);
    // the episodes still running, as hollow dots after the finished ones: the chart is never empty for long
    const running = view.envs.filter((e) => (e.status || "alive") === "alive" && e.step > 0);
    svg.setAttribute("data-finished", String(view.history.length));
    svg.setAttribute("data-running", running.map((e) => e.step).join(","));
    const W = 720, H = 150, L = 40, R = 10, T = 10, B = 16;
    const maxY = s ? s.level.max_steps : 500;
    const y = (v) => T + (1 - v / maxY) * (H - T - B);
    for (const v of [0, maxY / 2, maxY]) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }, svg);
      el("text", { x: L - 4, y: y(v) + 3, class: "tick-label", "text-anchor": "end" }, svg, String(v));
    }
    el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, svg);
    const step = (W - L - R) / Math.max(records.length + running.length, 2);
    const x = (i) => L + (i + 0.5) * step;
    running.forEach((e, j) => {
      const dot = el("circle", { cx: x(records.length + j), cy: y(e.step), r: 4, class: "running-dot" }, svg);
      el("title", {}, dot, `episode ${e.episode} (env ${e.env}): running, step ${e.step}`);
    });
    if (!records.length) {
      el("text", { x: W / 2, y: H / 2, class: "tick-label", "text-anchor": "middle" }, svg,
        running.length ? "hollow: the episode running now; a point per episode as it ends" : "no finished episode yet");
      $("survival-summary").textContent = "";
      return;
    }
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
      + "Hollow: running now. Orange lines mark a change of model or version.");
  }

  // ------------------------------------------------------------------ status, socket, controls

  function onStatus(st) {
    if (st.server_up && view.serverUp === false) clearError();  // the server is back: its error is over
    view.serverUp = st.server_up;
    serverState(st.server_up, st.server_problem);
    view.playing = st.playing;
    document.body.dataset.playing = String(st.playing);
    $("play").classList.toggle("active", st.playing);
    $("pause").classList.toggle("active", !st.playing);
    $("speed").value = Math.min(120, Math.max(1, st.speed));
    $("speed-value").textContent = st.speed;
  }

  function onMessage(message) {
    if (message.type === "session") onSession(message);
    else if (message.type === "frame") onFrame(message);
    else if (message.type === "status") onStatus(message);
    const counter = { session: "sessions", frame: "frames", status: "statuses", error: "errors" }[message.type];
    if (counter) count(counter);
    if (message.type === "error") {
      console.warn("viewer:", message.message);
      showBanner(message.message, message.recovered ? "notice" : "error");
    }
  }

  // (message) => void, on the socket open at the time; each (re)connection starts with a fresh session
  const send = connect(onMessage, () => { view.freshConnection = true; });
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
})();
