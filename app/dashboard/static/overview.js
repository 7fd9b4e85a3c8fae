// Overview page: drift rate over time, online metrics per model version, top interest
// transitions, latest drift records.
// The bucket and the time range live in the URL (?bucket=&since=&until=, days in UTC,
// `until` inclusive) so a view can be shared; without a range the page shows all the data
// there is and fills the date fields with the range the summary covers.
"use strict";

(() => {
  const BUCKETS = ["hour", "day", "week"];
  const RECORDS_PAGE = 15;
  const ONLINE_K = 10;
  const ROLE_COLORS = {champion: "#2f6fdf", challenger: "#e8590c"};
  const PAST_COLOR = "#98a2b3";
  const form = document.getElementById("filters");
  const bucketInput = document.getElementById("bucket");
  const sinceInput = document.getElementById("since");
  const untilInput = document.getElementById("until");
  const olderButton = document.getElementById("older");
  let defaults = {since: null, until: null};  // the covered range, shown when none is chosen
  let nextCursor = null;
  let apiRange = {};

  function fromUrl() {
    const params = new URLSearchParams(location.search);
    const bucket = params.get("bucket");
    return {
      bucket: BUCKETS.includes(bucket) ? bucket : "day",
      since: DR.validDay(params.get("since")) ? params.get("since") : null,
      until: DR.validDay(params.get("until")) ? params.get("until") : null,
    };
  }

  /** API bounds: [since 00:00 UTC, the day after `until` 00:00 UTC). */
  function toApiRange(view) {
    return {
      since: view.since ? `${view.since}T00:00:00Z` : null,
      until: view.until ? `${DR.addDays(view.until, 1)}T00:00:00Z` : null,
    };
  }

  function coveredRange(summary) {
    const buckets = summary.buckets;
    if (!buckets.length) return {since: null, until: null};
    const last = DR.isoDate(buckets[buckets.length - 1].bucket_start);
    return {
      since: DR.isoDate(buckets[0].bucket_start),
      until: summary.bucket === "week" ? DR.addDays(last, 6) : last,
    };
  }

  async function load() {
    const view = fromUrl();
    document.body.dataset.state = "loading";
    DR.clearError();
    bucketInput.value = view.bucket;
    apiRange = toApiRange(view);
    try {
      const [summary, history, online] = await Promise.all([
        DR.api("/drift/summary", {...apiRange, bucket: view.bucket, transitions: 15}),
        DR.api("/drift/history", {...apiRange, limit: RECORDS_PAGE}),
        DR.api("/models/online-metrics", {...apiRange, bucket: view.bucket, k: ONLINE_K}),
      ]);
      defaults = view.since || view.until ? {since: null, until: null} : coveredRange(summary);
      sinceInput.value = view.since || defaults.since || "";
      untilInput.value = view.until || defaults.until || "";
      document.getElementById("range-note").textContent =
        view.since || view.until ? "" : "showing all data";
      renderStats(summary);
      renderOnline(online);
      await Promise.all([drawRate(summary), drawOnline(online), drawTransitions(summary)]);
      renderRecords(history, true);
      document.body.dataset.state = "ready";
    } catch (error) {
      DR.showError(error);
    }
  }

  function renderStats(summary) {
    const checked = summary.buckets.reduce((sum, b) => sum + b.users_checked, 0);
    const drifts = summary.buckets.reduce((sum, b) => sum + b.drifts, 0);
    const node = document.getElementById("stats");
    const stat = (value, label) => DR.el("div", {}, DR.el("strong", {}, value),
                                         DR.el("span", {}, label));
    node.replaceChildren(
      stat(checked.toLocaleString("en"), "user checks (counted once per bucket)"),
      stat(drifts.toLocaleString("en"), "drifts detected"),
      stat(DR.pct(checked ? drifts / checked : null), "overall drift rate"),
      stat(String(summary.buckets.length), `${summary.bucket} buckets with checks`),
    );
  }

  function drawRate(summary) {
    const x = summary.buckets.map((b) => b.bucket_start);
    const detail = summary.buckets.map((b) => [b.drifts, b.users_checked]);
    const topRate = Math.max(0, ...summary.buckets.map((b) => b.drift_rate || 0));
    const traces = x.length ? [
      {
        type: "bar", name: "users checked", x, y: summary.buckets.map((b) => b.users_checked),
        marker: {color: "rgba(47,111,223,0.22)"}, yaxis: "y",
        hovertemplate: "%{y} users checked<extra></extra>",
      },
      {
        type: "scatter", mode: summary.buckets.length > 300 ? "lines" : "lines+markers",
        name: "drift rate", x, y: summary.buckets.map((b) => b.drift_rate), yaxis: "y2",
        customdata: detail, line: {color: "#d62728", width: 2}, marker: {size: 5},
        connectgaps: false,
        hovertemplate: "drift rate %{y:.1%}<br>%{customdata[0]} drifts / " +
          "%{customdata[1]} users<extra></extra>",
      },
    ] : [];
    return DR.plot("chart-drift-rate", traces, {
      xaxis: {type: "date", title: {text: `${summary.bucket} (UTC)`}},
      yaxis: {title: {text: "users checked"}, side: "right", showgrid: false, rangemode: "tozero"},
      yaxis2: {title: {text: "drift rate"}, overlaying: "y", side: "left", tickformat: ".0%",
               range: [0, Math.min(1.05, topRate * 1.15) || 1]},
      legend: {orientation: "h", x: 0, y: 1.12},
      hovermode: "x unified",
      bargap: 0.1,
    }, "No drift checks in this range.");
  }

  const versionName = (v) => (v.role ? `v${v.model_version} (${v.role})` : `v${v.model_version}`);
  const withCi = (value, ci) => (value === null ? "–"
    : `${DR.pct(value)} (${ci ? `${DR.pct(ci.low)}–${DR.pct(ci.high)}` : "–"})`);

  function renderOnline(online) {
    const body = document.querySelector("#online-versions tbody");
    body.replaceChildren();
    for (const v of online.versions) {
      body.append(DR.el("tr", {},
        DR.el("td", {}, `v${v.model_version}`),
        DR.el("td", {}, v.role || "–"),
        DR.el("td", {class: "num"}, v.impressions.toLocaleString("en")),
        DR.el("td", {class: "num"}, v.pending.toLocaleString("en")),
        DR.el("td", {class: "num"}, withCi(v.hit_rate, v.hit_rate_ci)),
        DR.el("td", {class: "num"}, withCi(v.mrr, v.mrr_ci)),
      ));
    }
    if (!online.versions.length) {
      body.append(DR.el("tr", {}, DR.el("td", {colspan: 6, class: "empty"},
                                         "No impressions in this range.")));
    }
  }

  function drawOnline(online) {
    const traces = online.versions.filter((v) => v.series.length).map((v) => {
      const series = v.series;
      const rate = series.map((b) => b.hit_rate);
      return {
        type: "scatter", mode: series.length > 300 ? "lines" : "lines+markers",
        name: DR.plain(versionName(v)), x: series.map((b) => b.bucket_start), y: rate,
        line: {color: ROLE_COLORS[v.role] || PAST_COLOR, width: 2}, marker: {size: 5},
        error_y: {
          type: "data", symmetric: false, thickness: 1, width: 3,
          array: series.map((b, i) => (b.hit_rate_ci ? b.hit_rate_ci.high - rate[i] : 0)),
          arrayminus: series.map((b, i) => (b.hit_rate_ci ? rate[i] - b.hit_rate_ci.low : 0)),
        },
        customdata: series.map((b) => [b.hits, b.impressions, b.mrr]),
        meta: [DR.plain(versionName(v))],
        hovertemplate: "%{meta[0]}: hit rate %{y:.1%}<br>%{customdata[0]} hits / " +
          "%{customdata[1]} impressions, MRR %{customdata[2]:.3f}<extra></extra>",
      };
    });
    return DR.plot("chart-online", traces, {
      xaxis: {type: "date", title: {text: `${online.bucket} (UTC)`}},
      yaxis: {title: {text: `hit rate@${online.k}`}, tickformat: ".0%", range: [0, 1.05]},
      legend: {orientation: "h", x: 0, y: 1.12},
    }, "No settled impressions in this range.");
  }

  function drawTransitions(summary) {
    const transitions = summary.transitions;
    const sources = [...new Set(transitions.map((t) => t.from))];
    const targets = [...new Set(transitions.map((t) => t.to))];
    [...sources, ...targets].forEach(DR.topicColor);
    const labels = [...sources, ...targets];
    const traces = transitions.length ? [{
      type: "sankey", arrangement: "snap", valueformat: "d",
      node: {
        label: labels.map(DR.plain), pad: 14, thickness: 16,  // topics: plain text for Plotly
        color: labels.map(DR.topicColor), line: {width: 0},
        customdata: [...sources.map(() => "before"), ...targets.map(() => "after")],
        hovertemplate: "%{label} (%{customdata}): %{value} drifts<extra></extra>",
      },
      link: {
        source: transitions.map((t) => sources.indexOf(t.from)),
        target: transitions.map((t) => sources.length + targets.indexOf(t.to)),
        value: transitions.map((t) => t.count),
        color: transitions.map((t) => `${DR.topicColor(t.from)}55`),
        hovertemplate: "%{source.label} → %{target.label}: %{value} drifts<extra></extra>",
      },
    }] : [];
    return DR.plot("chart-transitions", traces, {margin: {l: 8, r: 8, t: 8, b: 8}},
                   "No drifts in this range.");
  }

  function renderRecords(history, replace) {
    const body = document.querySelector("#records tbody");
    if (replace) body.replaceChildren();
    for (const record of history.records) {
      const link = `/dashboard/users/${encodeURIComponent(record.user_id)}`;
      body.append(DR.el("tr", {},
        DR.el("td", {}, DR.fmtTime(record.detected_at)),
        DR.el("td", {}, DR.el("a", {href: link, class: "user-link"}, record.user_id)),
        DR.el("td", {class: `kind-${record.kind}`}, record.kind),
        DR.el("td", {}, record.from_topic ? DR.chip(record.from_topic) : "–", " → ",
              record.to_topic ? DR.chip(record.to_topic) : "–"),
        DR.el("td", {class: "num"}, record.score.toFixed(2)),
      ));
    }
    if (replace && !history.records.length) {
      body.append(DR.el("tr", {}, DR.el("td", {colspan: 5, class: "empty"},
                                         "No drift records in this range.")));
    }
    nextCursor = history.next_cursor;
    olderButton.hidden = !nextCursor;
  }

  function navigate(view) {
    const params = new URLSearchParams({bucket: view.bucket});
    if (view.since) params.set("since", view.since);
    if (view.until) params.set("until", view.until);
    history.pushState(null, "", `${location.pathname}?${params}`);
    load();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Dates left at the covered range mean "all data": keep the URL short and open-ended.
    const keep = (value, fallback) => (value && value !== fallback ? value : null);
    const since = keep(sinceInput.value, defaults.since);
    const until = keep(untilInput.value, defaults.until);
    navigate({bucket: bucketInput.value, since, until});
  });
  bucketInput.addEventListener("change", () => form.requestSubmit());
  document.getElementById("reset").addEventListener("click", () => {
    navigate({bucket: bucketInput.value, since: null, until: null});
  });
  olderButton.addEventListener("click", async () => {
    try {
      renderRecords(await DR.api("/drift/history",
                                 {...apiRange, limit: RECORDS_PAGE, cursor: nextCursor}), false);
    } catch (error) {
      DR.showError(error);
    }
  });
  window.addEventListener("popstate", load);
  DR.showModel().then(load, DR.showError);
})();
