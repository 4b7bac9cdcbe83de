// The live stream (/api/v1/events), read with fetch so that the login token can go in a header
// (EventSource cannot send one). Reconnects after a drop; each (re)connection and each `resync`
// event tell the pages to read the state again.

import { authHeaders } from "./api.js";

const listeners = new Set();
let controller = null;

export function onEvent(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function emit(type, data) {
  for (const listener of listeners) listener(type, data);
}

export function connect(onState) {
  if (controller) controller.abort();
  controller = new AbortController();
  run(controller.signal, onState);
}

async function run(signal, onState) {
  while (!signal.aborted) {
    try {
      const response = await fetch("/api/v1/events", { headers: authHeaders(), signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      onState(true);
      emit("resync", {});
      await read(response.body, signal);
    } catch (error) {
      if (signal.aborted) return;
    }
    onState(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function read(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let type = "message";
      let data = "";
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) emit(type, JSON.parse(data));
    }
  }
}
