// What every page does with its document (served at /page.js): find and build elements, show a
// message, keep a button disabled while its request runs. An ES module in plain ES2017.

export function $(id) { return document.getElementById(id); }

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

// A function showing a message in element `id` (hidden when empty, scrolled into view when
// not): its class is `base`, plus `info` for the calm style; anything else reads as an alert.
export function messenger(id, base) {
  return function (text, kind) {
    const m = document.getElementById(id);
    const info = kind === 'info' ? 'info' : '';
    m.textContent = text || '';
    m.className = base && info ? base + ' ' + info : base || info;
    m.hidden = !text;
    if (text) try { m.scrollIntoView({ block: 'nearest' }); } catch (e) { /* old browsers */ }
  };
}

// Runs fn with the button disabled (a second press meanwhile does nothing); `report` (a
// messenger) is cleared first and shows a failure's message.
export async function busy(button, fn, report) {
  if (button.disabled) return;
  button.disabled = true;
  report('');
  try { await fn(); }
  catch (e) { report(e.message || String(e)); }
  finally { button.disabled = false; }
}
