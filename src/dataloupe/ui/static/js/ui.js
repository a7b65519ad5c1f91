// Shared page helpers: element builder, status line, toast, modal, diff and revert.
import { getJSON, postJSON, enc } from "./api.js";

export function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

export const status = (text) => { document.getElementById("status").textContent = text; };

let toastTimer = null;
export function toast(text, buttons = [], error = false) {
  const t = document.getElementById("toast");
  t.replaceChildren(h("span", {}, text), ...buttons.map(([label, fn]) => h("button", { onclick: fn }, label)));
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, error ? 9000 : 12000);
}

export function modal(...content) {
  const m = document.getElementById("modal");
  m.querySelector(".modal-body").replaceChildren(...content.filter((c) => c !== null && c !== undefined));
  m.hidden = false;
  m.querySelector(".close").onclick = () => { m.hidden = true; };
  m.onclick = (e) => { if (e.target === m) m.hidden = true; };
}
export const closeModal = () => { document.getElementById("modal").hidden = true; };

/** Show the per-sample diff between revisions a and b of a table in the modal. */
export async function showDiff(table, a, b) {
  const d = await getJSON(`/api/tables/${enc(table)}/diff`, { a, b, limit: 500 });
  const rows = d.changed.map((r) => h("tr", {}, h("td", {}, r.id), h("td", {}, r.path),
    h("td", {}, r.label_a ?? "(undefined)"), h("td", {}, "→"), h("td", {}, r.label_b ?? "(undefined)"),
    h("td", {}, r.weight_a === r.weight_b ? "" : `weight ${r.weight_a} → ${r.weight_b}`)));
  modal(
    h("h2", {}, `${table}: revision ${d.from} → ${d.to}`),
    h("p", { class: "diff-summary" }, Object.entries(d.summary).map(([k, v]) => `${k}: ${v}`).join(", ") || "no changes"),
    h("table", { class: "diff" }, h("tr", {}, ...["id", "path", "label before", "", "label after", ""].map((x) => h("th", {}, x))), rows),
    d.changed.length >= 500 ? h("p", { class: "muted" }, "first 500 changed samples shown") : null,
  );
  return d;
}

/** Make a new revision equal to `revision` (history is kept). */
export async function revertTo(table, revision, after) {
  const r = await postJSON(`/api/tables/${enc(table)}/revert`, { revision, message: `ui: revert to revision ${revision}` });
  toast(`${table}: revision ${r.revision} restores revision ${revision}`, [["diff", () => showDiff(table, r.previous_revision, r.revision)]]);
  if (after) after(r);
  return r;
}

/** Ask before an edit: resolves true when the person confirms (the button states the count). */
export function confirmDialog(question, okLabel) {
  return new Promise((resolve) => {
    const m = document.getElementById("modal");
    const done = (v) => { m.hidden = true; document.removeEventListener("keydown", key, true); resolve(v); };
    const key = (e) => { if (e.key === "Escape") { e.stopPropagation(); done(false); } };
    modal(h("h2", {}, "Confirm"), h("p", { id: "confirm-text" }, question),
      h("div", { class: "confirm-buttons" },
        h("button", { id: "confirm-ok", class: "primary", onclick: () => done(true) }, okLabel),
        h("button", { id: "confirm-cancel", onclick: () => done(false) }, "cancel")));
    m.querySelector(".close").onclick = () => done(false);
    m.onclick = (e) => { if (e.target === m) done(false); };
    document.addEventListener("keydown", key, true);
    m.querySelector("#confirm-ok").focus();
  });
}
