// The toasts' shared worker: one EventSource for every tab of this site, so
// toasts cost one connection however many tabs are open. Each tab connects
// with a port, is sent the unread toasts at once, then each toast and each
// read mark as they come. EventSource reconnects by itself after a drop; the
// server then sends the unread toasts again, and tabs skip the ones they show.
// An answer that is no stream (a 401 for a cookie of an earlier run, which comes
// with a new cookie; a 503; a proxy's 502) closes it for good: then the worker
// opens a new one itself, waiting twice as long each time.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;
const ports = new Set();
const unread = new Map();
let retryMs = RETRY_FIRST_MS;

function tell(message) {
  for (const port of ports) port.postMessage(message);
}

function follow() {
  const source = new EventSource("/toasts/stream");
  source.onopen = () => (retryMs = RETRY_FIRST_MS);
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) return; // reconnecting by itself
    setTimeout(follow, retryMs);
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  };
  source.addEventListener("toast", (event) => {
    const toast = JSON.parse(event.data);
    unread.set(toast.id, toast);
    tell({ kind: "toast", data: toast });
  });
  source.addEventListener("read", (event) => {
    const mark = JSON.parse(event.data);
    unread.delete(mark.id);
    tell({ kind: "read", data: mark });
  });
}
follow();

onconnect = (event) => {
  const port = event.ports[0];
  ports.add(port);
  // A closing tab says goodbye, so the worker stops posting to it.
  port.onmessage = (message) => {
    if (message.data === "bye") ports.delete(port);
  };
  for (const toast of unread.values()) port.postMessage({ kind: "toast", data: toast });
};
