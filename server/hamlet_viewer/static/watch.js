// Hamlet viewer, watch mode: draws the `watch` and `watch_frame` messages of /ws (a server session followed
// read-only, rendered from its observations). Plain JS, no build step, no dependencies but common.js (what both
// pages draw alike), loaded first.
"use strict";

(() => {
  const { $, el, count, connect, serverState, buildGrids, drawAffordance, buildMeters, renderMeters, renderQChart } =
    window.hamletViewer;  // common.js
  const view = { watch: null, envs: [], focus: 0 };

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
    buildGrids(w.num_envs, g, (i) => { view.focus = i; renderAll(); }, (i, svg, caption) => {
      el("g", { id: `dyn-${i}` }, svg);
      caption.textContent = `env ${i} · waiting for a frame`;
    });
    buildMeters(w.meters);
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
    for (const cell of e.cells) drawAffordance(group, cell);
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
    renderMeters(w.meters, e.meters);
    renderQChart(e, w.actions, "argmax");
  }

  // ------------------------------------------------------------------ socket

  function onMessage(m) {
    if (m.type === "sessions") onSessions(m);
    else if (m.type === "watch") onWatch(m);
    else if (m.type === "watch_frame") onFrame(m);
    else if (m.type === "watch_status") banner("status-banner", m.message);
    else if (m.type === "error") { console.warn("viewer:", m.message); banner("error-banner", m.message); }
    const counter = { sessions: "sessions", watch: "watches", watch_frame: "frames", error: "errors" }[m.type];
    if (counter) count(counter);
    if (counter && m.type !== "error") serverState(true);  // these come from the server's answers
  }

  const send = connect(onMessage);  // (message) => void, on the socket open at the time
  $("session").addEventListener("change", (ev) => {
    if (ev.target.value) send({ type: "watch", session_id: ev.target.value });
  });
})();
