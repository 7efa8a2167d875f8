"use strict";
(() => {
  const root = document.getElementById("workers");
  const ago = (seconds) => (seconds === null || seconds === undefined ? "never" : `${LS.duration(seconds)} ago`);
  const since = (iso) => (iso ? ago((Date.now() - Date.parse(iso)) / 1000) : "none yet");

  function queueRow(name, q) {
    const live = LS.el("td", {}, q.processes ? q.processes : "none — nothing is taken from this queue");
    if (!q.processes) live.className = "bad";
    return LS.el("tr", {}, LS.el("td", {}, name), live, LS.el("td", {}, q.hosts), LS.el("td", {}, ago(q.last_beat_age_s)));
  }

  function workerRow(w) {
    const model = w.model_name ? `${w.model_name} (${(w.model_version || "").slice(0, 12)})` : "not loaded yet";
    const row = LS.el("tr", { className: w.stale ? "stale" : "" },
      LS.el("td", {}, w.host), LS.el("td", {}, w.node), LS.el("td", {}, w.pid),
      LS.el("td", {}, w.queues.join(", ")), LS.el("td", {}, w.concurrency), LS.el("td", {}, model),
      LS.el("td", {}, ago(w.last_beat_age_s)), LS.el("td", {}, since(w.last_task_at)),
      LS.el("td", {}, w.images_last_minute),
      LS.el("td", { className: w.stale ? "bad" : "" }, w.stale ? "stale (no heartbeat)" : "live"));
    return row;
  }

  async function refresh() {
    const data = await LS.getJSON(root.dataset.api);
    root.querySelector("#queues tbody").replaceChildren(
      ...Object.entries(data.queues).map(([name, q]) => queueRow(name, q)));
    root.querySelector("#processes tbody").replaceChildren(...data.workers.map(workerRow));
    document.getElementById("no-workers").hidden = data.workers.length > 0;
    document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    setTimeout(refresh, 5000);
  }
  refresh().catch((e) => { document.getElementById("updated").textContent = e.message; });
})();
