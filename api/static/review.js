"use strict";
// The review queue: keyboard first. J/K move, C/O/S decide (then move on), U undoes, M comments.
(() => {
  const root = document.getElementById("review");
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = {
    items: [], index: -1, next: null, busy: false, threshold: null, modelThreshold: null,
    warnedAbout: null, // the image whose unsaved comment the reviewer was warned about
    undo: null, // {item, seq, comment, timer}: the last decision, while it may be undone
    // The heatmap overlay is wanted (H or the button): kept for every image, in this tab.
    heatmap: sessionStorage.getItem("leukoscreen.review.heatmap") === "on",
  };
  const view = { zoom: 1, x: 0, y: 0 };
  // The subtype's words from the server (db.subtypes.page_words), for LS.showSubtype.
  const subtypeWords = JSON.parse(root.dataset.subtypes || "{}");
  const PAGE = 40; // the next page is fetched (keyset cursor) when J reaches the end

  // ---- comments kept in this tab ------------------------------------------------------
  // A typed comment lives in sessionStorage until a decision saves it, so that a conflict,
  // an expired session (sign in and come back) or a reload never loses it.
  const draftKey = (item) => `leukoscreen.comment.${item.image_id}`;
  const RETURN_KEY = "leukoscreen.review.return";
  const readDraft = (item) => sessionStorage.getItem(draftKey(item)) || "";
  function keepDraft(item, text) {
    if (text.trim()) sessionStorage.setItem(draftKey(item), text);
    else sessionStorage.removeItem(draftKey(item));
  }
  const current = () => state.items[state.index];
  const unsavedComment = () => Boolean(current() && $("comment").value.trim());

  // ---- loading the queue -------------------------------------------------------------
  function queueUrl() {
    const q = new URLSearchParams();
    for (const key of ["batch", "specimen", "laboratory", "route", "state", "since", "until", "min_p", "max_p", "order"]) {
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
    if (state.index < 0 && state.items.length) {
      // Back from a reload or from signing in: the image last shown, if it is still listed.
      const back = Number(sessionStorage.getItem(RETURN_KEY));
      show(Math.max(0, state.items.findIndex((x) => x.image_id === back)));
    }
    if (!state.items.length) { $("panel").hidden = true; $("big").removeAttribute("src"); }
  }

  const LABEL_WORDS = { leukemia: "leukemia", no_leukemia: "no leukemia" };
  function stateLabel(item) {
    if (item.state === "unreviewed") return "unreviewed";
    const label = LABEL_WORDS[item.label];
    return item.state.replace("_", " ") + (label ? ` · ${label}` : "");
  }

  // The model cannot judge this image (model.gate): a person decides positive or negative.
  const cannotJudge = (item) => item.route === "manual_review";

  function renderList() {
    // Re-rendering must not take the keyboard focus away from a queue item (Tab, Enter).
    const focused = [...$("queue").querySelectorAll(".q-open")].indexOf(document.activeElement);
    $("queue").replaceChildren(...state.items.map((item, i) => {
      // A button per image: reachable with Tab, opened with Enter or Space as with a click.
      const open = LS.el("button", { type: "button", className: "q-open" },
        LS.el("span", { className: "q-p" }, LS.p(item.p_leukemia)),
        LS.el("span", { className: "q-name filename" }, item.file_name),
        LS.el("span", { className: "q-state" },
          cannotJudge(item) ? LS.el("span", { className: "q-route" }, "manual review · ") : null,
          stateLabel(item)));
      if (i === state.index) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => go(i));
      // Colour by what the decision says (red: leukemia), as the decision buttons are.
      const label = item.state === "unreviewed" ? "" : ` l-${item.label || "none"}`;
      return LS.el("li", { className: `q-item s-${item.state}${label}` + (i === state.index ? " current" : "") }, open);
    }));
    if (focused >= 0) $("queue").querySelectorAll(".q-open")[focused]?.focus({ preventScroll: true });
  }

  // Only the list scrolls to the current image, never the page: on a narrow screen the list
  // is below the image, and J must not carry the reviewer away from it.
  function scrollListTo(i) {
    const list = $("queue");
    const li = list.children[i];
    if (!li) return;
    const top = li.offsetTop;
    if (top < list.scrollTop) list.scrollTop = top;
    else if (top + li.offsetHeight > list.scrollTop + list.clientHeight) {
      list.scrollTop = top + li.offsetHeight - list.clientHeight;
    }
  }

  // ---- one item ----------------------------------------------------------------------
  async function show(i) {
    if (i < 0 || i >= state.items.length) return;
    state.index = i;
    state.warnedAbout = null;
    const item = state.items[i];
    // A reload, or a sign-in after the session ended, comes back to this image.
    sessionStorage.setItem(RETURN_KEY, String(item.image_id));
    resetView();
    // The previous image's heatmap goes at once; this one's once its image is drawn.
    $("heatmap").hidden = true;
    $("heatmap").removeAttribute("src");
    $("big").src = LS.withId(root.dataset.image, item.image_id);
    $("big").alt = item.file_name;
    $("panel").hidden = false;
    $("item-name").textContent = item.file_name;
    showPosition();
    $("item-p").textContent = LS.p(item.p_leukemia);
    const manual = cannotJudge(item);
    $("item-flag").textContent = manual
      ? "cannot judge this image: needs manual review"
      : item.flagged ? "flagged (leukemia suspected)" : "cleared (no leukemia detected)";
    // Beside the image: why the model did not judge it, in the server's plain words.
    $("item-gate").hidden = !manual;
    $("item-gate").textContent = manual
      ? `Model cannot judge this image: ${item.route_reason_text || item.route_reason || "no reason given"}` : "";
    LS.showSubtype($("item-subtype-label"), $("item-subtype"), item, subtypeWords);
    $("item-threshold").textContent = LS.p(item.threshold);
    $("item-model").textContent = item.model_version;
    $("item-batch").textContent = item.batch_name;
    $("item-specimen").textContent = item.specimen_id || "none given";
    // A manual-review image is stored as going to a person (flagged): "confirmed" records
    // leukemia and "overturned" no leukemia (db.reviews.label_for), so say just that.
    $("btn-confirm").querySelector("span").textContent = manual
      ? "Leukemia (positive)" : item.flagged ? "Confirm positive" : "Confirm negative";
    $("btn-overturn").querySelector("span").textContent = manual
      ? "No leukemia (negative)" : item.flagged ? "Overturn → negative" : "Overturn → positive";
    // Colour by outcome (red: positive), so that "confirm" of a cleared image reads as negative.
    $("btn-confirm").className = item.flagged ? "pos" : "neg";
    $("btn-overturn").className = item.flagged ? "neg" : "pos";
    const draft = readDraft(item);
    $("comment").value = draft;
    note(draft ? "Your comment on this image, not saved yet, is back: decide to save it." : "");
    problem(null);
    renderItemState(item);
    renderHeatmap();
    renderList();
    scrollListTo(i);
    $("history").replaceChildren(LS.el("li", { className: "muted none" }, "loading…"));
    await refreshDetails(item);
  }

  function showPosition() {
    const done = state.items.filter((x) => x.state !== "unreviewed").length;
    $("position").textContent = `image ${state.index + 1} of ${state.items.length}${state.next ? "+" : ""}` +
      (done ? ` · ${done} decided` : "");
  }

  // Fresh state and full history: someone else may have decided since the list loaded.
  async function refreshDetails(item) {
    const fresh = await LS.getJSON(LS.withId(root.dataset.item, item.image_id));
    if (current() !== item) return;
    const changed = fresh.seq !== item.seq;
    Object.assign(item, fresh);
    renderItemState(item);
    renderHeatmap(); // made since the list loaded, perhaps
    if (changed) renderList(); // someone decided meanwhile: the list says so too
    $("history").replaceChildren(...fresh.history.map((h) => LS.el("li", {},
      LS.el("strong", {}, h.decision.replace("_", " ")), ` by ${h.reviewer}, ${h.created_at.slice(0, 19).replace("T", " ")} UTC`,
      h.decision === "withdrawn" ? ` (undid ${h.previous_decision.replace("_", " ")})`
        : h.previous_decision ? ` (was ${h.previous_decision.replace("_", " ")})` : "",
      h.comment ? LS.el("div", { className: "comment" }, h.comment) : null)));
    if (!fresh.history.length) $("history").replaceChildren(LS.el("li", { className: "muted none" }, "no decision yet"));
  }

  function renderItemState(item) {
    $("item-state").textContent = item.state === "unreviewed"
      ? "unreviewed" : `${stateLabel(item)} by ${item.reviewed_by}`;
  }

  function note(text) {
    $("comment-note").textContent = text;
    $("comment-note").hidden = !text;
  }

  // ---- moving ------------------------------------------------------------------------
  // Leaving an image with a comment typed but not saved asks once: the second J/K (or click)
  // moves on, and the comment stays with that image in this tab.
  function mayLeave() {
    const item = current();
    if (!unsavedComment() || state.warnedAbout === item) return true;
    state.warnedAbout = item;
    problem("Your comment on this image is not saved: a comment is saved with a decision (C, O or S). " +
      "Press J or K again to move on; the comment stays with this image in this tab.");
    return false;
  }

  async function go(i) {
    if (i === state.index || !mayLeave()) return;
    await show(i);
  }

  async function move(step) {
    const target = state.index + step;
    if (target < 0 || (target >= state.items.length && !state.next)) return;
    if (!mayLeave()) return;
    if (target >= state.items.length) await load(false);
    if (target < state.items.length) await show(target);
  }

  // ---- decisions ---------------------------------------------------------------------
  // What went wrong, in words a reviewer can act on, and the action itself (a button/link).
  function problem(text, action) {
    const box = $("decide-problem");
    box.hidden = !text;
    box.replaceChildren(...(text ? [LS.el("p", {}, text)] : []), ...(action ? [action] : []));
  }

  async function explain(e, item, what) {
    const kept = $("comment").value.trim() ? " Your comment is kept." : "";
    if (e.status === 401) {
      // Signed out (here or in another window) or the account changed: the comment waits
      // in this tab, and signing in brings the reviewer back to this image (RETURN_KEY).
      const back = `${root.dataset.login}?next=${encodeURIComponent(location.pathname + location.search)}`;
      problem(`${what}: you are no longer signed in.${kept} Sign in and you come back to this image.`,
        LS.el("a", { className: "button primary", href: back, id: "sign-in-again" }, "Sign in and come back"));
    } else if (e.status === 409 && what === "Not undone") {
      problem(`${what}: ${e.message}.`);
    } else if (e.status === 409) {
      const reload = LS.el("button", { type: "button", className: "primary", id: "reload-item" }, "Reload this image");
      reload.addEventListener("click", async () => {
        problem(null);
        await refreshDetails(item);
        $("decide-status").textContent = `Reloaded: now ${stateLabel(item)}` +
          (item.reviewed_by ? ` by ${item.reviewed_by}` : "") + ". Decide again if you still disagree.";
      });
      // Who decided meanwhile, in words; the list and the panel change only on Reload.
      const now = await LS.getJSON(LS.withId(root.dataset.item, item.image_id)).catch(() => null);
      const who = now && now.state !== "unreviewed"
        ? `${now.reviewed_by} recorded “${stateLabel(now)}” for this image`
        : "someone else reviewed this image";
      problem(`${what}: ${who} while you were looking at it.${kept} ` +
        "Reload this image to see their decision, then decide again if you disagree.", reload);
    } else if (e.status === 403) {
      problem(`${what}: your account may not review images. Ask an administrator.${kept}`);
    } else if (!e.status) {
      problem(`${what}: the server could not be reached.${kept} Check the connection and try again.`);
    } else {
      problem(`${what}: ${e.message}.${kept} Try again; if it keeps failing, tell an administrator.`);
    }
    $("decide-problem").scrollIntoView({ block: "nearest" });
  }

  async function decide(decision) {
    const item = current();
    if (!item || state.busy) return;
    state.busy = true; // only while the decision is in flight: the next image is free at once
    problem(null);
    $("decide-status").textContent = "saving…";
    const comment = $("comment").value;
    let saved;
    try {
      saved = await LS.postJSON(LS.withId(root.dataset.decide, item.image_id), {
        decision, comment, expected_seq: item.seq,
      });
    } catch (e) {
      $("decide-status").textContent = "";
      await explain(e, item, "Not saved");
      return;
    } finally {
      state.busy = false;
    }
    sessionStorage.removeItem(draftKey(item));
    Object.assign(item, { state: saved.decision, seq: saved.seq, reviewed_by: saved.reviewer, label: saved.label });
    offerUndo(item, saved, comment);
    showPosition();
    renderList();
    const said = `saved: ${stateLabel(item)} for ${item.file_name}`;
    $("decide-status").textContent = said;
    if (current() !== item) return; // the reviewer moved on meanwhile
    $("comment").value = "";
    if (state.index + 1 < state.items.length || state.next) {
      await move(1);
      $("decide-status").textContent = said;
    } else {
      $("decide-status").textContent = `${said} · end of the queue`;
      await refreshDetails(item);
    }
  }

  // The last decision may be taken back for as long as the server allows (undo_until).
  function offerUndo(item, saved, comment) {
    if (state.undo) clearTimeout(state.undo.timer);
    const ms = Date.parse(saved.undo_until) - Date.parse(saved.created_at);
    const timer = setTimeout(() => { state.undo = null; $("undo").hidden = true; }, Math.max(0, ms - 1000));
    state.undo = { item, seq: saved.seq, comment, timer };
    $("undo").hidden = false;
  }

  async function undo() {
    const last = state.undo;
    if (!last || state.busy) return;
    state.busy = true;
    problem(null);
    $("decide-status").textContent = "undoing…";
    try {
      const url = root.dataset.undo.replace("/0/reviews/0/", `/${last.item.image_id}/reviews/${last.seq}/`);
      const row = await LS.postJSON(url, {});
      clearTimeout(last.timer);
      state.undo = null;
      $("undo").hidden = true;
      Object.assign(last.item, { state: "unreviewed", seq: row.seq, reviewed_by: null, label: null });
      // Back to that image, its comment back in the box: decide again.
      keepDraft(last.item, last.comment);
      const i = state.items.indexOf(last.item);
      if (i >= 0) await show(i);
      showPosition();
      $("decide-status").textContent = `Undone: the ${row.previous_decision.replace("_", " ")} decision ` +
        `on ${last.item.file_name} is withdrawn (kept in the history). Decide again.`;
    } catch (e) {
      $("decide-status").textContent = "";
      await explain(e, last.item, "Not undone");
    } finally {
      state.busy = false;
    }
  }

  // ---- explanation heatmap -------------------------------------------------------------
  // A PNG at the network's input size, stretched over the image's drawn box as the network's
  // input was stretched from the original; zoomed and panned with the image.
  function renderHeatmap() {
    const item = current();
    const overlay = $("heatmap");
    const wanted = state.heatmap && Boolean(item);
    $("heatmap-toggle").setAttribute("aria-pressed", String(state.heatmap));
    $("heatmap-note").hidden = !wanted;
    if (!wanted || !item.heatmap_url) {
      overlay.hidden = true;
      const toPerson = wanted && item.route !== "cleared";
      $("heatmap-status").textContent = !wanted ? ""
        : !toPerson ? "No heatmap: only images that go to a person get one."
          : heatmapAsks.get(item.image_id) || ASKING;
      if (toPerson) askForHeatmap(item);
      return;
    }
    $("heatmap-status").textContent = "";
    if (overlay.getAttribute("src") !== item.heatmap_url) overlay.src = item.heatmap_url;
    fitHeatmap();
    overlay.hidden = !$("big").complete || !$("big").naturalWidth;
  }

  // An image to a person without a heatmap (scored before heatmaps existed, or long ago, or
  // its task was lost): ask a worker for it, then ask again every few seconds, which costs
  // the server nothing new within a minute, until it is there or the image is left.
  const ASKING = "Heatmap not made yet: asking a worker for it…";
  const heatmapAsks = new Map(); // image id -> what to say while waiting
  async function askForHeatmap(item) {
    if (heatmapAsks.has(item.image_id)) return;
    heatmapAsks.set(item.image_id, ASKING);
    const url = LS.withId(root.dataset.heatmapAsk, item.image_id);
    const shown = () => current() === item && state.heatmap;
    for (let tries = 0; tries < 100 && shown(); tries++) {
      let answer;
      try {
        answer = await LS.postJSON(url, {});
      } catch (e) {
        heatmapAsks.set(item.image_id, `No heatmap: ${e.message}`);
        if (shown()) renderHeatmap();
        return;
      }
      if (answer.heatmap_url) {
        item.heatmap_url = answer.heatmap_url;
        heatmapAsks.delete(item.image_id);
        if (shown()) renderHeatmap();
        return;
      }
      heatmapAsks.set(item.image_id, answer.workers_ready
        ? "Heatmap asked for: a worker is making it…" : `Heatmap asked for, but ${answer.message}.`);
      if (shown()) renderHeatmap();
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
    heatmapAsks.delete(item.image_id); // left (or gave up): asked again when shown again
  }

  // The box object-fit: contain draws the image in (the overlay's box, centred like it, so one
  // transform moves both alike).
  function fitHeatmap() {
    const img = $("big");
    if (!img.naturalWidth) return;
    const scale = Math.min(img.offsetWidth / img.naturalWidth, img.offsetHeight / img.naturalHeight);
    const w = img.naturalWidth * scale;
    const h = img.naturalHeight * scale;
    Object.assign($("heatmap").style, {
      width: `${w}px`, height: `${h}px`,
      left: `${img.offsetLeft + (img.offsetWidth - w) / 2}px`,
      top: `${img.offsetTop + (img.offsetHeight - h) / 2}px`,
    });
  }

  function toggleHeatmap() {
    state.heatmap = !state.heatmap;
    sessionStorage.setItem("leukoscreen.review.heatmap", state.heatmap ? "on" : "off");
    renderHeatmap();
  }

  $("big").addEventListener("load", () => renderHeatmap());
  $("heatmap").addEventListener("error", () => {
    if (!$("heatmap").getAttribute("src")) return;
    $("heatmap").hidden = true;
    $("heatmap-status").textContent = "The heatmap could not be loaded.";
  });
  new ResizeObserver(() => fitHeatmap()).observe($("stage"));
  $("heatmap-toggle").addEventListener("click", () => toggleHeatmap());

  // ---- zoom and pan ------------------------------------------------------------------
  function applyView() {
    const transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
    $("big").style.transform = transform;
    $("heatmap").style.transform = transform;
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
  // Keys that record or take back a decision act once per press: a held key's auto-repeat
  // (KeyboardEvent.repeat) must never decide image after image.
  // The heatmap toggles once per press too: a held H would make it flicker.
  const DELIBERATE = new Set(["c", "o", "s", "u", "m", "h"]);
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
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const actions = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      c: () => decide("confirmed"), o: () => decide("overturned"), s: () => decide("second_opinion"),
      u: () => undo(), m: () => $("comment").focus(), h: () => toggleHeatmap(),
      "+": () => zoomBy(1.25), "=": () => zoomBy(1.25),
      "-": () => zoomBy(0.8), 0: () => resetView(),
    };
    const action = actions[key];
    if (!action) return;
    e.preventDefault();
    if (e.repeat && DELIBERATE.has(key)) return;
    action();
  });

  $("comment").addEventListener("input", () => {
    const item = current();
    if (item) keepDraft(item, $("comment").value);
    state.warnedAbout = null;
  });
  for (const button of document.querySelectorAll(".decisions button")) {
    button.addEventListener("click", () => decide(button.dataset.decision));
  }
  $("undo").addEventListener("click", () => undo());
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
        `(model threshold ${LS.p(c.model_threshold)}: ${c.flagged}).` +
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
  stage.focus({ preventScroll: true });
})();
