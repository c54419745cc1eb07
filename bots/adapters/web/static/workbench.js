// The workbench page: tabs, live updates (server-sent events), streamed chat, retrieval lookups.
// The server renders every fragment (escaped); this script only swaps them in and streams text.
"use strict";

(function () {
  const personaId = document.body.dataset.persona || "";
  const base = "/workbench/personas/" + encodeURIComponent(personaId);
  const $ = (selector) => document.querySelector(selector);

  // --- tabs -----------------------------------------------------------------------------------
  function showTab(name) {
    const buttons = document.querySelectorAll("[data-tab]");
    if (!buttons.length) return;
    if (!document.querySelector('[data-panel="' + name + '"]')) name = "chat";
    buttons.forEach((b) => b.setAttribute("aria-selected", String(b.dataset.tab === name)));
    document.querySelectorAll("[data-panel]").forEach((p) => (p.hidden = p.dataset.panel !== name));
    if (name === "feedback") refresh("feedback", "#feedback");
    if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
  }
  document.querySelectorAll("[data-tab]").forEach((b) =>
    b.addEventListener("click", () => showTab(b.dataset.tab))
  );
  showTab(location.hash.slice(1) || "chat");

  async function refresh(fragment, selector) {
    const target = $(selector);
    if (!target || !personaId) return;
    const response = await fetch(base + "/" + fragment, { credentials: "same-origin" });
    if (response.ok) target.innerHTML = await response.text();
  }

  function post(path, body) {
    return fetch(base + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
  }

  // --- live updates -----------------------------------------------------------------------------
  function markSelected() {
    document.querySelectorAll("#personas li.persona").forEach((li) =>
      li.classList.toggle("selected", li.dataset.id === personaId)
    );
  }

  function connect() {
    const live = $("#live");
    const source = new EventSource("/workbench/events");
    source.onopen = () => {
      live.textContent = "live";
      live.className = "live on";
    };
    source.onerror = () => {
      live.textContent = source.readyState === EventSource.CLOSED ? "offline: reload" : "reconnecting…";
      live.className = "live off";
    };
    source.addEventListener("personas", (event) => {
      $("#personas").innerHTML = event.data;
      markSelected();
    });
    source.addEventListener("evals", (event) => {
      const data = JSON.parse(event.data);
      if (data.persona === personaId && $("#evals")) $("#evals").innerHTML = data.html;
    });
    source.addEventListener("persona", (event) => {
      if (JSON.parse(event.data).persona === personaId) refresh("about", "#about");
    });
  }
  connect();

  // --- chat -----------------------------------------------------------------------------------
  const log = $("#chat-log");
  const form = $("#chat-form");
  const input = $("#chat-input");

  function bubble(kind, text) {
    const div = document.createElement("div");
    div.className = "msg " + kind;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    div.appendChild(body);
    log.appendChild(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function showSources(div, sources) {
    if (!sources.length) return;
    const list = document.createElement("ul");
    list.className = "sources";
    for (const source of sources) {
      const item = document.createElement("li");
      const path = document.createElement("code");
      path.textContent = source.path + (source.heading ? " › " + source.heading : "");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = source.score.toFixed(2);
      const snippet = document.createElement("span");
      snippet.className = "snippet";
      snippet.textContent = source.snippet;
      item.append(path, " ", score, " ", snippet);
      list.appendChild(item);
    }
    div.appendChild(list);
  }

  async function send(text) {
    bubble("user", text);
    const div = bubble("bot pending", "");
    const body = div.querySelector(".text");
    const button = $("#chat-send");
    button.disabled = true;
    let sources = [];
    try {
      const response = await post("/chat", { text: text });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({ error: response.statusText }));
        throw new Error(problem.error || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          if (!line) continue;
          const item = JSON.parse(line);
          if (item.type === "sources") sources = item.sources;
          else if (item.type === "text") body.textContent += item.text;
          else if (item.type === "error") throw new Error(item.error);
        }
      }
      showSources(div, sources);
    } catch (error) {
      div.classList.add("failed");
      body.textContent += (body.textContent ? "\n" : "") + "(" + error.message + ")";
    } finally {
      div.classList.remove("pending");
      div.classList.add("done");
      button.disabled = false;
    }
  }

  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      input.value = "";
      send(text);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    document.querySelectorAll(".starter").forEach((b) =>
      b.addEventListener("click", () => send(b.textContent))
    );
    $("#chat-reset").addEventListener("click", async () => {
      await post("/reset");
      log.querySelectorAll(".msg").forEach((m) => m.remove());
    });
  }

  // --- retrieval inspector and evals ------------------------------------------------------------
  const retrieval = $("#retrieval-form");
  if (retrieval) {
    retrieval.addEventListener("submit", async (event) => {
      event.preventDefault();
      const query = $("#retrieval-query").value;
      const response = await fetch(base + "/retrieve?q=" + encodeURIComponent(query), {
        credentials: "same-origin",
      });
      $("#retrieval-results").innerHTML = await response.text();
    });
  }
  const rerun = $("#evals-run");
  if (rerun) rerun.addEventListener("click", () => post("/evals/run"));
})();
