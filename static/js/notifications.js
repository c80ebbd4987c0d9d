// The settings page: subscribes this browser to Web Push (a service worker, the server's VAPID
// key, then the subscription stored through the API). Shown only where the browser can.
"use strict";

const button = document.getElementById("push-subscribe");
const status = document.getElementById("push-status");
// A browser that reaches its push service subscribes in a few seconds; one that cannot (offline,
// or where Google's push service is blocked) may keep trying without ever settling, as Chromium
// does, and the person would wait on a disabled button for ever.
const SUBSCRIBE_TIMEOUT_MS = 20000;

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (character) => character.charCodeAt(0));
}

// The registration once its worker is active (subscribing needs one). Not
// navigator.serviceWorker.ready: that waits for a worker whose scope holds this page, and ours
// (/static/js/) holds none, so it would wait forever.
function activated(registration) {
  const worker = registration.installing || registration.waiting;
  if (registration.active || !worker) return Promise.resolve(registration);
  return new Promise((resolve, reject) => {
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve(registration);
      if (worker.state === "redundant") reject(new Error("its service worker did not start"));
    });
  });
}

function withinTime(promise, milliseconds, why) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(why)), milliseconds);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function subscribe() {
  button.disabled = true;
  try {
    if ((await Notification.requestPermission()) !== "granted") {
      status.textContent = "Notifications are blocked for this site in your browser.";
      return;
    }
    const registration = await activated(
      await navigator.serviceWorker.register(button.dataset.worker),
    );
    const subscription = await withinTime(
      registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: keyBytes(button.dataset.key),
      }),
      SUBSCRIBE_TIMEOUT_MS,
      "its push service did not answer. Try again later.",
    );
    const answer = await fetch(button.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRFToken": document.querySelector("[name=csrfmiddlewaretoken]").value,
      },
      body: JSON.stringify({ platform: "webpush", subscription: subscription.toJSON() }),
    });
    if (!answer.ok) {
      const body = await answer.json().catch(() => ({}));
      status.textContent = body.detail || "This browser could not be registered.";
      return;
    }
    status.textContent = "This browser gets push notifications.";
    setTimeout(() => window.location.reload(), 800);
  } catch (error) {
    status.textContent = `This browser could not subscribe: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

if (button && "serviceWorker" in navigator && "PushManager" in window) {
  button.hidden = false;
  button.addEventListener("click", subscribe);
}
