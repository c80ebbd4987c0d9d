// The reports page: fills in the browser's timezone for a first schedule (the page marks the
// field only while none is saved), and polls each report
// still being made until it is ready or failed. Everything else works without this script.
"use strict";

const POLL_MS = 1500;

const timezoneInput = document.querySelector("[data-guess-timezone]");
if (timezoneInput && timezoneInput.value === "UTC") {
  const guessed = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (guessed) timezoneInput.value = guessed;
}

function show(card, report) {
  card.dataset.status = report.status;
  card.querySelector("progress").value = report.progress;
  const status = card.querySelector(".report-status");
  status.textContent = "";
  if (report.status === "ready") {
    const link = document.createElement("a");
    link.href = report.download_url;
    link.textContent = "Download the PDF";
    status.append(link);
  } else if (report.status === "failed") {
    status.textContent = report.error || "It could not be made.";
  } else {
    status.textContent = `Being made… ${report.progress}%`;
  }
}

async function follow(card) {
  while (card.dataset.status === "queued" || card.dataset.status === "rendering") {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      const answer = await fetch(card.dataset.url, { credentials: "same-origin" });
      if (!answer.ok) return;
      show(card, await answer.json());
    } catch {
      // Offline for a moment: the next poll tries again.
    }
  }
}

document.querySelectorAll(".report-card").forEach(follow);
