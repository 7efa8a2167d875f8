"use strict";
(() => {
  const root = document.getElementById("batch");
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  let problemsLoaded = false;
  let wasPending = null;
  const STATE_WORDS = {
    rejected: "rejected", failed: "could not be scored", duplicate: "duplicate",
    queued: "waiting", scoring: "being scored", scored: "scored",
  };
  const ROUTE_WORDS = { flagged: "Flagged", manual_review: "Needs manual review", cleared: "Cleared" };
  const LABEL_WORDS = { leukemia: "leukemia", no_leukemia: "no leukemia" };

  // Every file that was not scored on its own, with the reason in words and its code: the
  // upload's summary stays here after the upload page has moved on.
  async function loadProblems() {
    const url = `${root.dataset.results}?state=rejected&state=duplicate&state=failed&limit=10000`;
    const data = await LS.getJSON(url);
    const section = document.getElementById("problems");
    section.hidden = data.results.length === 0;
    section.querySelector("tbody").replaceChildren(
      ...data.results.map((r) => LS.el("tr", {}, LS.el("td", { className: "filename" }, r.file_name),
        LS.el("td", {}, STATE_WORDS[r.state] || r.state), LS.el("td", {}, r.reason || r.error || ""),
        LS.el("td", {}, LS.el("code", {}, r.reason_code || ""))))
    );
  }

  // ---- the list of images, keyset-paged (next: the server's cursor) ----------------------
  const list = document.getElementById("images");
  const listBody = list.querySelector("tbody");
  const more = document.getElementById("images-more");
  // The subtype's words from the server (db.subtypes.page_words), for LS.subtypeBrief.
  const subtypeWords = JSON.parse(list.dataset.subtypes || "{}");
  let next = null;

  function resultWords(i) {
    const route = i.route ? ROUTE_WORDS[i.route] || i.route : STATE_WORDS[i.state] || i.state;
    const dup = i.state === "duplicate" ? ` (duplicate of ${i.duplicate_of_file || "another file"})` : "";
    return route + dup;
  }

  function decisionWords(i) {
    if (!i.review_decision) return i.route && i.route !== "cleared" ? "not reviewed yet" : "";
    const label = LABEL_WORDS[i.review_label];
    const decision = i.review_decision.replace(/_/g, " ");
    return label ? `${label} (${decision})` : decision;
  }

  function reviewLink(i) {
    // The batch's queue narrowed to this image's score: the image (and any byte-identical
    // copy, which shares its decision) is the one shown.
    if (!list.dataset.review || !i.route || i.route === "cleared" || i.p_leukemia === null) return "";
    const q = new URLSearchParams({ batch: list.dataset.batch, state: "all", route: i.route,
      min_p: String(i.p_leukemia), max_p: String(i.p_leukemia) });
    return LS.el("a", { href: `${list.dataset.review}?${q}` }, "Review");
  }

  function imageRow(i) {
    const thumb = i.has_image
      ? LS.el("a", { href: LS.withId(list.dataset.original, i.image_id), target: "_blank", rel: "noopener" },
        LS.el("img", { className: "thumb", loading: "lazy", alt: `Image ${i.file_name}`,
          src: LS.withId(list.dataset.thumbnail, i.image_id) }))
      : LS.el("span", { className: "muted" }, "not stored");
    return LS.el("tr", { className: `state-${i.state}` }, LS.el("td", {}, thumb),
      LS.el("td", { className: "filename" }, i.file_name),
      LS.el("td", { className: `route-${i.route || "none"}` }, resultWords(i)),
      LS.el("td", {}, LS.p(i.p_leukemia)), LS.el("td", {}, LS.subtypeBrief(i, subtypeWords)),
      LS.el("td", {}, decisionWords(i)), LS.el("td", {}, reviewLink(i)));
  }

  async function loadImages(reset) {
    const q = new URLSearchParams({ limit: "50" });
    if (!reset && next) q.set("after", next);
    const data = await LS.getJSON(`${list.dataset.list}?${q}`);
    const rows = data.items.map(imageRow);
    if (reset) listBody.replaceChildren(...rows); else listBody.append(...rows);
    next = data.next;
    more.hidden = !next;
    set("images-shown", `${listBody.children.length} shown` + (next ? "" : " (all)"));
  }
  more.addEventListener("click", () => loadImages(false).catch((e) => set("images-shown", e.message)));

  function received(b) {
    const accepted = b.total - b.rejected - b.duplicate;
    return `${b.total} file(s) received: ${accepted} accepted for scoring, ${b.rejected} rejected, ` +
      `${b.duplicate} duplicate(s) of another file in this batch.`;
  }

  async function refresh() {
    const b = await LS.getJSON(root.dataset.api);
    const pct = (n) => (b.total ? (100 * n) / b.total : 0) + "%";
    root.querySelector(".bar.done").style.width = pct(b.done - b.failed);
    root.querySelector(".bar.failed").style.width = pct(b.failed);
    const bar = document.getElementById("batch-progress");
    bar.setAttribute("aria-valuemax", b.total);
    bar.setAttribute("aria-valuenow", b.done);
    set("state", b.state);
    // A stall (no live worker, or none taking work) replaces an ETA that would never come.
    const eta = b.stalled ? "stalled" : `ETA ${LS.duration(b.eta_seconds)}`;
    set("progress-text", b.pending
      ? `${b.done} of ${b.total} done (${b.failed} failed) · ${eta}`
      : `${b.done} of ${b.total} done (${b.failed} failed) · complete`);
    document.getElementById("stall-warning").hidden = !b.stalled;
    set("stall-text", b.stall_message || "");
    set("n-total", b.total);
    set("n-flagged", b.flagged);
    set("n-manual", b.manual_review);
    set("n-cleared", b.cleared);
    const manualLink = document.getElementById("n-manual-link");
    if (manualLink) manualLink.textContent = b.manual_review;
    // The drift alarm (db.drift): the server's sentence, and which measures differ.
    const drift = document.getElementById("drift-warning");
    drift.hidden = !b.drift_warning;
    set("drift-text", b.drift_warning || "");
    set("drift-measures", ((b.drift && b.drift.drifted) || []).map((m) => m.replace(/_/g, " ")).join(", "));
    set("n-rejected", b.rejected);
    set("n-duplicate", b.duplicate);
    set("received", received(b));
    set("n-failed", b.failed);
    const r = b.reviews;
    set("n-reviewed", r.confirmed + r.overturned + r.second_opinion);
    // Cleared images a reviewer overturned to leukemia in QC: the model missed them.
    set("n-false-negative", r.false_negative);
    if (!problemsLoaded || b.pending) {
      problemsLoaded = true;
      await loadProblems();
    }
    // The list once on opening, and again when the last image is scored.
    if (wasPending === null || (wasPending && !b.pending)) await loadImages(true);
    wasPending = Boolean(b.pending);
    if (b.pending) setTimeout(refresh, 1500);
  }
  refresh().catch((e) => set("progress-text", e.message));
})();
