"use strict";
(() => {
  const root = document.getElementById("batch");
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  let problemsLoaded = false;

  async function loadProblems() {
    const url = `${root.dataset.results}?state=rejected&state=failed&limit=10000`;
    const data = await LS.getJSON(url);
    const section = document.getElementById("problems");
    section.hidden = data.results.length === 0;
    section.querySelector("tbody").replaceChildren(
      ...data.results.map((r) => LS.el("tr", {}, LS.el("td", { className: "filename" }, r.file_name),
        LS.el("td", {}, r.state), LS.el("td", {}, r.error || "")))
    );
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
    set("progress-text", b.pending
      ? `${b.done} of ${b.total} done (${b.failed} failed) · ETA ${LS.duration(b.eta_seconds)}`
      : `${b.done} of ${b.total} done (${b.failed} failed) · complete`);
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
    set("n-failed", b.failed);
    const r = b.reviews;
    set("n-reviewed", r.confirmed + r.overturned + r.second_opinion);
    // Cleared images a reviewer overturned to leukemia in QC: the model missed them.
    set("n-false-negative", r.false_negative);
    if (!problemsLoaded || b.pending) {
      problemsLoaded = true;
      await loadProblems();
    }
    if (b.pending) setTimeout(refresh, 1500);
  }
  refresh().catch((e) => set("progress-text", e.message));
})();
