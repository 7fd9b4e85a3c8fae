"""The drift dashboard: HTML pages and their scripts, styles and plotly.js (from the `plotly`
wheel), all served by the service itself. The pages hold no data: their scripts read it from
the public JSON API (`/drift/summary`, `/drift/history`, `/interest-profile/...`,
`/recommend/...`), the same calls any other dashboard makes."""
