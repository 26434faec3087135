// Package grafana holds lazymigrate.json, a Grafana dashboard for the
// metrics lazymigrate's packages expose: reads and their sources, the HTTP
// middleware's latency, promotion, the tracker, the cold sweep and its
// throttle, writes and mirroring, verify.
//
// Import it in Grafana (Dashboards, New, Import) and pick the Prometheus
// data source that scrapes your services (GET /metrics of
// examples/accounts, for one) and the sweeper. The table variable lists the
// tables the tracker reports.
//
// The package's test builds every component of the library on a registry,
// against real Postgres and Redis, and checks that each metric the panels
// query is one of those the components register.
package grafana
