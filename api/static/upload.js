"use strict";
(() => {
  const form = document.getElementById("upload");
  const input = document.getElementById("files");
  const box = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");

  input.addEventListener("change", () => {
    const bytes = [...input.files].reduce((n, f) => n + f.size, 0);
    document.getElementById("chosen").textContent = `${input.files.length} file(s), ${(bytes / 1e6).toFixed(1)} MB`;
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData();
    if (form.elements.name.value) data.append("name", form.elements.name.value);
    for (const f of input.files) data.append("images", f, f.name);
    // XMLHttpRequest, not fetch: only it reports upload progress.
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.api);
    xhr.setRequestHeader("X-CSRFToken", LS.csrf());
    xhr.setRequestHeader("Accept", "application/json");
    box.hidden = false;
    form.querySelector("button").disabled = true;
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      box.querySelector(".bar").style.width = (100 * e.loaded) / e.total + "%";
      text.textContent = `uploading ${(e.loaded / 1e6).toFixed(1)} of ${(e.total / 1e6).toFixed(1)} MB`;
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON: shown below */ }
      if (xhr.status === 202) {
        text.textContent = `${body.accepted} accepted, ${body.rejected} rejected, ${body.duplicate} duplicate`;
        window.location = `${form.dataset.page}/${encodeURIComponent(body.batch_id)}`;
        return;
      }
      form.querySelector("button").disabled = false;
      const reasons = (body.files || []).map((f) => `${f.file}: ${f.reason}`).join("; ");
      text.textContent = `Upload refused (${xhr.status}): ${body.error || xhr.statusText}${reasons ? " — " + reasons : ""}`;
    });
    xhr.addEventListener("error", () => {
      form.querySelector("button").disabled = false;
      text.textContent = "Upload failed: network error";
    });
    xhr.send(data);
  });
})();
