"use strict";
(() => {
  const table = document.getElementById("batches");
  const body = table.querySelector("tbody");
  const hideSingle = document.getElementById("hide-single");
  // Remembered in this browser: a laboratory that uses /single a lot keeps its list clean.
  hideSingle.checked = localStorage.getItem("ls-hide-single") === "1";
  let timer = null;
  hideSingle.addEventListener("change", () => {
    localStorage.setItem("ls-hide-single", hideSingle.checked ? "1" : "0");
    clearTimeout(timer);
    refresh().catch(showError);
  });

  async function refresh() {
    const url = hideSingle.checked ? `${table.dataset.api}?min_images=2` : table.dataset.api;
    const data = await LS.getJSON(url);
    document.getElementById("empty").hidden = data.batches.length > 0;
    body.replaceChildren(
      ...data.batches.map((b) => {
        const link = LS.el("a", { href: `${table.dataset.page}/${encodeURIComponent(b.id)}` }, b.name);
        const progress = LS.el("td", {}, LS.progressBar(b.done, b.failed, b.total, `${b.name}: images done`),
          LS.el("small", {}, `${b.done} / ${b.total}` + (b.pending ? ` · ETA ${LS.duration(b.eta_seconds)}` : "")));
        return LS.el("tr", {}, LS.el("td", {}, link), LS.el("td", {}, b.submitted_by),
          LS.el("td", {}, b.created_at.slice(0, 16).replace("T", " ")), progress,
          LS.el("td", { className: "n-flagged" }, b.flagged),
          LS.el("td", { className: "n-manual" }, b.manual_review),
          LS.el("td", { className: "n-cleared" }, b.cleared),
          LS.el("td", { className: "n-rejected" }, b.rejected),
          LS.el("td", { className: "n-duplicate" }, b.duplicate), LS.el("td", {}, b.failed),
          LS.el("td", {}, b.state, b.drift_warning
            ? LS.el("span", { className: "drift-flag", title: b.drift_warning }, " · drift warning") : null));
      })
    );
    const busy = data.batches.some((b) => b.pending > 0);
    timer = setTimeout(refresh, busy ? 2000 : 10000);
  }
  function showError(e) { body.replaceChildren(LS.el("tr", {}, LS.el("td", { colSpan: 11 }, e.message))); }
  refresh().catch(showError);
})();
