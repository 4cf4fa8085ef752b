/* facegroup report: the corrections editor (rename, merge, move faces, ignore faces).
   Why here: users see wrong groupings in the report, so they fix them in it. The page has no server:
   edits are kept in localStorage under the report's data key (one per user and report), shown on the
   page, and downloaded as one corrections file (format "facegroup-corrections", version 1) that the
   pipeline applies with --corrections on every later run. The user's people and all their face keys
   come from the user's edit-data.js (person pages are paginated). Text goes in by textContent only. */
"use strict";
(() => {
  const data = window.facegroupEdit;
  const tools = document.querySelector("section.edit");
  if (!data || !tools) return;
  const storeKey = `facegroup-corrections:${data.key}`;
  const pid = tools.dataset.person === undefined ? null : Number(tools.dataset.person);  // null: no person page
  const people = new Map(data.people.map(p => [p.id, p]));
  const own = new Set(pid === null ? [] : people.get(pid).faces);
  const $ = selector => tools.querySelector(selector);
  let stored = true;  // false when the browser refuses localStorage: edits last as long as the page
  let entries = load();
  let onPick = null;  // what the open chooser does with the person picked

  function load() {
    try {
      const value = JSON.parse(localStorage.getItem(storeKey) || "[]");
      return Array.isArray(value) ? value : [];
    } catch (err) {
      stored = false;
      return [];
    }
  }

  function save() {
    try {
      localStorage.setItem(storeKey, JSON.stringify(entries));
      stored = true;
    } catch (err) {
      stored = false;
    }
  }

  /* The user's people after the edits: owner of each face (a person id, "new:<n>" for faces split off
     by edit n, null for faces not in a person, "ignored"), faces per owner, new names, merged people. */
  function replay() {
    const owner = new Map(), names = new Map(), merged = new Map();
    for (const p of data.people) for (const key of p.faces) owner.set(key, p.id);
    entries.forEach((e, n) => {
      if (e.action === "rename") names.set(e.person_id, e.name);
      if (e.action === "merge") merged.set(e.person_id, e.into);
      const to = {merge: e.into, move: e.to === "new" ? `new:${n}` : e.to, ignore: "ignored"}[e.action];
      if (to !== undefined) for (const key of e.faces) owner.set(key, to);
    });
    const counts = new Map();
    for (const o of owner.values()) counts.set(o, (counts.get(o) ?? 0) + 1);
    return {owner, counts, names, merged};
  }

  const facesOf = (state, id) => [...state.owner].filter(([, o]) => o === id).map(([key]) => key);
  const title = (state, id) => state.names.get(id) ?? people.get(id).title;

  function add(action, fields) {
    // never before the previous edit (a clock set back): the pipeline replays edits in time order
    const at = new Date(Math.max(Date.now(), entries.length ? Date.parse(entries[entries.length - 1].at) : 0));
    entries.push({action, user_id: data.user, ...fields, at: at.toISOString()});
    save();
    render();
  }

  function selected() {
    return [...document.querySelectorAll("li.face[data-key] .pick:checked")].map(b => b.closest("li").dataset.key);
  }

  function moveSelected(to) {
    const state = replay(), faces = selected(), rest = facesOf(state, pid).filter(k => !faces.includes(k));
    add("move", {person_id: pid, faces, rest, to, ...(typeof to === "number" ? {to_faces: facesOf(state, to)} : {})});
  }

  /* The chooser lists the user's other people (as they are after the edits) to merge or move into. */
  function choose(prompt, then) {
    const state = replay(), list = $(".choices");
    $(".prompt").textContent = prompt;
    list.replaceChildren();
    for (const p of data.people) {
      const n = state.counts.get(p.id) ?? 0;
      if (p.id === pid || n === 0) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.pick = p.id;
      if (p.thumb) {
        const img = document.createElement("img");
        Object.assign(img, {src: p.thumb, alt: "", width: 48, height: 48});
        button.append(img);
      }
      const name = document.createElement("span");
      name.textContent = title(state, p.id);
      const detail = document.createElement("small");
      detail.textContent = `#${p.id} · ${n} face${n === 1 ? "" : "s"}`;
      button.append(name, detail);
      const item = document.createElement("li");
      item.append(button);
      list.append(item);
    }
    onPick = then;
    $(".chooser").hidden = false;
  }

  function note(element, text) {
    let span = element.querySelector(".edit-note");
    if (!span) {
      span = document.createElement("span");
      span.className = "edit-note";
      element.append(span);
    }
    span.textContent = text;
    span.hidden = !text;
  }

  function describe(state, e) {
    const who = id => (typeof id === "number" ? title(state, id) : "");
    const faces = e.faces.length === 1 ? "1 face" : `${e.faces.length} faces`;
    switch (e.action) {
      case "rename": return `named person #${e.person_id} “${e.name}”`;
      case "merge": return `merged #${e.person_id} into ${who(e.into)}`;
      case "ignore": return `ignored ${faces}`;
      default: return e.to === null ? `${faces}: not ${who(e.person_id)}` :
        e.to === "new" ? `${faces} made a new person` : `moved ${faces} to ${who(e.to)}`;
    }
  }

  function render() {
    const state = replay();
    for (const card of document.querySelectorAll("li.card[data-person]")) {
      const id = Number(card.dataset.person);
      card.querySelector(".name").textContent = title(state, id);
      const count = card.querySelector(".count"), n = state.counts.get(id) ?? 0, was = people.get(id).faces.length;
      count.dataset.was ??= count.textContent;
      count.textContent = n === was ? count.dataset.was : `${n} face${n === 1 ? "" : "s"} (was ${was})`;
      card.classList.toggle("edited", state.merged.has(id));
      note(card.querySelector("a"), state.merged.has(id) ? `merged into ${title(state, state.merged.get(id))}`
        : state.names.has(id) ? "renamed (pending)" : "");
    }
    for (const tile of document.querySelectorAll("li.face[data-key]")) {
      const o = state.owner.get(tile.dataset.key) ?? null, gone = o !== pid, pick = tile.querySelector(".pick");
      tile.classList.toggle("edited", gone);
      note(tile, !gone ? "" : o === "ignored" ? "ignored" : o === null ? "not this person"
        : typeof o === "number" ? `→ ${title(state, o)}` : "→ new person");
      if (pick) {
        pick.disabled = gone;
        if (gone) pick.checked = false;
      }
    }
    const active = pid === null || state.counts.has(pid);
    if (pid !== null) {
      const h1 = document.querySelector(".person-head h1");
      h1.textContent = title(state, pid);
      const added = facesOf(state, pid).filter(k => !own.has(k)).length;
      const into = state.merged.get(pid);
      note(h1.parentElement, [into !== undefined ? `Merged into ${title(state, into)} (pending).` : "",
                              !active && into === undefined ? "Every face moved out (pending)." : "",
                              state.names.has(pid) ? "Renamed (pending)." : "",
                              added ? `${added} face${added === 1 ? "" : "s"} added by your edits.` : ""]
        .join(" ").trim());
      for (const b of tools.querySelectorAll('[data-do="rename"], [data-do="merge"]')) b.disabled = !active;
    }
    const picked = selected().length;
    const shown = $(".picked");
    if (shown) shown.textContent = picked ? `${picked} face${picked === 1 ? "" : "s"} selected` : "No face selected";
    for (const b of tools.querySelectorAll(".face-actions button")) b.disabled = !picked || !active;
    const n = entries.length;
    const last = n ? ` (last: ${describe(state, entries[n - 1])})` : "";
    $(".pending .count").textContent = (n ? `${n} pending edit${n === 1 ? "" : "s"}${last}` : "No pending edits")
      + (stored ? "" : " · not saved: this browser keeps no local storage for this page");
    $('[data-do="undo"]').disabled = $('[data-do="download"]').disabled = !n;
  }

  function download() {
    const text = JSON.stringify({format: "facegroup-corrections", version: 1, entries}, null, 1) + "\n";
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
    link.download = `facegroup-corrections-${data.user.replace(/[^A-Za-z0-9_-]+/g, "_").slice(0, 60)}-${stamp}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }

  function rename() {
    const name = $(".rename input").value.trim();
    if (name && name !== title(replay(), pid)) add("rename", {person_id: pid, faces: facesOf(replay(), pid), name});
    $(".rename").hidden = true;
  }

  const actions = {
    rename: () => {
      $(".rename").hidden = false;
      $(".rename input").value = title(replay(), pid);
      $(".rename input").focus();
    },
    "save-name": rename,
    close: () => { $(".rename").hidden = $(".chooser").hidden = true; },
    merge: () => choose("Merge this person into:", into => {
      const state = replay();
      add("merge", {person_id: pid, faces: facesOf(state, pid), into, into_faces: facesOf(state, into)});
    }),
    not: () => moveSelected(null),
    new: () => moveSelected("new"),
    move: () => choose("Move the selected faces to:", to => moveSelected(to)),
    ignore: () => add("ignore", {faces: selected()}),
    undo: () => {
      entries.pop();
      save();
      render();
    },
    download,
  };

  tools.addEventListener("click", event => {
    const choice = event.target.closest("button[data-pick]");
    if (choice) {
      $(".chooser").hidden = true;
      onPick(Number(choice.dataset.pick));
      return;
    }
    const button = event.target.closest("button[data-do]");
    if (button && actions[button.dataset.do]) actions[button.dataset.do]();
  });
  tools.addEventListener("keydown", event => {
    if (!event.target.closest(".rename input")) return;
    if (event.key === "Enter") rename();
    if (event.key === "Escape") actions.close();
  });
  document.addEventListener("change", event => {
    if (event.target.matches(".pick")) render();
  });
  window.addEventListener("storage", event => {  // edits made in another tab of the same report
    if (event.key === storeKey) {
      entries = load();
      render();
    }
  });
  tools.hidden = false;
  document.body.classList.add("editing");
  render();
})();
