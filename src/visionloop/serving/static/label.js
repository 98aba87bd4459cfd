// The labeling page: one queued image at a time; keys 0-9 label, s skips, x marks "not a valid image".
"use strict";

const vl = (() => {
  let token = sessionStorage.getItem("visionloop-token");

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (response.status === 401) {
      const entered = window.prompt("This server needs its bearer token (VISIONLOOP_TOKEN):");
      if (entered) {
        token = entered.trim();
        sessionStorage.setItem("visionloop-token", token);
        return api(path, options);
      }
    }
    if (!response.ok) {
      let detail = response.status + " " + response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return response;
  }

  function postJSON(path, body) {
    return api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async function imageInto(img, path, previous) {
    const blob = await (await api(path)).blob();
    if (previous) URL.revokeObjectURL(previous);
    const url = URL.createObjectURL(blob);
    img.src = url;
    return url;
  }

  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  return { api, postJSON, imageInto, el };
})();

(() => {
  if (!document.getElementById("classes")) return; // not the queue page
  const $ = (id) => document.getElementById(id);
  const session = sessionStorage.getItem("visionloop-session") || (() => {
    const id = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Math.random()).slice(2);
    sessionStorage.setItem("visionloop-session", id);
    return id;
  })();
  let item = null;
  let classes = [];
  let busy = false;
  let imageUrl = null;
  let last = null; // the last answer of this tab ({id, message}): the undo button takes it back

  function setStatus(text, kind = "") {
    $("status").textContent = text;
    $("status").className = "status " + kind;
  }

  function setBusy(value) {
    busy = value;
    document.body.dataset.state = value ? "busy" : (item ? "ready" : "empty");
    for (const button of document.querySelectorAll("button")) {
      button.disabled = value || (button.id === "undo" ? !last : !item);
    }
  }

  function renderClasses() {
    const box = $("classes");
    box.replaceChildren();
    const top = item && item.top_guesses.length ? item.top_guesses[0].label : null;
    classes.forEach((name, index) => {
      const button = vl.el("button", { type: "button", "data-label": name, title: "label as " + name });
      if (index < 10) button.append(vl.el("kbd", { text: String(index) }));
      button.append(document.createTextNode(name));
      if (name === top) button.classList.add("top");
      button.addEventListener("click", () => submit(name));
      box.append(button);
    });
  }

  function renderGuesses() {
    const list = $("guesses");
    list.replaceChildren();
    for (const guess of (item ? item.top_guesses : [])) {
      const pct = (100 * guess.probability);
      list.append(vl.el("li", {}, [
        vl.el("span", { class: "name", text: guess.label }),
        vl.el("span", { class: "track" }, [vl.el("span", { class: "fill", style: "display:block;width:" + pct.toFixed(1) + "%" })]),
        vl.el("span", { class: "pct", text: pct.toFixed(1) + "%" }),
      ]));
    }
  }

  function renderProgress(progress) {
    $("p-labeled").textContent = progress.labeled;
    $("p-queued").textContent = progress.queued;
    const drift = progress.drifted_traffic;
    if (drift.labeled_share === null) {
      $("p-drift").textContent = "–";
      $("p-drift-detail").textContent = "no drifted traffic seen";
    } else {
      $("p-drift").textContent = Math.round(100 * drift.labeled_share) + "%";
      $("p-drift-detail").textContent = "of drifted traffic labeled (" + drift.labeled + "/" + drift.total + ")";
    }
    const bars = $("per-class");
    bars.replaceChildren();
    const counts = Object.entries(progress.queued_per_class);
    const most = Math.max(1, ...counts.map(([, n]) => n));
    if (!counts.length) bars.append(vl.el("span", { class: "muted", text: "nothing queued" }));
    for (const [name, n] of counts) {
      bars.append(vl.el("div", { class: "col", title: n + " queued predicted as " + name }, [
        vl.el("span", { class: "n", text: String(n) }),
        vl.el("div", { class: "bar-fill", style: "height:" + Math.round(60 * n / most) + "px" }),
        vl.el("span", { class: "c", text: name }),
      ]));
    }
  }

  async function loadNext() {
    setBusy(true);
    try {
      const data = await (await vl.api("/label/next?session=" + encodeURIComponent(session))).json();
      item = data.item;
      classes = data.classes;
      $("model").textContent = data.model_version ? "model v" + data.model_version : "";
      $("empty").hidden = !!item;
      $("item").hidden = !item;
      if (item) {
        $("prediction-id").textContent = item.prediction_id;
        // the disagreement badge says what the other model guessed ("v1 said 7"), whichever rule queued the image
        const said = item.other_label == null ? "" :
          (item.other_version ? "v" + item.other_version : "the other model") + " said " + item.other_label;
        const disagreed = item.reason === "disagreement";
        $("reason").textContent = item.reason.replace("_", " ") + (disagreed && said ? ": " + said : "");
        $("reason").className = "badge " + item.reason;
        $("other").textContent = "disagreement: " + said;
        $("other").hidden = disagreed || !said;
        $("when").textContent = "predicted " + item.predicted_label + " at " +
          (100 * item.confidence).toFixed(0) + "% · v" + item.model_version + " · " +
          new Date(item.created_at).toLocaleString();
        if (item.has_image) {
          imageUrl = await vl.imageInto($("image"), "/label/image/" + encodeURIComponent(item.prediction_id), imageUrl);
        } else {
          $("image").removeAttribute("src");
          $("image").alt = "the image of this prediction was not stored";
        }
      }
      renderClasses();
      renderGuesses();
      renderProgress(data.progress);
    } catch (error) {
      setStatus("Could not load the next image: " + error.message, "error");
    } finally {
      setBusy(false);
    }
  }

  async function act(path, body, message) {
    if (busy || !item) return;
    const id = item.prediction_id;
    setBusy(true);
    try {
      // the session proves this tab still holds the image: a label after its lease went to someone else is refused
      await vl.postJSON(path.replace("{id}", encodeURIComponent(id)) + "?session=" + encodeURIComponent(session), body);
      setStatus(message + " (" + id.slice(0, 8) + ")", "ok");
      last = { id, message };
    } catch (error) {
      setStatus("Not saved: " + error.message, "error");
      setBusy(false);
      return;
    }
    await loadNext();
  }

  const submit = (label) => act("/label/{id}", { label }, "Labeled as " + label);
  const skip = () => act("/label/{id}/skip", undefined, "Skipped");
  const invalid = () => act("/label/{id}/invalid", undefined, "Marked as not a valid image");

  async function undo() {
    if (busy || !last) return;
    const { id, message } = last;
    setBusy(true);
    try {
      // queued again (a label is removed from the log) and held for this tab: it is the next image shown
      await vl.postJSON("/label/" + encodeURIComponent(id) + "/undo?session=" + encodeURIComponent(session));
      last = null;
      setStatus("Undone: " + message.toLowerCase() + " (" + id.slice(0, 8) + ")", "ok");
    } catch (error) {
      setStatus("Could not undo: " + error.message, "error");
      setBusy(false);
      return;
    }
    await loadNext();
  }

  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("invalid").addEventListener("click", invalid);
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (/^[0-9]$/.test(event.key)) {
      const name = classes[Number(event.key)];
      if (name !== undefined) { event.preventDefault(); submit(name); }
    } else if (event.key === "s" || event.key === "S") {
      event.preventDefault(); skip();
    } else if (event.key === "x" || event.key === "X") {
      event.preventDefault(); invalid();
    } else if (event.key === "u" || event.key === "U") {
      event.preventDefault(); undo();
    }
  });
  loadNext();
})();
