// The settings page: subscribes this browser to Web Push (a service worker, the server's VAPID
// key, then the subscription stored through the API). Shown only where the browser can.
"use strict";

const button = document.getElementById("push-subscribe");
const status = document.getElementById("push-status");

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (character) => character.charCodeAt(0));
}

async function subscribe() {
  button.disabled = true;
  try {
    if ((await Notification.requestPermission()) !== "granted") {
      status.textContent = "Notifications are blocked for this site in your browser.";
      return;
    }
    const registration = await navigator.serviceWorker.register(button.dataset.worker);
    await navigator.serviceWorker.ready;
    const subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: keyBytes(button.dataset.key),
    });
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
