// The review page: confirm or correct disputed training labels; apply corrections as one new snapshot.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let classes = [];
  let pending = 0;
  const urls = [];

  function setStatus(text, kind = "") {
    $("status").textContent = text;
    $("status").className = "status " + kind;
  }

  function refreshApply() {
    $("apply").disabled = pending === 0;
    $("apply").textContent = pending
      ? "Apply " + pending + " correction" + (pending === 1 ? "" : "s") + " as a new data version"
      : "No corrections to apply";
  }

  async function decide(card, suspect, decision, label) {
    for (const control of card.querySelectorAll("button, select")) control.disabled = true;
    try {
      await vl.postJSON("/label/review/decisions", { sha256: suspect.sha256, decision, label });
      card.classList.add("done");
      card.querySelector(".outcome").textContent = decision === "confirm"
        ? "kept " + suspect.given_label : "corrected to " + label;
      if (decision === "correct") { pending += 1; refreshApply(); }
    } catch (error) {
      setStatus("Not saved: " + error.message, "error");
      for (const control of card.querySelectorAll("button, select")) control.disabled = false;
    }
  }

  function card(suspect) {
    const img = vl.el("img", { alt: "training image " + suspect.path });
    vl.imageInto(img, "/label/review/image/" + suspect.sha256).then((url) => urls.push(url));
    const keep = vl.el("button", { type: "button", text: "Keep " + suspect.given_label });
    const take = vl.el("button", { type: "button", class: "primary", text: "→ " + suspect.suggested_label });
    const select = vl.el("select", { "aria-label": "another label" });
    select.append(vl.el("option", { value: "", text: "other…" }));
    for (const name of classes) {
      if (name !== suspect.given_label) select.append(vl.el("option", { value: name, text: name }));
    }
    const node = vl.el("div", { class: "card suspect", "data-sha256": suspect.sha256 }, [
      img,
      vl.el("div", { class: "labels" }, [
        vl.el("span", {}, ["given ", vl.el("b", { text: suspect.given_label })]),
        vl.el("span", {}, ["model says ", vl.el("b", { text: suspect.suggested_label })]),
      ]),
      vl.el("div", { class: "muted", text: "p(given) " + (100 * suspect.self_confidence).toFixed(0) +
        "% · p(suggested) " + (100 * suspect.suggested_confidence).toFixed(0) + "% · " + suspect.split }),
      vl.el("div", { class: "row" }, [keep, take]),
      vl.el("div", { class: "row" }, [select]),
      vl.el("div", { class: "outcome muted" }),
    ]);
    keep.addEventListener("click", () => decide(node, suspect, "confirm"));
    take.addEventListener("click", () => decide(node, suspect, "correct", suspect.suggested_label));
    select.addEventListener("change", () => { if (select.value) decide(node, suspect, "correct", select.value); });
    return node;
  }

  async function load() {
    try {
      const data = await (await vl.api("/label/review/items")).json();
      classes = data.classes;
      pending = data.pending_corrections.length;
      $("model").textContent = "model v" + data.model_version;
      $("summary").textContent = data.total_suspects + " suspected label errors, " + data.open +
        " still to review, " + data.confirmed + " confirmed, " + pending + " corrections waiting.";
      $("computed").textContent = "Computed " +
        (data.computed_at ? new Date(data.computed_at).toLocaleString() : "at an unknown time") +
        (data.images_reviewed === null || data.images_reviewed === undefined ? "" : " over " + data.images_reviewed +
          " prepared images") + " by model v" + data.model_version + ".";
      $("grid").replaceChildren(...data.items.map(card));
      refreshApply();
      document.body.dataset.state = "ready";
    } catch (error) {
      $("summary").textContent = "Could not load the review: " + error.message;
      document.body.dataset.state = "error";
    }
  }

  $("apply").addEventListener("click", async () => {
    $("apply").disabled = true;
    setStatus("Creating a new data snapshot…");
    try {
      const result = await (await vl.postJSON("/label/review/apply")).json();
      setStatus("New data version " + result.data_version + ": " + result.n_relabeled + " relabeled in " +
        result.snapshot, "ok");
      pending = 0;
      refreshApply();
    } catch (error) {
      setStatus("Not applied: " + error.message, "error");
      refreshApply();
    }
  });
  // The newest prediction-diff gallery (a gate decision or `visionloop diff`): its counts, and the page itself
  // fetched with the token and opened from a blob, so the link works when the server needs a token too.
  async function showLatestDiff() {
    try {
      const latest = (await (await vl.api("/label/diffs")).json()).galleries[0];
      if (!latest) return;
      $("diff-summary").textContent = latest.title + ": " + latest.n_flipped + " of " + latest.n_images +
        " images change their answer (" + latest.fixed + " fixed, " + latest.broken + " broke a known label).";
      const page = await (await vl.api("/label/diffs/" + latest.name + "/diff.html")).blob();
      $("diff-link").href = URL.createObjectURL(page);
      $("diff").hidden = false;
    } catch (_) { /* no gallery to show: the section stays hidden */ }
  }

  load().finally(showLatestDiff);
})();
