// The service worker a browser runs for our push messages: each one, decrypted by the browser,
// is shown as a system notification, and the open pages are told (unread.js, inbox.js).
"use strict";

self.addEventListener("push", (event) => {
  const message = event.data ? event.data.json() : { title: "New notification", body: "" };
  event.waitUntil(
    self.registration
      .showNotification(message.title, { body: message.body, tag: message.id, data: message })
      // The pages are told once it is shown, so what they read then (getNotifications) has it;
      // told even if it could not be shown, as the inbox has it either way.
      .finally(() =>
        self.clients
          // Every page of the site, not only those in the worker's scope (/static/js/).
          .matchAll({ type: "window", includeUncontrolled: true })
          .then((pages) => pages.forEach((page) => page.postMessage({ notification: message }))),
      ),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow("/notifications"));
});
