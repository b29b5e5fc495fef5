// Hamlet viewer: what the play page (viewer.js) and the watch page (watch.js) draw alike. Loaded by both
// before their own script; it defines `window.hamletViewer` and nothing else. Plain JS, no build step.
"use strict";

window.hamletViewer = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const AFFORDANCES = {
    Bed: ["Bd", "#8fb3f5"], LuxuryBed: ["LB", "#5d8ef0"], Shower: ["Sh", "#8fe0e6"],
    HomeMeal: ["HM", "#f7c27b"], FastFood: ["FF", "#f59e42"], Doctor: ["Dr", "#f5a3a3"],
    Hospital: ["Ho", "#e35d5d"], Therapist: ["Th", "#c9a6f0"], Recreation: ["Re", "#e3b5f5"],
    Bar: ["Ba", "#f29ec8"], Job: ["Jb", "#8fd19e"], Labor: ["La", "#5fb877"],
    Gym: ["Gy", "#f2e27a"], Park: ["Pk", "#b9e07a"],
  };

  /** A new SVG element `tag` with `attrs`, appended to `parent` if given, holding `text` if given. */
  function el(tag, attrs = {}, parent = null, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  /** Adds one to the message counter `kind` on <body data-*>, for people and browser tests alike. */
  function count(kind) {
    document.body.dataset[kind] = String(Number(document.body.dataset[kind] || 0) + 1);
  }

  // What the #conn badge knows: the page's socket to the viewer, and whether the viewer's model source (the
  // gRPC server) answers: null until a message says, then true or false (kept across reconnects).
  const link = { socket: "connecting", server: null, problem: "" };

  /** Shows `link` in #conn: "live" only while the socket is open and the server answers. */
  function renderConn() {
    const badge = $("conn");
    const [text, up] = link.server === false ? ["server down", false]
      : link.socket === "closed" ? ["reconnecting", false]
      : link.socket === "open" && link.server ? ["live", true] : ["connecting", false];
    badge.textContent = text;
    badge.className = `conn ${up ? "up" : "down"}`;
    badge.title = link.server === false ? link.problem : "";
    document.body.dataset.conn = text;
  }

  /** Records whether the model's source answers (`up`; `problem`: why not) and redraws the badge. */
  function serverState(up, problem = "") {
    link.server = up;
    link.problem = problem;
    renderConn();
  }

  /**
   * Opens /ws, shows its state in #conn and reopens it 2 s after it closes. `onMessage` gets every message,
   * parsed, and `onOpen()` (if given) runs on every (re)connection. Returns `send(message)`, which sends on the
   * socket open at the time and drops the message if none is.
   */
  function connect(onMessage, onOpen = null) {
    let socket = null;
    function open() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      socket = new WebSocket(`${scheme}://${location.host}/ws`);
      socket.onopen = () => {
        link.socket = "open";
        renderConn();
        if (onOpen) onOpen();
      };
      socket.onclose = () => {
        link.socket = "closed";
        renderConn();
        setTimeout(open, 2000);
      };
      socket.onmessage = (event) => onMessage(JSON.parse(event.data));
    }
    open();
    return (message) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    };
  }

  // ------------------------------------------------------------------ grids

  /**
   * Fills #grids with one card per env: an SVG of `gridSize` x `gridSize` cells and a caption (ids card-i,
   * grid-i, caption-i). A click on a card calls `onFocus(i)`; `decorate(i, svg, caption)` adds what the page
   * draws over the cells, once the card is in the document.
   */
  function buildGrids(numEnvs, gridSize, onFocus, decorate) {
    const g = gridSize;
    // a square of cards about 400 px high whatever the count, so the page fits 1400x1000 with the survival chart
    const columns = Math.ceil(Math.sqrt(numEnvs));
    const size = numEnvs === 1 ? 400 : numEnvs <= 4 ? 190 : numEnvs <= 9 ? 120 : 88;
    const grids = $("grids");
    grids.style.gridTemplateColumns = `repeat(${columns}, auto)`;
    grids.replaceChildren();
    for (let i = 0; i < numEnvs; i++) {
      const card = document.createElement("div");
      card.className = "grid-card";
      card.id = `card-${i}`;
      card.addEventListener("click", () => onFocus(i));
      const svg = el("svg", { viewBox: `0 0 ${g} ${g}`, width: size, height: size, id: `grid-${i}` }, card);
      for (let y = 0; y < g; y++) for (let x = 0; x < g; x++) {
        el("rect", { x, y, width: 1, height: 1, class: "cell" }, svg);
      }
      const caption = document.createElement("div");
      caption.className = "caption";
      caption.id = `caption-${i}`;
      card.appendChild(caption);
      grids.appendChild(card);
      decorate(i, svg, caption);
    }
  }

  /**
   * Draws the affordance `cell` ({x, y, name}) into `group`: a coloured tile with its abbreviation, or a grey
   * "?" tile where `name` is null (the type is unknown). `attrs` go on the tile as well.
   */
  function drawAffordance(group, cell, attrs = {}) {
    const [abbr, colour] = cell.name ? (AFFORDANCES[cell.name] || [cell.name.slice(0, 2), "#ddd"]) : ["?", null];
    const tile = { x: cell.x + 0.06, y: cell.y + 0.06, width: 0.88, height: 0.88, rx: 0.12 };
    if (colour) tile.fill = colour;
    const rect = el("rect", { ...tile, class: cell.name ? "aff" : "aff unknown", ...attrs }, group);
    el("title", {}, rect, cell.name || "an affordance (type not in the observation)");
    el("text", { x: cell.x + 0.5, y: cell.y + 0.5, class: "aff-label" }, group, abbr);
  }

  // ------------------------------------------------------------------ inspector

  /**
   * Fills #meters with one row per meter ({name, threshold, fatal_at_zero}): name, track with its threshold
   * mark, value (ids meter-i). `title(meter)`, if given, is the name's tooltip.
   */
  function buildMeters(meters, title = null) {
    const box = $("meters");
    box.replaceChildren();
    for (const [i, meter] of meters.entries()) {
      const row = document.createElement("div");
      row.className = "meter";
      row.id = `meter-${i}`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = meter.name + (meter.fatal_at_zero ? " ☠" : "");
      if (title) name.title = title(meter);
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

  /** Shows `values` [M] in the rows `buildMeters` made for `meters` [M]; low and critical ones are marked. */
  function renderMeters(meters, values) {
    meters.forEach((meter, i) => {
      const row = $(`meter-${i}`);
      const v = values[i];
      row.querySelector(".fill").style.width = `${Math.max(0, Math.min(1, v)) * 100}%`;
      row.querySelector(".value").textContent = meter.name === "money" ? `$${(v * 100).toFixed(0)}` : v.toFixed(2);
      const critical = (meter.threshold !== null && v < meter.threshold) || (meter.fatal_at_zero && v < 0.1);
      row.classList.toggle("critical", critical);
      row.classList.toggle("low", !critical && v < 0.5);
    });
  }

  /** Defines in `svg` the pattern #hatch, which fills the bars of masked actions (viewer.css). */
  function drawHatch(svg) {
    const defs = el("defs", {}, svg);
    const pattern = el("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, fill: "#eee" }, pattern);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#bbb", "stroke-width": 3 }, pattern);
  }

  /**
   * Draws the Q-values `e.q_values` [A] as bars in #qchart (data-q and data-action hold them for tests): the
   * chosen action `e.action` highlighted, actions masked out by `e.mask` [A] hatched and marked ✕, and
   * `e.greedy_action`, where it is not the chosen one, labelled `greedyLabel`. `names` [A]: the action names.
   */
  function renderQChart(e, names, greedyLabel) {
    const svg = $("qchart");
    svg.replaceChildren();
    const q = e.q_values;
    svg.setAttribute("data-q", q.join(","));
    svg.setAttribute("data-action", e.action);
    if (!q.length) return;
    drawHatch(svg);
    const lo = Math.min(...q), hi = Math.max(...q);
    const span = hi - lo || 1;
    const floor = lo - span * 0.25;  // bars start below the smallest Q so small differences show
    const top = 22, bottom = 140, width = 360 / q.length;
    q.forEach((value, a) => {
      const h = ((value - floor) / (hi - floor || 1)) * (bottom - top);
      const masked = !e.mask[a];
      const cls = a === e.action ? "chosen" : masked ? "masked" : "";
      el("rect", { x: a * width + 8, y: bottom - h, width: width - 16, height: h, class: `qbar ${cls}`,
        id: `qbar-${a}` }, svg);
      el("text", { x: (a + 0.5) * width, y: bottom - h - 5, class: "qlabel" }, svg, value.toFixed(2));
      el("text", { x: (a + 0.5) * width, y: bottom + 14, class: `qname ${cls}` }, svg,
        (names[a] || `#${a}`) + (masked ? " ✕" : ""));
      if (a === e.action) el("text", { x: (a + 0.5) * width, y: bottom + 27, class: "qname chosen" }, svg, "chosen");
      else if (a === e.greedy_action) {
        el("text", { x: (a + 0.5) * width, y: bottom + 27, class: "qname" }, svg, greedyLabel);
      }
    });
    el("line", { x1: 0, x2: 360, y1: bottom, y2: bottom, class: "axis" }, svg);
  }

  return Object.freeze({
    $, el, count, connect, serverState, buildGrids, drawAffordance, buildMeters, renderMeters, drawHatch, renderQChart,
  });
})();
