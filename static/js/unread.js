// The header's unread count, kept current without a reload: asked again every 30 seconds, and
// whenever the page becomes visible again. The page works without it (the count as rendered).
"use strict";

// In a block: this classic script runs on every page, and its names must not take those of the
// page's own scripts (a second `const POLL_MS` in the global scope is a SyntaxError that stops
// that script). A module would be scoped too, but has no document.currentScript.
{
  const POLL_MS = 30000;
  const script = document.currentScript;
  const badge = document.querySelector("[data-unread-count]");

  async function refresh() {
    if (!badge || document.hidden) return;
    try {
      const answer = await fetch(`${script.dataset.url}?page_size=1`, { credentials: "same-origin" });
      if (!answer.ok) return;
      const { unread } = await answer.json();
      badge.textContent = unread;
      badge.hidden = unread === 0;
    } catch {
      // Offline for a moment: the next poll tries again.
    }
  }

  setInterval(refresh, POLL_MS);
  document.addEventListener("visibilitychange", refresh);
  navigator.serviceWorker?.addEventListener("message", refresh);
}
