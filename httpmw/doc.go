// Package httpmw is net/http middleware that reads through from NEW to OLD at
// the HTTP layer, for GET handlers that take their database from the request
// context.
//
// # Handlers
//
// A wrapped handler does not hold a database: it asks for one with [DB] on
// every request, and is written once for both sides:
//
//	func getAccount(w http.ResponseWriter, r *http.Request) {
//		id, _ := httpmw.Key(r.Context())
//		pool := httpmw.DB[*pgxpool.Pool](r.Context())
//		var a Account
//		err := pool.QueryRow(r.Context(), `SELECT ... WHERE id = $1`, id).Scan(...)
//		switch {
//		case errors.Is(err, pgx.ErrNoRows):
//			http.NotFound(w, r) // 404: the record does not exist
//		case err != nil:
//			http.Error(w, "database error", http.StatusInternalServerError) // 5xx: could not tell
//		default:
//			json.NewEncoder(w).Encode(a)
//		}
//	}
//
//	tombs, err := httpmw.NewTombstones(ctx, newPool, "accounts")
//	mw, err := httpmw.New(oldPool, newPool, &httpmw.Config{
//		Key:        httpmw.PathKey("id"),
//		Tracker:    tr,       // *tracker.Tracker
//		Tombstones: tombs,    // deleted keys stay deleted
//		Scheduler:  enqueuer, // *promote.Enqueuer
//	})
//	mux.Handle("GET /accounts/{id}", mw.Wrap(http.HandlerFunc(getAccount)))
//
// The handler's status is its whole contract with the middleware: 404 means
// "no such record", a 5xx means "my database failed". A handler must never
// answer 404 because a query failed.
//
// # Reads
//
// For GET and HEAD, the middleware first extracts the key with Config.Key
// (a key that does not parse is answered 400 with a JSON error body, and
// the handler does not run), then runs the handler against NEW:
//
//  1. Any answer but 404 goes straight to the client, streamed as the
//     handler writes it: the hit path buffers nothing and queries nothing
//     beyond what the handler does.
//  2. A 404 is held back. If the key was deleted (Config.Tombstones), it
//     stands. If the tracker says the key is settled, OLD is not asked: the
//     handler runs against NEW once more, since the key's promotion may
//     have committed since its first query, and that answer stands.
//  3. Otherwise the handler runs against OLD, and its answer goes to the
//     client. A 2xx (or a 304 to a conditional GET) schedules the key for
//     promotion (Config.Scheduler). A
//     5xx is replaced by a 503 saying OLD is unavailable: a key that is not
//     settled is never reported as not found when OLD could not be read.
//
// Only the final answer reaches the client: a discarded attempt's status,
// headers and body never do. (A GET request's body, should it have one, is
// read by the first attempt only.) Every answer from a handler carries the header
// Lazymigrate-Source: new or old. A tracker that fails or is slow
// (Config.TrackerTimeout) is treated as saying "not settled": a lost Redis
// costs OLD queries, not answers. A 404 whose body outgrows
// Config.MaxBuffer goes out as NEW wrote it, without asking OLD, and is
// counted.
//
// Config.Mode (a fallback.Switch) moves all reads of the table at once:
// old runs the handler against OLD alone (a rollback), new against NEW
// alone, with no fallback. Either way the answer streams straight through.
// During a rollout ("readthrough 5%", see fallback.Policy) each request
// takes the mode of its key.
//
// Requests with other methods pass straight through, against NEW, the
// system of record: their handlers find NEW with DB. Writes should go
// through lazy.Repo, which also updates the tracker and mirrors to OLD.
//
// # Panics, flushing, hijacking
//
// The middleware never recovers a panic: it counts it
// (outcome="panic") and lets it go on to net/http, which closes the
// connection. A response held back when the handler panicked is never sent.
// Flush behaves as with net/http once the response is going out (a Flush
// before any write sends a 200); a held 404 is not flushed. A hijacked
// connection is the handler's answer.
//
// # Metrics
//
// On the Registerer of Config, labelled by route (r.Pattern, or the name
// given to [Middleware.Route]; never the request path):
//
//   - lazymigrate_http_requests_total{route,source,outcome}
//   - lazymigrate_http_request_duration_seconds{route,source}
//   - lazymigrate_http_fallbacks_total{route,outcome}
//   - lazymigrate_http_passthroughs_total{route}
//   - lazymigrate_http_tracker_errors_total
package httpmw
