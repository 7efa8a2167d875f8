"use strict";
// The review queue: keyboard first. J/K move, C/O/S decide (then move on), M comments.
(() => {
  const root = document.getElementById("review");
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = { items: [], index: -1, next: null, busy: false, threshold: null, modelThreshold: null };
  const view = { zoom: 1, x: 0, y: 0 };
  const PAGE = 40; // the next page is fetched (keyset cursor) when J reaches the end

  // ---- loading the queue -------------------------------------------------------------
  function queueUrl() {
    const q = new URLSearchParams();
    for (const key of ["batch", "specimen", "route", "state", "since", "until", "min_p", "max_p", "order"]) {
      if (params.get(key)) q.set(key, params.get(key));
    }
    if (state.threshold !== null) q.set("threshold", state.threshold);
    if (state.next) q.set("after", state.next);
    q.set("limit", String(PAGE));
    return `${root.dataset.queue}?${q}`;
  }

  async function load(reset) {
    if (reset) { state.items = []; state.index = -1; state.next = null; }
    let data;
    if (root.dataset.mode === "sample") {
      data = await LS.getJSON(`${root.dataset.sample}?n=${params.get("n") || 20}`);
      data.next = null;
    } else {
      data = await LS.getJSON(queueUrl());
    }
    state.items.push(...data.items);
    state.next = data.next;
    renderList();
    $("more").hidden = !state.next;
    $("queue-empty").hidden = state.items.length > 0;
    if (state.index < 0 && state.items.length) show(0);
    if (!state.items.length) { $("panel").hidden = true; $("big").removeAttribute("src"); }
  }

  function stateLabel(item) {
    return item.state === "unreviewed" ? "unreviewed" : item.state.replace("_", " ");
  }

  // The model cannot judge this image (model.gate): a person decides positive or negative.
  const cannotJudge = (item) => item.route === "manual_review";

  function renderList() {
    $("queue").replaceChildren(...state.items.map((item, i) => {
      const li = LS.el("li", { className: `q-item s-${item.state}` + (i === state.index ? " current" : "") },
        LS.el("span", { className: "q-p" }, LS.p(item.p_leukemia)),
        LS.el("span", { className: "q-name filename" }, item.file_name),
        LS.el("span", { className: "q-state" },
          cannotJudge(item) ? LS.el("span", { className: "q-route" }, "manual review · ") : null,
          stateLabel(item)));
      li.addEventListener("click", () => show(i));
      return li;
    }));
  }

  // ---- one item ----------------------------------------------------------------------
  async function show(i) {
    if (i < 0 || i >= state.items.length) return;
    state.index = i;
    const item = state.items[i];
    resetView();
    $("big").src = LS.withId(root.dataset.image, item.image_id);
    $("big").alt = item.file_name;
    $("panel").hidden = false;
    $("item-name").textContent = item.file_name;
    $("position").textContent = `image ${i + 1} of ${state.items.length}${state.next ? "+" : ""}`;
    $("item-p").textContent = LS.p(item.p_leukemia);
    const manual = cannotJudge(item);
    $("item-flag").textContent = manual
      ? "cannot judge this image: needs manual review"
      : item.flagged ? "flagged (leukemia suspected)" : "cleared (no leukemia detected)";
    // Beside the image: why the model did not judge it, in the server's plain words.
    $("item-gate").hidden = !manual;
    $("item-gate").textContent = manual
      ? `Model cannot judge this image: ${item.route_reason_text || item.route_reason || "no reason given"}` : "";
    $("item-threshold").textContent = item.threshold;
    $("item-model").textContent = item.model_version;
    $("item-batch").textContent = item.batch_name;
    // A manual-review image is stored as going to a person (flagged): "confirmed" records
    // leukemia and "overturned" no leukemia (db.reviews.label_for), so say just that.
    $("btn-confirm").querySelector("span").textContent = manual
      ? "Leukemia (positive)" : item.flagged ? "Confirm positive" : "Confirm negative";
    $("btn-overturn").querySelector("span").textContent = manual
      ? "No leukemia (negative)" : item.flagged ? "Overturn → negative" : "Overturn → positive";
    // Colour by outcome (red: positive), so that "confirm" of a cleared image reads as negative.
    $("btn-confirm").className = item.flagged ? "pos" : "neg";
    $("btn-overturn").className = item.flagged ? "neg" : "pos";
    $("comment").value = "";
    $("decide-status").textContent = "";
    renderItemState(item);
    renderList();
    const current = $("queue").children[i];
    if (current) current.scrollIntoView({ block: "nearest" });
    $("history").replaceChildren(LS.el("li", { className: "muted none" }, "loading…"));
    await refreshDetails(item);
  }

  // Fresh state and full history: someone else may have decided since the list loaded.
  async function refreshDetails(item) {
    const fresh = await LS.getJSON(LS.withId(root.dataset.item, item.image_id));
    if (state.items[state.index] !== item) return;
    Object.assign(item, fresh);
    renderItemState(item);
    $("history").replaceChildren(...fresh.history.map((h) => LS.el("li", {},
      LS.el("strong", {}, h.decision.replace("_", " ")), ` by ${h.reviewer}, ${h.created_at.slice(0, 19).replace("T", " ")} UTC`,
      h.previous_decision ? ` (was ${h.previous_decision.replace("_", " ")})` : "",
      h.comment ? LS.el("div", { className: "comment" }, h.comment) : null)));
    if (!fresh.history.length) $("history").replaceChildren(LS.el("li", { className: "muted none" }, "no decision yet"));
  }

  function renderItemState(item) {
    $("item-state").textContent = item.state === "unreviewed"
      ? "unreviewed" : `${stateLabel(item)} by ${item.reviewed_by}`;
  }

  async function move(step) {
    const target = state.index + step;
    if (target >= state.items.length && state.next) await load(false);
    if (target >= 0 && target < state.items.length) show(target);
  }

  async function decide(decision) {
    const item = state.items[state.index];
    if (!item || state.busy) return;
    state.busy = true;
    $("decide-status").textContent = "saving…";
    try {
      const saved = await LS.postJSON(LS.withId(root.dataset.decide, item.image_id), {
        decision, comment: $("comment").value, expected_seq: item.seq,
      });
      Object.assign(item, { state: saved.decision, seq: saved.seq, reviewed_by: saved.reviewer, label: saved.label });
      const done = state.items.filter((x) => x.state !== "unreviewed").length;
      $("position").textContent = `image ${state.index + 1} of ${state.items.length}${state.next ? "+" : ""} · ${done} decided`;
      renderList();
      $("decide-status").textContent = `saved: ${saved.decision.replace("_", " ")}`;
      if (state.index + 1 < state.items.length || state.next) {
        await move(1);
      } else {
        $("decide-status").textContent = `saved: ${saved.decision.replace("_", " ")} · end of the queue`;
        await refreshDetails(item);
      }
    } catch (e) {
      $("decide-status").textContent = `not saved: ${e.message}`;
    } finally {
      state.busy = false;
    }
  }

  // ---- zoom and pan ------------------------------------------------------------------
  function applyView() {
    $("big").style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
  }
  function resetView() { Object.assign(view, { zoom: 1, x: 0, y: 0 }); applyView(); }
  function zoomBy(f) { view.zoom = Math.min(16, Math.max(0.5, view.zoom * f)); applyView(); }
  function panBy(dx, dy) { view.x += dx; view.y += dy; applyView(); }

  const stage = $("stage");
  stage.addEventListener("wheel", (e) => { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1.2 : 1 / 1.2); }, { passive: false });
  let drag = null;
  stage.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY }; stage.classList.add("dragging"); });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    panBy(e.clientX - drag.x, e.clientY - drag.y);
    drag = { x: e.clientX, y: e.clientY };
  });
  window.addEventListener("mouseup", () => { drag = null; stage.classList.remove("dragging"); });

  // ---- keyboard ----------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(e.target.tagName);
    if (typing) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.shiftKey && e.key.startsWith("Arrow")) {
      const d = 40;
      const [dx, dy] = { ArrowLeft: [d, 0], ArrowRight: [-d, 0], ArrowUp: [0, d], ArrowDown: [0, -d] }[e.key];
      panBy(dx, dy);
      e.preventDefault();
      return;
    }
    const actions = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      c: () => decide("confirmed"), o: () => decide("overturned"), s: () => decide("second_opinion"),
      m: () => $("comment").focus(), "+": () => zoomBy(1.25), "=": () => zoomBy(1.25),
      "-": () => zoomBy(0.8), 0: () => resetView(),
    };
    const action = actions[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (action) { e.preventDefault(); action(); }
  });

  for (const button of document.querySelectorAll(".decisions button")) {
    button.addEventListener("click", () => decide(button.dataset.decision));
  }
  $("more").addEventListener("click", () => load(false));

  // ---- threshold explorer (one batch) --------------------------------------------------
  const batch = params.get("batch");
  const box = $("threshold-box");
  if (box && batch) {
    const slider = $("threshold");
    const url = (t) => `${root.dataset.threshold.replace("BATCH", encodeURIComponent(batch))}?t=${t}`;
    let timer = null;
    async function counts(t) {
      const c = await LS.getJSON(url(t));
      $("threshold-value").textContent = Number(t).toFixed(2);
      $("threshold-text").textContent =
        `At ${Number(t).toFixed(2)}: ${c.would_flag} of ${c.scored} scored images would be flagged ` +
        `(model threshold ${c.model_threshold}: ${c.flagged}).` +
        (c.manual_review ? ` ${c.manual_review} the model cannot judge go to manual review at any threshold.` : "") +
        " Stored results are not changed.";
      return c;
    }
    slider.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const t = Number(slider.value);
        state.threshold = t === state.modelThreshold ? null : t;
        await counts(t);
        await load(true);
      }, 250);
    });
    $("threshold-reset").addEventListener("click", async () => {
      slider.value = state.modelThreshold;
      state.threshold = null;
      await counts(state.modelThreshold);
      await load(true);
    });
    counts(0.5).then((c) => {
      if (c.model_threshold === null) return;
      state.modelThreshold = c.model_threshold;
      slider.value = c.model_threshold;
      box.hidden = false;
      return counts(c.model_threshold);
    });
  }

  load(true).catch((e) => { $("queue-empty").hidden = false; $("queue-empty").textContent = e.message; });
  stage.focus();
})();
