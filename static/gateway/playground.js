// The admin's playground: sends the form to /admin/playground/call, which runs the
// API's own chat view as the chosen key, and shows the answer as it streams in,
// then the call's usage event (deployment, attempts, tokens, cost, latency, TTFT).
"use strict";
(function () {
  const form = document.getElementById("playground");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const choices = JSON.parse($("playground-choices").textContent);
  const keySelect = $("playground-key");
  const modelSelect = $("playground-model");
  const answer = $("playground-answer");
  const error = $("playground-error");

  for (const c of choices) keySelect.add(new Option(c.label, String(c.id)));
  function models() {
    const choice = choices.find((c) => String(c.id) === keySelect.value);
    modelSelect.replaceChildren();
    for (const m of choice ? choice.models : []) modelSelect.add(new Option(m, m));
    if (choice && choice.default_model) modelSelect.value = choice.default_model;
  }
  keySelect.addEventListener("change", models);
  models();

  function fact(name, value) {
    form.querySelector(`[data-fact="${name}"]`).textContent = value;
  }
  function facts(g, headers) {
    fact("status", g.status || "–");
    fact("deployment", headers.get("x-gateway-provider") ?
      `${headers.get("x-gateway-provider")} / ${headers.get("x-gateway-model")} (deployment ${headers.get("x-gateway-deployment")})` :
      (g.provider_name ? `${g.provider_name} / ${g.upstream_model} (deployment ${g.deployment_id})` : "–"));
    fact("route", g.route ? `${g.route} (${g.strategy})` : "–");
    fact("attempts", g.attempts ?? "–");
    fact("tokens", g.total_tokens === undefined ? "–" :
      `${g.prompt_tokens} in + ${g.completion_tokens} out = ${g.total_tokens}${g.tokens_estimated ? " (estimated)" : ""}`);
    fact("cost", g.cost_usd ? "$" + g.cost_usd : "–");
    fact("latency", g.latency_ms !== undefined ? g.latency_ms + " ms" : "–");
    fact("ttft", g.ttft_ms !== null && g.ttft_ms !== undefined ? g.ttft_ms + " ms" : "–");
    fact("request_id", g.request_id || headers.get("x-request-id") || "–");
  }
  function fail(message) {
    error.textContent = message;
    error.hidden = false;
  }

  async function send() {
    const messages = [];
    if ($("playground-system").value.trim()) messages.push({ role: "system", content: $("playground-system").value });
    messages.push({ role: "user", content: $("playground-user").value });
    const number = (id) => ($(id).value === "" ? null : Number($(id).value));
    const body = { key: Number(keySelect.value), model: modelSelect.value, messages: messages,
                   temperature: number("playground-temperature"), max_tokens: number("playground-max-tokens"),
                   stream: $("playground-stream").checked };
    answer.textContent = "";
    error.hidden = true;
    form.dataset.state = "sending";
    for (const dd of form.querySelectorAll("[data-fact]")) dd.textContent = "–";
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
      fail(`${response.status}: ${message}`);
      facts({}, response.headers);
      return;
    }
    if (!body.stream) {
      const data = await response.json();
      answer.textContent = data.response.choices.map((c) => c.message.content || "").join("\n");
      facts(data.gateway, response.headers);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let shownFirst = false;
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
        if (gateway) { facts(event, response.headers); continue; }
        if (event.error) { fail(event.error.message); continue; }
        for (const choice of event.choices || []) {
          const piece = (choice.delta && choice.delta.content) || "";
          if (piece && !shownFirst) {
            shownFirst = true;
            fact("ttft", Math.round(performance.now() - started) + " ms (browser)");
          }
          answer.textContent += piece;
        }
      }
    }
  }

  form.addEventListener("submit", async () => {
    $("playground-send").disabled = true;
    try {
      await send();
    } catch (e) {
      fail("The call failed: " + e.message);
    } finally {
      $("playground-send").disabled = false;
      form.dataset.state = "done";
    }
  });
})();
