"use strict";
(() => {
  const form = document.getElementById("single");
  const status = document.getElementById("single-status");
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  // Route reasons in plain words, from the server (model.gate.REASON_TEXT).
  const reasons = JSON.parse(form.dataset.reasons || "{}");
  // The subtype's words from the server (db.subtypes.page_words), for LS.showSubtype.
  const subtypeWords = JSON.parse(form.dataset.subtypes || "{}");

  async function waitForResult(resultsUrl) {
    for (;;) {
      const data = await LS.getJSON(resultsUrl);
      const row = data.results[0];
      if (row && !["queued", "scoring"].includes(row.state)) return row;
      status.textContent = `waiting for the worker (${row ? row.state : "queued"})…`;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("single-file").files[0];
    if (!file) return;
    document.getElementById("single-result").hidden = true;
    const data = new FormData();
    data.append("images", file, file.name);
    data.append("name", `single image: ${file.name}`.slice(0, 255));
    status.textContent = "uploading…";
    try {
      const response = await fetch(form.dataset.api, {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "X-CSRFToken": LS.csrf(), Accept: "application/json" },
      });
      const body = await response.json();
      if (response.status !== 202) {
        const reason = (body.files || []).map((f) => f.reason).join("; ");
        throw new Error(`${body.error}${reason ? ": " + reason : ""}`);
      }
      const row = await waitForResult(`/api/v1/batches/${encodeURIComponent(body.batch_id)}/results`);
      set("single-name", row.file_name);
      if (row.state !== "scored") {
        status.textContent = `Could not be scored: ${row.error || row.state}`;
        return;
      }
      const verdict = document.getElementById("single-class");
      const manual = row.route === "manual_review";
      const flagged = row.route ? row.route === "flagged" : row.flagged;
      const [p, threshold] = LS.distinct(row.p_leukemia, row.threshold);
      document.getElementById("single-reason").hidden = !manual;
      document.getElementById("single-reason-label").hidden = !manual;
      // The verdict, the route that follows from it and the two numbers behind it: no
      // "confidence" figure, which read as the model doubting its own verdict.
      if (manual) {
        // The model must not be trusted on this image: no verdict, the reason instead.
        verdict.textContent = "Cannot judge this image";
        verdict.className = "verdict manual";
        set("single-route", "manual review: a person decides; the image is in the review queue");
        set("single-reason", `${reasons[row.route_reason] || row.route_reason || "no reason given"}. ` +
          "A person must look at it; it is in the review queue.");
        set("single-p", `${p} (not to be trusted for this image)`);
      } else {
        verdict.textContent = flagged ? "leukemia suspected" : "no leukemia detected";
        verdict.className = "verdict " + (flagged ? "positive" : "negative");
        set("single-route", flagged
          ? "flagged: p_leukemia is at or above the threshold; a pathologist reviews the image"
          : "cleared: p_leukemia is below the threshold; a random sample of cleared images is checked in QC");
        set("single-p", `${p} (${flagged ? "at or above" : "below"} the threshold)`);
      }
      // Only for an image that goes to a person; a cleared one shows no subtype.
      LS.showSubtype(document.getElementById("single-subtype-label"),
        document.getElementById("single-subtype"), row, subtypeWords);
      set("single-threshold", threshold);
      set("single-model", row.model_version);
      document.getElementById("single-image").src = `/api/v1/images/${row.image_id}`;
      document.getElementById("single-result").hidden = false;
      status.textContent = "";
    } catch (e) {
      status.textContent = `Failed: ${e.message}`;
    }
  });
})();
