// Package examples holds runnable programs that show each way of using
// lazymigrate; each lives in its own folder:
//
//   - accounts: a service that migrates its table while serving it, through
//     the HTTP middleware (reads) and lazy.Repo (writes), with a status
//     page, metrics, a worker and a load generator. `make demo` runs it.
//   - repository: lazy.Repo dropped into existing repository code, in under
//     30 lines.
//   - grafana: a dashboard for the library's metrics, tested against the
//     names the packages register.
//
// The sweeper, the third way of use, is the command in cmd/sweeper.
package examples
