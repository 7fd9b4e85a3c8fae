// User page: topic weights over the event timeline with change points, the long- vs
// short-term profile, recommendations and drift records. The time axis (?x=events|time)
// lives in the URL like the overview's filters.
"use strict";

(() => {
  const SHOWN_TOPICS = 9;  // the rest of the timeline's topics are stacked as "other"
  const userId = decodeURIComponent(location.pathname.split("/").pop());
  const axisInput = document.getElementById("axis");
  let data = null;

  document.getElementById("user-id").textContent = userId;
  document.title = `DriftRec · user ${userId}`;

  const axisFromUrl = () => (new URLSearchParams(location.search).get("x") === "time"
    ? "time" : "events");

  async function load() {
    document.body.dataset.state = "loading";
    DR.clearError();
    const user = encodeURIComponent(userId);
    try {
      const [timeline, profile, recommendations, records] = await Promise.all([
        DR.api(`/interest-profile/${user}/timeline`, {limit: 1000}),
        DR.api(`/interest-profile/${user}`),
        // a person looking at the user's page is not the user: no impression
        DR.api(`/recommend/${user}`, {k: 10, impression: false}),
        DR.api("/drift/history", {user_id: userId, limit: 50}),
      ]);
      data = {timeline, profile, recommendations, records: records.records};
      timeline.topics.forEach(DR.topicColor);  // the timeline's order sets the colours
      renderFacts();
      await Promise.all([drawTimeline(), drawProfile()]);
      renderRecommendations();
      renderRecords();
      document.body.dataset.state = "ready";
    } catch (error) {
      DR.showError(error);
    }
  }

  function renderFacts() {
    const {profile, records, timeline} = data;
    document.getElementById("window").textContent = String(timeline.window);
    document.getElementById("facts").textContent =
      `${profile.event_count.toLocaleString("en")} events, the last on ` +
      `${profile.as_of ? DR.fmtTime(profile.as_of) : "–"}; ` +
      `${records.length} drift record${records.length === 1 ? "" : "s"}`;
    const byTrend = {};
    for (const trend of profile.trends) {
      if (trend.trend !== "stable") (byTrend[trend.trend] ||= []).push(trend.topic);
    }
    document.getElementById("trends").textContent = Object.entries(byTrend)
      .map(([label, topics]) => `${label}: ${topics.join(", ")}`).join(" · ");
  }

  function drawTimeline() {
    const {timeline, records} = data;
    const axis = axisInput.value = axisFromUrl();
    const points = timeline.points;
    const x = points.map((p) => (axis === "time" ? p.timestamp : p.index));
    const shown = timeline.topics.slice(0, SHOWN_TOPICS);
    const series = shown.map((topic, column) => ({topic, y: points.map((p) => p.weights[column])}));
    if (timeline.topics.length > SHOWN_TOPICS) {
      series.push({topic: "other", y: points.map((p) => p.weights.slice(SHOWN_TOPICS)
        .reduce((sum, w) => sum + w, 0))});
    }
    // titles and topics are data: plain text for Plotly (DR.plain), never template text
    const events = points.map((p) => [DR.plain(p.title || p.item_id), DR.plain(p.topic),
                                       DR.fmtTime(p.timestamp), p.index]);
    const traces = series.map(({topic, y}, i) => ({
      type: "scatter", mode: "lines", stackgroup: "topics", name: DR.plain(topic), x, y,
      line: {width: 0.5, color: DR.topicColor(topic)}, fillcolor: DR.topicColor(topic),
      customdata: events, meta: [DR.plain(topic)],
      hovertemplate: (i === 0 ? "event #%{customdata[3]}: %{customdata[0]} " +
        "(%{customdata[1]}), %{customdata[2]}<br>" : "") + "%{meta[0]} %{y:.0%}<extra></extra>",
    }));
    // Change points of the recorded drifts that fall inside the shown events.
    const first = points.length ? points[0].index : 0;
    const marks = records.filter((r) => r.change_index >= first).map((r) => ({
      x: axis === "time" ? r.change_at : r.change_index,
      text: DR.plain(`${r.kind} drift at event #${r.change_index}: ${r.from_topic || "–"} → ` +
        `${r.to_topic || "–"} (score ${r.score.toFixed(2)})`),
    }));
    if (traces.length && marks.length) {
      traces.push({
        type: "scatter", mode: "markers", name: "change point", x: marks.map((m) => m.x),
        y: marks.map(() => 1), text: marks.map((m) => m.text), cliponaxis: false,
        marker: {symbol: "triangle-down", size: 13, color: "#111"},
        hovertemplate: "%{text}<extra></extra>",
      });
    }
    return DR.plot("chart-timeline", traces, {
      // The events' span exactly: the change-point markers must not pad the axis.
      xaxis: axis === "time"
        ? {type: "date", title: {text: "event time (UTC)"}, range: [x[0], x[x.length - 1]]}
        : {title: {text: "event number in the user's history"}, range: [x[0], x[x.length - 1]]},
      yaxis: {range: [0, 1], tickformat: ".0%", title: {text: "topic weight"}},
      legend: {orientation: "h", x: 0, y: 1.14, traceorder: "normal"},
      margin: {l: 56, r: 16, t: 56, b: 48},
      shapes: marks.map((m) => ({
        type: "line", xref: "x", yref: "paper", x0: m.x, x1: m.x, y0: 0, y1: 1,
        line: {color: "#111", width: 1.5, dash: "dash"},
      })),
    }, "No events with a known topic.");
  }

  function drawProfile() {
    const {profile} = data;
    const long = new Map(profile.long_term.map((w) => [w.topic, w.weight]));
    const short = new Map(profile.short_term.map((w) => [w.topic, w.weight]));
    const topics = [...new Set([...long.keys(), ...short.keys()])]
      .sort((a, b) => Math.max(long.get(b) || 0, short.get(b) || 0) -
                      Math.max(long.get(a) || 0, short.get(a) || 0))
      .slice(0, 12).reverse();  // heaviest at the top of a horizontal bar chart
    // topics label the axis: plain text for Plotly (DR.plain)
    const bars = (name, weights, color) => ({
      type: "bar", orientation: "h", name, y: topics.map(DR.plain),
      x: topics.map((t) => weights.get(t) || 0),
      marker: {color}, hovertemplate: `${name}: %{y} %{x:.1%}<extra></extra>`,
    });
    const traces = topics.length ? [
      bars("long term", long, "#2f6fdf"), bars("short term", short, "#f79009"),
    ] : [];
    return DR.plot("chart-profile", traces, {
      barmode: "group", xaxis: {tickformat: ".0%", rangemode: "tozero"},
      yaxis: {automargin: true}, legend: {orientation: "h", x: 0, y: 1.1},
      margin: {l: 16, r: 16, t: 24, b: 40},
    }, "No profile yet.");
  }

  function renderRecommendations() {
    const {recommendations} = data;
    document.getElementById("recs-note").textContent = recommendations.drift_aware
      ? "Ranked toward the interests after the latest drift."
      : "The model's ranking (no drift changed it).";
    const body = document.querySelector("#recommendations tbody");
    body.replaceChildren(...recommendations.items.map((item, i) => DR.el("tr", {},
      DR.el("td", {}, String(i + 1)),
      DR.el("td", {title: `item ${item.item_id}`}, item.title || item.item_id),
      DR.el("td", {}, DR.chip(item.topic)),
      DR.el("td", {class: "because"}, (item.because || [])
        .map((reason) => reason.title || reason.item_id).join("; ") || "\u2014"),
      DR.el("td", {class: "num"}, item.score.toFixed(3)),
    )));
  }

  function mix(weights) {
    return Object.entries(weights).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([topic, weight]) => `${topic} ${DR.pct(weight)}`).join(", ");
  }

  function renderRecords() {
    const body = document.querySelector("#user-records tbody");
    body.replaceChildren(...data.records.map((r) => DR.el("tr", {},
      DR.el("td", {}, DR.fmtTime(r.detected_at)),
      DR.el("td", {}, DR.fmtTime(r.change_at)),
      DR.el("td", {class: "num"}, String(r.change_index)),
      DR.el("td", {class: `kind-${r.kind}`}, r.kind),
      DR.el("td", {}, mix(r.interests_before)),
      DR.el("td", {}, mix(r.interests_after)),
      DR.el("td", {class: "num"}, r.score.toFixed(2)),
    )));
    if (!data.records.length) {
      body.append(DR.el("tr", {}, DR.el("td", {colspan: 7, class: "empty"},
                                         "No drift recorded for this user.")));
    }
  }

  async function redrawTimeline() {
    if (!data) return;
    document.body.dataset.state = "loading";
    await drawTimeline();
    document.body.dataset.state = "ready";
  }

  axisInput.addEventListener("change", () => {
    const params = new URLSearchParams(location.search);
    params.set("x", axisInput.value);
    history.pushState(null, "", `${location.pathname}?${params}`);
    redrawTimeline();
  });
  window.addEventListener("popstate", redrawTimeline);
  DR.showModel().then(load, DR.showError);
})();
