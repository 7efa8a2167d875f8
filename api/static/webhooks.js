"use strict";
// The admin page's webhooks: add one (its secret is shown once), deactivate, read the
// delivery log and re-send a delivery. Everything goes through the JSON API.
(() => {
  const root = document.getElementById("webhooks");
  if (!root) return;
  const list = root.querySelector("#webhook-list tbody");
  const log = root.querySelector("#delivery-log tbody");
  const error = root.querySelector("#webhook-error");
  let shown = null;

  async function send(method, url) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": LS.csrf() },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function fail(e) {
    error.textContent = e.message;
    error.hidden = false;
  }

  function button(text, onClick) {
    const b = LS.el("button", { type: "button" }, text);
    b.addEventListener("click", () => { error.hidden = true; onClick().catch(fail); });
    return b;
  }

  async function showLog(hook) {
    shown = hook;
    const data = await LS.getJSON(LS.withId(root.dataset.log, hook.id));
    root.querySelector("#delivery-of").textContent = `of ${hook.url}`;
    log.replaceChildren(...data.deliveries.map((d) => LS.el("tr", {},
      LS.el("td", {}, d.created_at.slice(0, 19).replace("T", " ")),
      LS.el("td", {}, d.event),
      LS.el("td", {}, d.subject),
      LS.el("td", { className: `delivery-${d.state}` }, d.state),
      LS.el("td", {}, d.attempts),
      LS.el("td", {}, d.last_status === null ? (d.last_error || "–") : d.last_status,
        d.last_error && d.last_status !== null ? LS.el("small", { className: "muted" }, " " + d.last_error) : null),
      LS.el("td", {}, hook.active ? button("Re-send", async () => {
        await send("POST", LS.withId(root.dataset.resend, d.id));
        await showLog(hook);
      }) : null))));
    if (!data.deliveries.length) {
      log.replaceChildren(LS.el("tr", {}, LS.el("td", { colSpan: 7, className: "muted" }, "no deliveries yet")));
    }
  }

  async function refresh() {
    const data = await LS.getJSON(root.dataset.api);
    list.replaceChildren(...data.webhooks.map((hook) => LS.el("tr", {},
      LS.el("td", {}, hook.url),
      LS.el("td", {}, hook.events.join(", ")),
      LS.el("td", {}, hook.active ? "yes" : "no"),
      LS.el("td", {}, hook.created_at.slice(0, 16).replace("T", " ")),
      LS.el("td", { className: "row" },
        button("Delivery log", () => showLog(hook)),
        hook.active ? button("Deactivate", async () => {
          await send("DELETE", LS.withId(root.dataset.one, hook.id));
          await refresh();
        }) : null))));
    const current = shown && data.webhooks.find((h) => h.id === shown.id);
    const first = current || data.webhooks[0];
    if (first) await showLog(first);
  }

  root.querySelector("#webhook-form").addEventListener("submit", (event) => {
    event.preventDefault();
    error.hidden = true;
    const form = event.target;
    const events = [...form.querySelectorAll('input[name="events"]:checked')].map((i) => i.value);
    LS.postJSON(root.dataset.api, { url: form.url.value, events })
      .then((hook) => {
        const secret = root.querySelector("#webhook-secret");
        secret.querySelector("code").textContent = hook.secret;
        secret.hidden = false;
        form.reset();
        return refresh();
      })
      .catch(fail);
  });

  refresh().catch(fail);
})();
