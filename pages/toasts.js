  // Toasts (lesson 3): this visitor's unread toasts, in a corner of every page the
  // server sends, until closed here or in another tab. Every text goes in with
  // textContent: a toast that looks like HTML shows as the characters it is made of.
  const stack = document.createElement("section");
  stack.id = "toasts";
  stack.setAttribute("aria-label", "Toasts");
  stack.setAttribute("aria-live", "polite");
  document.body.append(stack);
  const shown = new Map();

  function showToast(toast) {
    if (shown.has(toast.id)) return; // sent again after a reconnect
    const box = document.createElement("div");
    box.className = "toast";
    box.dataset.id = toast.id;
    box.dataset.level = toast.level;
    const text = document.createElement("p");
    text.textContent = toast.message;
    const close = document.createElement("button");
    close.type = "button";
    close.textContent = "\u00d7";
    close.title = "Close: marks it read, in every tab";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", () => acknowledge(toast.id));
    box.append(text, close);
    stack.append(box);
    shown.set(toast.id, box);
  }

  function removeToast(id) {
    shown.get(id)?.remove();
    shown.delete(id);
  }

  // The server tells every tab of this visitor, this one included, with a "read" event.
  async function acknowledge(id) {
    removeToast(id);
    await fetch("/toasts/" + encodeURIComponent(id) + "/read", { method: "POST" }).catch(() => {});
  }

  function receive({ kind, data }) {
    if (kind === "toast") showToast(data);
    if (kind === "read") removeToast(data.id);
  }

  // One stream for all of this site's tabs, held by a shared worker: a browser opens at
  // most 6 connections to one host name, and each countdown tab needs one of its own.
  if (typeof SharedWorker === "function") {
    const worker = new SharedWorker("/toasts/worker.js", { name: "toasts" });
    worker.port.onmessage = (event) => receive(event.data);
    addEventListener("pagehide", () => worker.port.postMessage("bye"));
    worker.port.start();
  } else {
    // The same as the worker does, for this tab alone: try again when an answer closed it.
    let retryMs = 1000;
    const follow = () => {
      const source = new EventSource("/toasts/stream");
      source.onopen = () => (retryMs = 1000);
      source.onerror = () => {
        if (source.readyState !== EventSource.CLOSED) return;
        setTimeout(follow, retryMs);
        retryMs = Math.min(retryMs * 2, 30000);
      };
      for (const kind of ["toast", "read"]) source.addEventListener(kind, (event) => receive({ kind, data: JSON.parse(event.data) }));
    };
    follow();
  }
