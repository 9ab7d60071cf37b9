// docksnap dashboard: logout, verify/gc with live progress from Server-Sent Events, cache prune.
// State-changing requests carry the CSRF token the page was rendered with.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function post(url, body, accept) {
  return fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: {
      "Content-Type": "application/json",
      "Accept": accept || "application/json",
      "X-CSRF-Token": csrf(),
    },
    body: body,
  });
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

// Reads an SSE body from fetch (EventSource cannot POST) and calls onEvent(name, data).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(name, JSON.parse(data));
    }
  }
}

async function runOperation(button) {
  const panel = document.getElementById("operation");
  const bar = document.getElementById("operation-progress");
  const state = document.getElementById("operation-state");
  const result = document.getElementById("operation-result");
  const showResult = (data) => {
    bar.max = 1; bar.value = 1;
    panel.dataset.state = "done";
    state.textContent = "done";
    result.textContent = JSON.stringify(data, null, 2);
  };
  let body = button.dataset.body;
  if (button.id === "gc-button") {
    body = JSON.stringify({ grace: Number(document.getElementById("gc-grace").value) });
  }
  document.querySelectorAll("[data-operation]").forEach((b) => { b.disabled = true; });
  panel.hidden = false;
  panel.dataset.state = "running";
  bar.removeAttribute("value");
  result.textContent = "";
  state.textContent = button.textContent + "…";
  try {
    const response = await post(button.dataset.operation, body, "text/event-stream");
    if (!response.ok) {
      const problem = await response.json();
      throw new Error(problem.detail || response.statusText);
    }
    // Quick operations (cache prune) answer with their document, not events.
    if (!(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      showResult(await response.json());
      return;
    }
    await readEvents(response, (name, data) => {
      if (name === "progress") {
        if (data.total) { bar.max = data.total; bar.value = data.done; }
        const moved = data.done ? formatBytes(data.done) + (data.total ? " of " + formatBytes(data.total) : "") + " · " : "";
        state.textContent = `${data.stage || data.operation}: ${moved}${data.elapsed.toFixed(1)} s`;
      } else if (name === "result") {
        showResult(data);
      } else if (name === "problem") {
        panel.dataset.state = "failed";
        state.textContent = "failed: " + data.detail;
      }
    });
  } catch (error) {
    panel.dataset.state = "failed";
    state.textContent = "failed: " + error.message;
  } finally {
    document.querySelectorAll("[data-operation]").forEach((b) => { b.disabled = false; });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-operation]").forEach((button) => {
    button.addEventListener("click", () => runOperation(button));
  });
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      await post("/logout", "{}");
      window.location.assign("/login");
    });
  }
});
