// Shared helpers. Data from the server is only ever put in the page with textContent,
// never innerHTML, so a file name or comment like "<script>" shows as text.
"use strict";

const LS = {
  csrf: () => document.querySelector('meta[name="csrf-token"]').content,

  async getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  },

  // Refusals throw an Error with the answer's status (none when the server was not reached),
  // so that a page can say what to do about each.
  async postJSON(url, payload) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": LS.csrf() },
      body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => ({})); // a proxy's HTML error page
    if (!response.ok) {
      throw Object.assign(new Error(body.error || response.statusText || `error ${response.status}`),
        { status: response.status });
    }
    return body;
  },

  // el("td", {className: "x"}, "text", otherNode): children are text or nodes, never HTML.
  el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  },

  withId: (url, id) => url.replace(/\/0(\/|$)/, `/${encodeURIComponent(id)}$1`),

  duration(seconds) {
    if (seconds === null || seconds === undefined) return "estimating…";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  },

  progressBar(done, failed, total, label) {
    const bar = LS.el("div", { className: "progress" });
    for (const [name, value] of [["role", "progressbar"], ["aria-label", label], ["aria-valuemin", 0],
      ["aria-valuemax", total], ["aria-valuenow", done]]) bar.setAttribute(name, value);
    const pct = (n) => (total ? (100 * n) / total : 0);
    bar.append(LS.el("div", { className: "bar done" }), LS.el("div", { className: "bar failed" }));
    bar.children[0].style.width = pct(done - failed) + "%";
    bar.children[1].style.width = pct(failed) + "%";
    return bar;
  },

  p: (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(3)),

  // The model's B-ALL subtype estimate of an image that goes to a person (flagged or manual
  // review), in the server's words (db.subtypes.page_words: names, headline, caveats), into
  // the <dd> ``value`` after its <dt> ``label``; both hidden for a cleared image and for a
  // network without the subtype head (subtype null).
  showSubtype(label, value, item, words) {
    const shown = LS.hasSubtype(item, words);
    label.hidden = value.hidden = !shown;
    if (!shown) { value.replaceChildren(); return; }
    const caveat = LS.subtypeCaveat(item, words);
    const named = (key) => LS.subtypeNamed(item, words, key);
    value.replaceChildren(
      LS.el("div", {}, `${words.headline} `, named(item.subtype)),
      LS.el("div", { className: "muted" },
        ...words.labels.flatMap(([key], i) => (i ? [" · ", named(key)] : [named(key)]))),
      LS.el("div", { className: "muted" }, `${caveat.charAt(0).toUpperCase()}${caveat.slice(1)}.`));
  },

  // Whether an image has a subtype estimate to show: it goes to a person (a cleared one shows
  // none) and its network has the subtype head.
  hasSubtype(item, words) {
    const probs = item.subtype_probs || {};
    const toPerson = item.route ? item.route !== "cleared" : Boolean(item.flagged);
    return toPerson && LS.subtypeName(words, item.subtype) !== undefined
      && words.labels.every(([key]) => key in probs);
  },

  // A subtype key's display name ("pre_b" -> "Pre-B"), or undefined for a key not listed.
  subtypeName(words, key) {
    return (words.labels || []).find(([known]) => known === key)?.[1];
  },

  subtypeCaveat(item, words) {
    return item.route === "manual_review" ? `${words.caveat}; ${words.cannot_judge}` : words.caveat;
  },

  // "Pre-B 0.910": never broken at its hyphen, nor between name and number.
  subtypeNamed(item, words, key) {
    return LS.el("span", { className: "nowrap" },
      `${LS.subtypeName(words, key)} ${LS.p(item.subtype_probs[key])}`);
  },

  // The estimate in a list's cell: the most likely subtype, the caveat on hover and for
  // screen readers; "" where ``hasSubtype`` is false.
  subtypeBrief(item, words) {
    if (!LS.hasSubtype(item, words)) return "";
    const caveat = LS.subtypeCaveat(item, words);
    const brief = LS.subtypeNamed(item, words, item.subtype);
    brief.title = caveat;
    const cell = LS.el("span", { className: "subtype" },
      brief, LS.el("span", { className: "visually-hidden" }, ` (${caveat})`));
    cell.dataset.subtype = item.subtype;
    return cell;
  },

  // A score and its threshold to 3 decimals, or as many more as keep them apart: 0.4675
  // against 0.468 must not read "0.468 below the threshold 0.468".
  distinct(p, threshold) {
    let digits = 3;
    while (digits < 6 && Number(p).toFixed(digits) === Number(threshold).toFixed(digits) && p !== threshold) digits++;
    return [Number(p).toFixed(digits), Number(threshold).toFixed(digits)];
  },
};
