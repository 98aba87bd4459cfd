// The API page: every operation of /openapi.json (method, path, summary, parameters, request body, responses),
// rendered here so /docs works offline — Swagger UI would load its files from a CDN.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const METHODS = ["get", "post", "put", "patch", "delete"];
  let spec = null;

  function refName(ref) { return ref.split("/").pop(); }

  function resolve(schema) {
    if (schema && schema.$ref) return spec.components.schemas[refName(schema.$ref)] || {};
    return schema || {};
  }

  // A schema as short TypeScript-like text; named schemas are expanded two levels deep.
  function describe(schema, depth = 0, indent = "") {
    if (!schema) return "any";
    if (schema.$ref) {
      const name = refName(schema.$ref);
      return depth >= 2 ? name : name + " " + describe(resolve(schema), depth + 1, indent);
    }
    const alternatives = schema.anyOf || schema.oneOf;
    if (alternatives) return alternatives.map((s) => describe(s, depth, indent)).join(" | ");
    if (schema.allOf) return schema.allOf.map((s) => describe(s, depth, indent)).join(" & ");
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (schema.type === "array") return describe(schema.items, depth, indent) + "[]";
    if (schema.type === "object" || schema.properties) {
      const props = Object.entries(schema.properties || {});
      if (!props.length) {
        return schema.additionalProperties ? "{[key]: " + describe(schema.additionalProperties, depth, indent) + "}" : "object";
      }
      const required = new Set(schema.required || []);
      const inner = indent + "  ";
      const lines = props.map(([key, value]) => {
        const note = value.description ? "  // " + value.description.split("\n")[0] : "";
        return inner + key + (required.has(key) ? "" : "?") + ": " + describe(value, depth + 1, inner) + note;
      });
      return "{\n" + lines.join("\n") + "\n" + indent + "}";
    }
    let text = schema.type || "any";
    if (schema.format) text += " (" + schema.format + ")";
    return text;
  }

  function schemaBlock(schema) { return vl.el("pre", { class: "schema", text: describe(schema) }); }

  function bounds(schema) {
    const parts = [];
    for (const [key, sign] of [["minimum", "≥"], ["exclusiveMinimum", ">"], ["maximum", "≤"], ["exclusiveMaximum", "<"],
      ["minLength", "length ≥"], ["maxLength", "length ≤"]]) {
      if (schema[key] !== undefined) parts.push(sign + " " + schema[key]);
    }
    if (schema.default !== undefined) parts.push("default " + JSON.stringify(schema.default));
    return parts.join(", ");
  }

  function parametersTable(parameters) {
    const rows = parameters.map((p) => vl.el("tr", {}, [
      vl.el("td", {}, [vl.el("code", { text: p.name + (p.required ? "" : "?") })]),
      vl.el("td", { text: p.in }),
      vl.el("td", {}, [vl.el("code", { text: describe(p.schema) })]),
      vl.el("td", { text: [p.description || (p.schema && p.schema.description) || "", bounds(p.schema || {})]
        .filter(Boolean).join(" · ") }),
    ]));
    const head = vl.el("tr", {}, ["name", "in", "type", ""].map((t) => vl.el("th", { text: t })));
    return vl.el("table", { class: "params" }, [head, ...rows]);
  }

  function operation(path, method, op) {
    const secured = (op.security || spec.security || []).length > 0;
    const summary = vl.el("summary", {}, [
      vl.el("span", { class: "method " + method, text: method }),
      vl.el("span", { class: "path", text: path }),
      vl.el("span", { class: "op-summary", text: op.summary || "" }),
    ]);
    if (secured) summary.append(vl.el("span", { class: "lock", text: "token" }));
    if (op.tags && op.tags.length) summary.append(vl.el("span", { class: "tag", text: op.tags.join(", ") }));
    const body = vl.el("div", { class: "body" });
    if (op.description) body.append(vl.el("p", { text: op.description }));
    if (op.parameters && op.parameters.length) {
      body.append(vl.el("h3", { text: "Parameters" }), parametersTable(op.parameters));
    }
    if (op.requestBody) {
      body.append(vl.el("h3", { text: "Request body" + (op.requestBody.required ? "" : " (optional)") }));
      for (const [type, media] of Object.entries(op.requestBody.content || {})) {
        body.append(vl.el("div", { class: "muted", text: type }), schemaBlock(media.schema));
      }
    }
    body.append(vl.el("h3", { text: "Responses" }));
    for (const [code, response] of Object.entries(op.responses || {})) {
      body.append(vl.el("div", {}, [vl.el("b", { text: code + " " }), document.createTextNode(response.description || "")]));
      const json = (response.content || {})["application/json"];
      if (json && json.schema && Object.keys(json.schema).length) body.append(schemaBlock(json.schema));
    }
    return vl.el("details", { class: "card op", "data-path": path, "data-method": method }, [summary, body]);
  }

  async function load() {
    try {
      spec = await (await vl.api("/openapi.json")).json();
    } catch (error) {
      $("summary").textContent = "Could not read /openapi.json: " + error.message;
      document.body.dataset.state = "error";
      return;
    }
    spec.components = spec.components || { schemas: {} };
    spec.components.schemas = spec.components.schemas || {};
    $("title").textContent = spec.info.title;
    $("version").textContent = "API v" + spec.info.version;
    $("summary").textContent = spec.info.summary || spec.info.description || "";
    const box = $("operations");
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) if (item[method]) box.append(operation(path, method, item[method]));
    }
    document.body.dataset.state = "ready";
  }

  load();
})();
