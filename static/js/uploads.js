// The uploads page (templates/media/uploads.html). The server renders the list; this script
// uploads chosen or dropped files through the API, follows each upload's progress by polling
// GET /api/v1/uploads/{id} until it is ready or failed, and deletes uploads. Loaded as a
// module: strict, deferred, and its names stay out of the page's global scope.

// About once a second: the pipeline takes seconds, and each poll is one indexed row read.
const POLL_INTERVAL_MS = 1000;
const SETTLED = ["ready", "failed"];

const form = document.getElementById("upload-form");
const input = form.querySelector("input[type=file]");
const dropZone = form.querySelector(".drop-zone");
const grid = document.getElementById("upload-grid");
const none = document.getElementById("upload-none");
const problem = document.getElementById("upload-problem");
const cardTemplate = document.getElementById("upload-card");
const apiUrl = form.getAttribute("action");
// Session-authenticated API calls must carry the CSRF token, like a form post.
const csrfToken = form.elements.csrfmiddlewaretoken.value;

function api(url, options = {}) {
  return fetch(url, {
    ...options,
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
  });
}

async function errorDetail(response) {
  // Every API error carries {"detail": ...}; a proxy's error page does not.
  try {
    return (await response.json()).detail;
  } catch {
    return `The server answered ${response.status}; try again later.`;
  }
}

function showProblem(message) {
  problem.textContent = message;
  problem.hidden = false;
}

function statusText(upload) {
  switch (upload.status) {
    case "ready":
      return `${upload.original.width} × ${upload.original.height}`;
    case "failed":
      return upload.error || "Processing failed.";
    case "processing":
      return `Processing… ${upload.progress}%`;
    default:
      return "Waiting…";
  }
}

function render(card, upload) {
  card.dataset.status = upload.status;
  card.querySelector("progress").value = upload.progress;
  card.querySelector(".upload-status").textContent = statusText(upload);
  const preview = card.querySelector(".upload-preview");
  if (upload.status === "ready" && !preview.querySelector("img")) {
    const thumb = upload.variants.thumb;
    const image = new Image(thumb.width, thumb.height);
    image.src = thumb.url;
    image.alt = "";
    preview.append(image);
  }
}

function poll(card) {
  if (SETTLED.includes(card.dataset.status)) return;
  setTimeout(async () => {
    if (!card.isConnected) return; // deleted meanwhile
    try {
      const response = await api(card.dataset.url);
      if (response.status === 404) return removeCard(card); // deleted in another tab
      if (response.ok) {
        render(card, await response.json());
      } else if (response.status < 500) {
        return showProblem(await errorDetail(response)); // logged out: polling cannot recover
      }
    } catch {
      // Offline for a moment: the next poll tries again.
    }
    poll(card);
  }, POLL_INTERVAL_MS);
}

function removeCard(card) {
  card.remove();
  none.hidden = grid.children.length > 0;
}

// An hourly limit of the account: the server would refuse every further file as well.
class LimitReached extends Error {}

async function upload(file) {
  // The server refuses it too, but a browser still sending a large body when the server
  // answers early often reports a network error instead of the answer.
  if (file.size > Number(form.dataset.maxBytes)) {
    return showProblem(`${file.name}: ${form.dataset.tooLarge}`);
  }
  const body = new FormData();
  body.append("file", file);
  let response;
  try {
    response = await api(apiUrl, { method: "POST", body });
  } catch {
    return showProblem(`${file.name}: the upload did not reach the server; try again.`);
  }
  if (response.status === 429) {
    throw new LimitReached(await errorDetail(response));
  }
  if (response.status !== 202) {
    return showProblem(`${file.name}: ${await errorDetail(response)}`);
  }
  const created = await response.json();
  const card = cardTemplate.content.firstElementChild.cloneNode(true);
  card.dataset.url = `${apiUrl}/${created.id}`;
  render(card, created);
  grid.prepend(card);
  none.hidden = true;
  poll(card);
}

async function uploadAll(files) {
  problem.hidden = true;
  // One after another: the newest ends up first, as on the server-rendered list.
  for (const [index, file] of files.entries()) {
    try {
      await upload(file);
    } catch (error) {
      if (!(error instanceof LimitReached)) throw error;
      const left = files.length - index;
      const notSent = left === 1 ? `${file.name} was` : `${file.name} and ${left - 1} more were`;
      return showProblem(`${error.message} ${notSent} not uploaded.`);
    }
  }
}

input.addEventListener("change", () => {
  const files = [...input.files];
  input.value = ""; // so choosing the same file again is a change too
  uploadAll(files);
});

for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault(); // allows the drop
    dropZone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropZone.addEventListener(type, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  uploadAll([...event.dataTransfer.files]);
});
// A file dropped beside the zone must not make the browser leave the page to show it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

grid.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-delete]");
  if (!button || !confirm("Delete this upload?")) return;
  const card = button.closest(".upload-card");
  button.disabled = true;
  try {
    const response = await api(card.dataset.url, { method: "DELETE" });
    if (response.ok || response.status === 404) return removeCard(card);
    showProblem(await errorDetail(response));
  } catch {
    showProblem("The upload could not be deleted: the server did not answer; try again.");
  }
  button.disabled = false;
});

for (const card of grid.querySelectorAll(".upload-card")) poll(card);
