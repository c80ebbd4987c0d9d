// The inbox's first page, kept current without a reload: when our service worker says a push
// arrived (static/js/notifications-sw.js), the notifications newer than those listed are read
// from the API and put on top, as the server renders them. The API rather than the push itself:
// a push carries a title and body cut to fit, and two may arrive together. Loaded as a module:
// its names stay out of the global scope that unread.js, on every page, shares.

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const list = document.getElementById("inbox-list");
const entryTemplate = document.getElementById("inbox-entry");

// As the page renders a time ("j M Y, H:i" UTC).
function timeText(date) {
  const twoDigits = (number) => String(number).padStart(2, "0");
  return (
    `${date.getUTCDate()} ${MONTHS[date.getUTCMonth()]} ${date.getUTCFullYear()}, ` +
    `${twoDigits(date.getUTCHours())}:${twoDigits(date.getUTCMinutes())} UTC`
  );
}

function entry(notification) {
  const item = entryTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.id = notification.id;
  item.querySelector("strong").textContent = notification.title;
  const body = item.querySelector("p");
  if (notification.body) body.textContent = notification.body;
  else body.remove();
  const time = item.querySelector("time");
  time.dateTime = notification.created_at;
  time.textContent = timeText(new Date(notification.created_at));
  item.querySelector("[name=id]").value = notification.id;
  if (notification.read_at) {
    item.classList.remove("unread");
    item.querySelector("form").remove();
  }
  return item;
}

async function showNewer() {
  try {
    const answer = await fetch(`${list.dataset.url}?page_size=${list.dataset.pageSize}`, {
      credentials: "same-origin",
    });
    if (!answer.ok) return;
    const listed = new Set(Array.from(list.children, (item) => item.dataset.id));
    const newer = [];
    for (const notification of (await answer.json()).results) {
      if (listed.has(notification.id)) break; // newest first: the rest are listed already
      newer.push(notification);
    }
    if (!newer.length) return;
    list.prepend(...newer.map(entry));
    document.getElementById("inbox-none").hidden = true;
    document.getElementById("inbox-read-all").hidden = false;
  } catch {
    // Offline for a moment: the page still lists what it did, and a reload shows the rest.
  }
}

navigator.serviceWorker?.addEventListener("message", showNewer);
