// DriftRec dashboard helpers shared by both pages. Every figure comes from the public JSON
// API on this origin; nothing is fetched from anywhere else.
"use strict";

const DR = (() => {
  const PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
    "#e6550d", "#31a354", "#756bb1", "#636363",
  ];
  const OTHER_COLOR = "#c7ccd4";
  const assigned = new Map();

  /** A colour per topic, stable within the page: the first topic seen gets the first colour. */
  function topicColor(topic) {
    if (topic === "other") return OTHER_COLOR;
    if (!assigned.has(topic)) assigned.set(topic, PALETTE[assigned.size % PALETTE.length]);
    return assigned.get(topic);
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") search.set(key, value);
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  async function getJson(url) {
    return fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
  }

  /** GET a JSON API path. Browsers send the HTTP Basic credentials of the page on their own
   * only below the path the page was challenged at; when an API call is refused, fetch the
   * overview once (challenged with the same realm, so the browser answers it with the stored
   * credentials and then sends them for the whole origin) and try again. */
  async function api(path, params) {
    const url = path + query(params);
    let response = await getJson(url);
    if (response.status === 401) {
      await fetch("/dashboard", {credentials: "same-origin", cache: "no-store"});
      response = await getJson(url);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  /** A DOM element with attributes and children (text children are text nodes: no HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value;
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Text for Plotly, shown as it is. Plotly reads every label, legend name, hover text and
   * template value as its pseudo-HTML (`<a href>`, `<b>`, `<br>`) and decodes entities: an
   * item title `<a href=...>` would become a live link. Escaped, Plotly decodes it back to
   * the literal text. Data never goes into a hovertemplate itself (`%{...}` in a title would
   * be a placeholder): it goes in customdata, text or meta, escaped with this. */
  function plain(value) {
    return String(value ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;")
      .replace(/>/g, "&gt;");
  }

  function chip(topic) {
    return el("span", {class: "chip", style: `background:${topicColor(topic)}`}, topic);
  }

  const pad = (n) => String(n).padStart(2, "0");
  /** "1998-03-04 17:05 UTC" from an ISO timestamp (the API speaks UTC). */
  function fmtTime(iso) {
    const d = new Date(iso);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
  }
  /** "YYYY-MM-DD" (UTC) of a Date or ISO timestamp. */
  function isoDate(value) {
    const d = value instanceof Date ? value : new Date(value);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  }
  function addDays(day, days) {
    const d = new Date(`${day}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + days);
    return isoDate(d);
  }
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
  const validDay = (text) => /^\d{4}-\d{2}-\d{2}$/.test(text || "") &&
    !Number.isNaN(Date.parse(`${text}T00:00:00Z`));

  const PLOT_CONFIG = {displaylogo: false, responsive: true};
  const BASE_LAYOUT = {
    margin: {l: 56, r: 56, t: 16, b: 48},
    font: {family: "system-ui, sans-serif", size: 12},
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    hovermode: "closest",
  };

  /** Draw (or redraw) a chart in place; a message instead when there is nothing to draw. */
  function plot(id, traces, layout, emptyMessage) {
    const node = document.getElementById(id);
    const empty = node.querySelector(".empty");
    if (empty) empty.remove();
    if (!traces.length) {
      Plotly.purge(node);
      node.append(el("p", {class: "empty"}, emptyMessage || "No data in this range."));
      return Promise.resolve(node);
    }
    return Plotly.react(node, traces, {...BASE_LAYOUT, ...layout}, PLOT_CONFIG);
  }

  function showError(error) {
    const node = document.getElementById("error");
    node.textContent = error instanceof ApiError && error.status === 404
      ? error.message : `Could not load the dashboard data: ${error.message}`;
    node.hidden = false;
    document.body.dataset.state = "error";
  }
  function clearError() {
    document.getElementById("error").hidden = true;
  }

  let firstCall = null;
  /** The served model, shown in the header. Pages await this one call before their data
   * calls, so a refused first call (and the credential hand-over in `api`) happens once,
   * not once per parallel request. */
  function showModel() {
    firstCall ||= api("/models/current").then((model) => {
      document.getElementById("model").textContent =
        model.version ? `${model.name} v${model.version}` : "no model loaded";
    }, (error) => {
      if (error instanceof ApiError && error.status === 401) throw error;
    });
    return firstCall;
  }

  return {
    api, ApiError, el, chip, plain, topicColor, fmtTime, isoDate, addDays, pct, validDay, plot,
    showError, clearError, showModel,
  };
})();
