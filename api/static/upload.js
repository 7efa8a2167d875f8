"use strict";
(() => {
  const form = document.getElementById("upload");
  const input = document.getElementById("files");
  const button = form.querySelector("button[type=submit]");
  const box = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  let uploading = false;

  // One Idempotency-Key per visit of this page, kept in its history entry (Back and reload
  // keep it): the same files sent again from here, after Back or an interrupted upload, are
  // answered with the first batch (Idempotent-Replayed) instead of recording a second one.
  // Other files from the same page are a new upload: the API refuses the old key for them
  // (409) and they go again under a new one.
  function newKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const key = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    history.replaceState({ ...(history.state || {}), uploadKey: key }, "");
    return key;
  }
  const uploadKey = () => (history.state && history.state.uploadKey) || newKey();

  input.addEventListener("change", () => {
    const bytes = [...input.files].reduce((n, f) => n + f.size, 0);
    document.getElementById("chosen").textContent = `${input.files.length} file(s), ${(bytes / 1e6).toFixed(1)} MB`;
  });

  // Leaving mid-upload would lose it: the browser asks first.
  window.addEventListener("beforeunload", (event) => {
    if (!uploading) return;
    event.preventDefault();
    event.returnValue = "";
  });

  function busy(on) {
    uploading = on;
    button.disabled = on;
    button.textContent = on ? "Uploading…" : "Upload";
  }

  function showBar(fraction) {
    box.querySelector(".bar").style.width = `${100 * fraction}%`;
    box.setAttribute("aria-valuenow", String(Math.round(100 * fraction)));
  }

  function alreadyUploaded(page) {
    const again = LS.el("button", { type: "button", id: "upload-again" }, "Upload them again as a new batch");
    again.addEventListener("click", () => send(newKey()));
    text.replaceChildren("These files were already uploaded from this page, so nothing was uploaded again: ",
      LS.el("a", { href: page, id: "already-uploaded" }, "open that batch"), ". ", again);
  }

  function send(key) {
    const data = new FormData();
    if (form.elements.name.value) data.append("name", form.elements.name.value);
    for (const f of input.files) data.append("images", f, f.name);
    // XMLHttpRequest, not fetch: only it reports upload progress.
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.api);
    xhr.setRequestHeader("X-CSRFToken", LS.csrf());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Idempotency-Key", key);
    box.hidden = false;
    showBar(0);
    busy(true);
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      showBar(e.loaded / e.total);
      text.textContent = `uploading ${(e.loaded / 1e6).toFixed(1)} of ${(e.total / 1e6).toFixed(1)} MB`;
    });
    xhr.addEventListener("load", () => {
      busy(false);
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON: shown below */ }
      const page = `${form.dataset.page}/${encodeURIComponent(body.batch_id)}`;
      if (xhr.status === 202 && xhr.getResponseHeader("Idempotent-Replayed") === "true") {
        alreadyUploaded(page);
        return;
      }
      if (xhr.status === 202) {
        text.textContent = `${body.accepted} accepted, ${body.rejected} rejected, ${body.duplicate} duplicate`;
        window.location = page;
        return;
      }
      if (xhr.status === 409 && /Idempotency-Key/.test(body.error || "")) {
        send(newKey()); // other files than the first upload from this page: a new batch
        return;
      }
      const reasons = (body.files || []).map((f) => `${f.file}: ${f.reason}`).join("; ");
      text.textContent = `Upload refused (${xhr.status}): ${body.error || xhr.statusText}${reasons ? " — " + reasons : ""}`;
    });
    xhr.addEventListener("error", () => {
      busy(false);
      text.textContent = "Upload failed: the server could not be reached. Press Upload to try again (the same files are never recorded twice).";
    });
    xhr.send(data);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!uploading) send(uploadKey());
  });
})();
