// Command accounts is an example service that migrates its accounts table
// from an OLD Postgres database to a NEW one with lazymigrate, live: reads
// go through the httpmw middleware (NEW first, OLD on a miss, which
// schedules the row's promotion), writes through lazy.Repo (NEW, mirrored
// to OLD), and a status page shows the migration as it happens.
//
// The table is the same in both databases:
//
//	accounts(id bigint primary key, email text not null, name text not null,
//	         balance_cents bigint not null, status text not null,
//	         created_at timestamptz not null, updated_at timestamptz not null)
//
// # Running it
//
// Every command takes the databases and Redis from flags, or from the
// environment:
//
//	export LM_OLD_DSN=postgres://postgres@127.0.0.1:5432/accounts_old
//	export LM_NEW_DSN=postgres://postgres@127.0.0.1:5432/accounts_new
//	export LM_REDIS_ADDR=127.0.0.1:6379
//
//	go run ./examples/accounts seed -create-databases -rows 200000
//	go run ./examples/accounts serve -addr 127.0.0.1:8080
//	go run ./examples/accounts load -addr 127.0.0.1:8080 -duration 20s -rate 2000
//	go run ./cmd/sweeper run -table accounts      # copies the cold rest
//	go run ./cmd/sweeper verify -table accounts
//
// seed creates the table in OLD and NEW if need be, lazymigrate's schema in
// NEW, and accounts 1 to N in OLD (200,000 take a second or two). Running
// it again adds only the accounts OLD lacks, leaving out those deleted
// through the service (tombstoned in NEW), which must stay deleted; run it
// before serving, as a delete made while it runs may come back.
// -create-databases first creates the databases the DSNs name.
//
// serve answers
//
//	GET    /accounts/{id}  200 with the account and Lazymigrate-Source: new|old,
//	                       404, 503 when OLD is down and the key has not moved yet
//	PUT    /accounts/{id}  {"email", "name", "balance_cents", "status"}: creates or
//	                       replaces the account (created_at is kept); 200 with it,
//	                       400 for a bad body (email and name without control
//	                       characters), 422 for data the database rejects
//	DELETE /accounts/{id}  204, whether it existed or not
//	GET    /status         the migration's status page, refreshing itself
//	GET    /status.json    the same, as JSON
//	GET    /metrics        Prometheus metrics (see examples/grafana)
//	GET    /healthz        200 while NEW answers
//
// Every route answers 400, with a JSON error, for an id that is not an
// integer from 0 to -max-id (default 2^40). Set -max-id a little above the
// ids the table will reach: it bounds the key range (a PUT of a far id is
// mirrored to OLD, whose max(id) is where the sweeper stops) and the
// tracker in Redis, where every 2^20 ids that writes touch cost up to
// 128 KiB.
//
// It runs, in the background, the enqueuer that turns reads served by OLD
// into promotion tasks, lazy's relay (which mirrors to OLD whatever a write
// could not), the poll of the read mode (so `redis-cli SET
// lazymigrate:mode:accounts old` rolls reads back to OLD within a second)
// and, unless -worker=false, an asynq worker that runs the promotions.
// SIGINT or SIGTERM stops it gracefully: requests in flight finish (those
// still running after -shutdown-timeout, default 10s, are cut off and the
// command fails), pending promotions are enqueued, the worker finishes its
// tasks.
//
// worker runs the asynq worker alone, to add workers or to keep them apart
// from the service (serve -worker=false).
//
// load drives a skewed read load (Zipf over ids 1 to N, the hot ids spread
// over the key space) and prints, each second, the requests served and the
// share NEW answered, then the latency percentiles. With -rate it sends on
// a fixed schedule whatever the latency, and each latency runs from when
// the request was due. It stops sending at -duration, then waits up to
// -grace for the requests in flight: one still unanswered then (or after
// its own -timeout) counts as an error, its latency measured to when it
// was given up, so a stalled tail is never left out. It fails when a
// request failed, none was answered, it sent clearly fewer requests than
// -rate called for (the service too slow for -concurrency), or the p99
// latency is above -max-p99.
//
// # Where things live
//
// -prefix (default "lazymigrate") starts the Redis keys of the tracker, the
// read mode and the sweep's progress, and -queue (default "lazymigrate")
// names the asynq queue: run the sweeper with the same prefix, and every
// process of one migration with the same pair. The status page reads the
// sweep's progress from Redis, so it shows a sweep run from anywhere.
//
// # Reading the code
//
// main.go dispatches the commands and opens the connections; migration.go
// wires lazymigrate for the table (tracker, copier, read-mode switch,
// enqueuer, repository); serve.go and api.go are the service; worker.go the
// asynq worker; status.go and status.html the status page; seed.go and
// load.go the other two commands.
package main
