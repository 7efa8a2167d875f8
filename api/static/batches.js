"use strict";
(() => {
  const table = document.getElementById("batches");
  const body = table.querySelector("tbody");

  async function refresh() {
    const data = await LS.getJSON(table.dataset.api);
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
          LS.el("td", { className: "n-cleared" }, b.cleared), LS.el("td", {}, b.failed),
          LS.el("td", {}, b.state, b.drift_warning
            ? LS.el("span", { className: "drift-flag", title: b.drift_warning }, " · drift warning") : null));
      })
    );
    const busy = data.batches.some((b) => b.pending > 0);
    setTimeout(refresh, busy ? 2000 : 10000);
  }
  refresh().catch((e) => { body.replaceChildren(LS.el("tr", {}, LS.el("td", { colSpan: 9 }, e.message))); });
})();
