// The Capsule console's only script: refreshes the page's <main> every few
// seconds so numbers and sparklines stay live. Every page works without it.
// It replaces markup the server rendered (and escaped) for this same page,
// and pauses while the reader is using a form or the tab is hidden.
"use strict";
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const seconds = Math.max(2, Number(main.dataset.refresh) || 5);
  async function refresh() {
    const busy = document.activeElement && document.activeElement.closest("form");
    if (document.hidden || busy) return;
    try {
      // Marked as a refresh: it keeps no idle session alive.
      const response = await fetch(location.href, {
        credentials: "same-origin",
        redirect: "error",
        headers: { "x-capsule-console-refresh": "1" },
      });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main[data-refresh]");
      if (fresh) main.replaceChildren(...fresh.childNodes);
      document.body.dataset.refreshed = String(Date.now());
    } catch (_) {
      // The server may be restarting; try again on the next tick.
    }
  }
  setInterval(refresh, seconds * 1000);
})();
