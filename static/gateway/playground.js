// The admin's playground: sends the form to /admin/playground/call, which runs the
// API's own chat view as the chosen key, and shows the answer as it streams in,
// then the call's usage event (deployment, attempts, tokens, cost, latency, TTFT).
// A conversation keeps its turns (each answer joins it); a prompt template of the
// key's tenant is sent with its variables; tools are JSON schema; compare mode sends
// the same conversation to two to four models at once, side by side.
"use strict";
(function () {
  const form = document.getElementById("playground");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const choices = JSON.parse($("playground-choices").textContent);
  const keySelect = $("playground-key");
  const modelSelect = $("playground-model");
  const templateSelect = $("playground-template");
  const versionSelect = $("playground-template-version");
  const compare = $("playground-compare");
  const compareBox = $("playground-compare-models");
  const conversation = $("playground-conversation");
  const columns = $("playground-columns");
  const main = { root: $("playground-single"), answer: $("playground-answer"), error: $("playground-error") };
  let history = []; // the turns so far: {role, content}

  const choice = () => choices.find((c) => String(c.id) === keySelect.value);
  for (const c of choices) keySelect.add(new Option(c.label, String(c.id)));

  function models() {
    const c = choice();
    modelSelect.replaceChildren();
    for (const m of c ? c.models : []) modelSelect.add(new Option(m, m));
    if (c && c.default_model) modelSelect.value = c.default_model;
    compareBox.querySelectorAll("label").forEach((l) => l.remove());
    (c ? c.models : []).forEach((m, i) => {
      const label = document.createElement("label");
      const box = Object.assign(document.createElement("input"), { type: "checkbox", value: m, id: `playground-compare-${i}` });
      box.dataset.model = m;
      label.append(box, " " + m);
      compareBox.append(label);
    });
  }

  function templates() {
    const c = choice();
    templateSelect.replaceChildren(new Option("(none)", ""));
    for (const t of c ? c.templates : []) templateSelect.add(new Option(t.name, t.name));
    versions();
  }
  const template = () => (choice() ? choice().templates : []).find((t) => t.name === templateSelect.value);

  function versions() {
    const t = template();
    $("playground-template-fields").hidden = !t;
    versionSelect.replaceChildren();
    if (!t) return variables();
    const latest = t.versions[0].number;
    versionSelect.add(new Option(t.labels.production ? `production (v${t.labels.production})` : `latest (v${latest})`, ""));
    for (const [name, number] of Object.entries(t.labels)) versionSelect.add(new Option(`${name} (v${number})`, name));
    for (const v of t.versions) versionSelect.add(new Option(`v${v.number}${v.note ? " – " + v.note : ""}`, String(v.number)));
    variables();
  }
  function version() {
    const t = template();
    if (!t) return null;
    const wanted = versionSelect.value;
    const number = wanted === "" ? (t.labels.production || t.versions[0].number) :
      (/^\d+$/.test(wanted) ? Number(wanted) : t.labels[wanted]);
    return t.versions.find((v) => v.number === number) || null;
  }
  function variables() {
    const box = $("playground-variables");
    const kept = {};
    box.querySelectorAll("[data-variable]").forEach((i) => { kept[i.dataset.variable] = i.value; });
    box.replaceChildren();
    const v = version();
    for (const name of v ? v.variables : []) {
      const label = Object.assign(document.createElement("label"), { htmlFor: `playground-var-${name}`, textContent: name });
      const input = Object.assign(document.createElement("input"), { type: "text", id: `playground-var-${name}`, value: kept[name] || "" });
      input.dataset.variable = name;
      box.append(label, input);
    }
  }

  keySelect.addEventListener("change", () => { models(); templates(); });
  templateSelect.addEventListener("change", versions);
  versionSelect.addEventListener("change", variables);
  compare.addEventListener("change", () => {
    compareBox.hidden = !compare.checked;
    modelSelect.disabled = compare.checked;
  });
  models();
  templates();

  function turn(role, content) {
    const div = document.createElement("div");
    div.className = "gw-turn";
    div.dataset.role = role;
    div.append(Object.assign(document.createElement("span"), { className: "gw-turn-role", textContent: role }), content);
    conversation.append(div);
  }
  function redraw() {
    conversation.replaceChildren();
    for (const m of history) turn(m.role, m.content);
  }

  function fact(view, name, value) {
    const dd = view.root.querySelector(`[data-fact="${name}"]`);
    if (dd) dd.textContent = value;
  }
  function facts(view, g, headers) {
    fact(view, "status", g.status || "–");
    fact(view, "deployment", headers.get("x-gateway-provider") ?
      `${headers.get("x-gateway-provider")} / ${headers.get("x-gateway-model")} (deployment ${headers.get("x-gateway-deployment")})` :
      (g.provider_name ? `${g.provider_name} / ${g.upstream_model} (deployment ${g.deployment_id})` : "–"));
    fact(view, "route", g.route ? `${g.route} (${g.strategy})` : "–");
    fact(view, "template", g.prompt_template ? `${g.prompt_template} v${g.prompt_version}` : "–");
    fact(view, "attempts", g.attempts ?? "–");
    fact(view, "tokens", g.total_tokens === undefined ? "–" :
      `${g.prompt_tokens} in + ${g.completion_tokens} out = ${g.total_tokens}${g.tokens_estimated ? " (estimated)" : ""}`);
    fact(view, "cost", g.cost_usd ? "$" + g.cost_usd : "–");
    fact(view, "latency", g.latency_ms !== undefined ? g.latency_ms + " ms" : "–");
    fact(view, "ttft", g.ttft_ms !== null && g.ttft_ms !== undefined ? g.ttft_ms + " ms" : "–");
    fact(view, "request_id", g.request_id || headers.get("x-request-id") || "–");
  }
  function fail(view, message) {
    view.error.textContent = message;
    view.error.hidden = false;
  }
  function reset(view) {
    view.answer.textContent = "";
    view.error.hidden = true;
    for (const dd of view.root.querySelectorAll("[data-fact]")) dd.textContent = "–";
  }

  function request(model) {
    const messages = [];
    if ($("playground-system").value.trim()) messages.push({ role: "system", content: $("playground-system").value });
    messages.push(...history);
    const user = $("playground-user").value;
    if (user.trim()) messages.push({ role: "user", content: user });
    const number = (id) => ($(id).value === "" ? null : Number($(id).value));
    const body = { key: Number(keySelect.value), model: model, messages: messages,
                   temperature: number("playground-temperature"), max_tokens: number("playground-max-tokens"),
                   stream: $("playground-stream").checked };
    const text = $("playground-tools").value.trim();
    if (text) {
      let tools;
      try { tools = JSON.parse(text); } catch (e) { throw new Error("Tools: not JSON (" + e.message + ")"); }
      if (!Array.isArray(tools)) throw new Error("Tools: a JSON array of tools");
      body.tools = tools;
    }
    if (template()) {
      const variables = {};
      $("playground-variables").querySelectorAll("[data-variable]").forEach((i) => { variables[i.dataset.variable] = i.value; });
      body.prompt = { id: template().name, variables: variables };
      if (versionSelect.value) body.prompt.version = versionSelect.value;
    }
    return body;
  }

  function toolText(calls) {
    return Object.values(calls).map((c) => `→ ${c.name}(${c.arguments})`).join("\n");
  }

  // One call, its answer drawn into `view` as it streams; resolves to the answer's text ("" on failure).
  async function call(body, view) {
    reset(view);
    const started = performance.now();
    const response = await fetch(form.dataset.url, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body),
      headers: { "content-type": "application/json",
                 "x-csrftoken": form.querySelector("[name=csrfmiddlewaretoken]").value },
    });
    if (!response.ok) {
      const text = await response.text();
      let message = text;
      try { message = JSON.parse(text).error.message; } catch (e) { /* not JSON */ }
      fail(view, `${response.status}: ${message}`);
      facts(view, {}, response.headers);
      return "";
    }
    if (!body.stream) {
      const data = await response.json();
      const message = data.response.choices[0].message;
      const calls = Object.fromEntries((message.tool_calls || []).map((c, i) => [i, c.function]));
      view.answer.textContent = [message.content || "", toolText(calls)].filter(Boolean).join("\n");
      facts(view, data.gateway, response.headers);
      return view.answer.textContent;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", content = "", shownFirst = false, failed = false;
    const calls = {};
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const gateway = block.startsWith("event: gateway\n");
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data || data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (gateway) { facts(view, event, response.headers); continue; }
        if (event.error) { failed = true; fail(view, event.error.message); continue; }
        for (const choice of event.choices || []) {
          const delta = choice.delta || {};
          for (const t of delta.tool_calls || []) {
            const c = calls[t.index ?? 0] = calls[t.index ?? 0] || { name: "", arguments: "" };
            if (t.function && t.function.name) c.name = t.function.name;
            if (t.function && t.function.arguments) c.arguments += t.function.arguments;
          }
          const piece = delta.content || "";
          if ((piece || delta.tool_calls) && !shownFirst) {
            shownFirst = true;
            fact(view, "ttft", Math.round(performance.now() - started) + " ms (browser)");
          }
          content += piece;
          view.answer.textContent = [content, toolText(calls)].filter(Boolean).join("\n");
        }
      }
    }
    return failed ? "" : view.answer.textContent;
  }

  async function single() {
    const body = request(modelSelect.value);
    const user = $("playground-user").value;
    if (user.trim()) turn("user", user);
    const answer = await call(body, main);
    if (!answer) return;
    if (user.trim()) history.push({ role: "user", content: user });
    history.push({ role: "assistant", content: answer });
    redraw();
    $("playground-user").value = "";
  }

  async function side_by_side() {
    const picked = [...compareBox.querySelectorAll("input:checked")].map((i) => i.value);
    if (picked.length < 2 || picked.length > 4) {
      columns.hidden = true;
      main.root.hidden = false;
      fail(main, "Compare: pick two to four models.");
      return;
    }
    main.root.hidden = true;
    columns.hidden = false;
    columns.replaceChildren();
    const calls = picked.map((model) => {
      const section = $("playground-column").content.firstElementChild.cloneNode(true);
      section.dataset.model = model;
      section.querySelector(".gw-column-model").textContent = model;
      columns.append(section);
      const view = { root: section, answer: section.querySelector(".gw-column-answer"),
                     error: section.querySelector(".gw-column-error") };
      return call(request(model), view).catch((e) => fail(view, "The call failed: " + e.message));
    });
    await Promise.all(calls);
  }

  $("playground-new").addEventListener("click", () => {
    history = [];
    redraw();
    reset(main);
    columns.replaceChildren();
  });

  form.addEventListener("submit", async () => {
    $("playground-send").disabled = true;
    form.dataset.state = "sending";
    try {
      if (compare.checked) {
        await side_by_side();
      } else {
        columns.hidden = true;
        main.root.hidden = false;
        await single();
      }
    } catch (e) {
      main.root.hidden = false;
      fail(main, e.message.startsWith("Tools:") ? e.message : "The call failed: " + e.message);
    } finally {
      $("playground-send").disabled = false;
      form.dataset.state = "done";
    }
  });
})();
