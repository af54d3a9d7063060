// The Review page's keys and decisions. Each decision is one POST of {dt, content_sha256, label} as JSON with the
// page's CSRF token (rendered into <body data-csrf-token>: the CSP allows no inline script); the server looks the
// item up in the queue itself. Text from the server is only ever set with textContent.
"use strict";

const items = Array.from(document.querySelectorAll("#queue .item"));
const csrfToken = document.body.dataset.csrfToken;
const sessionCount = document.getElementById("session-count");
const pendingCount = document.getElementById("pending-count");
let reviewedThisSession = 0;

function focusAt(index) {
  const item = items[Math.max(0, Math.min(items.length - 1, index))];
  if (item) {
    item.focus();
    item.scrollIntoView({ block: "nearest" });
  }
}

function focusNextPending(item) {
  const start = items.indexOf(item);
  const next = items.slice(start + 1).concat(items.slice(0, start)).find((i) => !i.classList.contains("decided"));
  if (next) focusAt(items.indexOf(next));
}

function setStatus(item, text, isError = false) {
  const status = item.querySelector(".status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function errorText(body, response) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  return `HTTP ${response.status}`;
}

async function decide(item, label) {
  if (!csrfToken) {
    setStatus(item, "read-only: your role may not record decisions", true);
    return;
  }
  if (!label) {
    setStatus(item, "choose a label first", true);
    return;
  }
  if (item.dataset.busy) return;
  item.dataset.busy = "1";
  setStatus(item, `recording ${label}…`);
  try {
    const response = await fetch(new URL("review/decisions", document.baseURI), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
      body: JSON.stringify({
        dt: item.hasAttribute("data-dt") ? item.dataset.dt : null,
        content_sha256: item.dataset.sha,
        label,
      }),
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      setStatus(item, `not recorded: ${errorText(body, response)}`, true);
      return;
    }
    if (!item.classList.contains("decided")) {
      item.classList.add("decided");
      pendingCount.textContent = String(Math.max(0, Number(pendingCount.textContent) - 1));
    }
    if (!item.dataset.reviewedHere) {
      item.dataset.reviewedHere = "1";
      reviewedThisSession += 1;
      sessionCount.textContent = String(reviewedThisSession);
    }
    const d = body.decision;
    setStatus(item, body.status === "unchanged" ? `unchanged: already ${label}` : `${d.verdict}: ${d.label} by ${d.reviewer}`);
    focusNextPending(item);
  } catch (error) {
    setStatus(item, `not recorded: ${error.message}`, true);
  } finally {
    delete item.dataset.busy;
  }
}

function pick(item, startsWith) {
  const picker = item.querySelector(".picker");
  if (startsWith) {
    const option = Array.from(picker.options).find((o) => o.value && o.value.toLowerCase().startsWith(startsWith));
    if (option) picker.value = option.value;
  }
  picker.focus();
}

const ACTIONS = {
  confirm: (item) => decide(item, item.dataset.label),
  second: (item) => decide(item, item.dataset.second),
  correct: (item) => decide(item, item.querySelector(".picker").value),
};

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) ACTIONS[button.dataset.action](button.closest(".item"));
});

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const item = event.target.closest ? event.target.closest(".item") : null;
  if (event.target.matches("select.picker")) {
    if (event.key === "Enter") {
      event.preventDefault();
      ACTIONS.correct(item);
    } else if (event.key === "Escape") {
      item.focus();
    }
    return;
  }
  if (event.target.matches("button, a, input, select, textarea")) return; // their own keys
  const index = item ? items.indexOf(item) : -1;
  const key = event.key;
  if (key === "j" || key === "ArrowDown") focusAt(index + 1);
  else if (key === "k" || key === "ArrowUp") focusAt(index - 1);
  else if (!item) return;
  else if (key === "y" || key === "Enter") ACTIONS.confirm(item);
  else if (key === "r") ACTIONS.second(item);
  else if (key === "/") pick(item, "");
  else if (/^[0-9]$/.test(key)) pick(item, key);
  else return;
  event.preventDefault();
});

const firstPending = items.find((i) => !i.classList.contains("decided"));
if (firstPending) focusAt(items.indexOf(firstPending));
