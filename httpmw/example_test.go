package httpmw_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/internal/exampledb"
	"github.com/lazymigrate/lazymigrate/promote"
	"github.com/lazymigrate/lazymigrate/tracker"
)

// keyLog stands in for a promote.Enqueuer so that the example can show
// which keys reads schedule for promotion.
type keyLog struct {
	mu   sync.Mutex
	keys []int64
}

func (l *keyLog) Schedule(keys ...int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, keys...)
	return len(keys)
}

// A handler written once against the pool it finds in its request serves
// NEW's rows, OLD's rows for keys not migrated yet (scheduling them for
// promotion), a 404 for keys in neither, and a 400 for keys that do not
// parse.
func Example() {
	ctx := context.Background()
	db := exampledb.Open(ctx, 3) // OLD holds accounts 1..3; NEW is empty
	defer db.Close()
	if err := promote.Setup(ctx, db.New); err != nil {
		log.Fatal(err)
	}
	if _, err := db.New.Exec(ctx, `INSERT INTO accounts VALUES (1, 'moved1@example.com', 'One', 100, 'active', now(), now())`); err != nil {
		log.Fatal(err)
	}
	tr, err := tracker.New(db.Redis, "accounts", &tracker.Config{Prefix: db.Prefix})
	if err != nil {
		log.Fatal(err)
	}
	scheduled := &keyLog{} // in production: the table's *promote.Enqueuer

	getEmail := func(w http.ResponseWriter, r *http.Request) {
		id, _ := httpmw.Key(r.Context())
		pool := httpmw.DB[*pgxpool.Pool](r.Context())
		var email string
		err := pool.QueryRow(r.Context(), `SELECT email FROM accounts WHERE id = $1`, id).Scan(&email)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			http.NotFound(w, r)
		case err != nil:
			http.Error(w, "database error", http.StatusInternalServerError)
		default:
			fmt.Fprintln(w, email)
		}
	}

	tombstones, err := httpmw.NewTombstones(ctx, db.New, "accounts") // deleted keys stay deleted
	if err != nil {
		log.Fatal(err)
	}
	mw, err := httpmw.New(db.Old, db.New, &httpmw.Config{
		Key:        httpmw.PathKey("id"),
		Tracker:    tr,
		Tombstones: tombstones,
		Scheduler:  scheduled,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /accounts/{id}", mw.Wrap(http.HandlerFunc(getEmail)))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, path := range []string{"/accounts/1", "/accounts/2", "/accounts/99", "/accounts/x"} {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		fmt.Printf("%s: %d source=%q %s\n", path, resp.StatusCode, resp.Header.Get(httpmw.HeaderSource), strings.TrimSpace(string(body)))
	}
	scheduled.mu.Lock()
	fmt.Println("scheduled for promotion:", scheduled.keys)
	scheduled.mu.Unlock()
	// Output:
	// /accounts/1: 200 source="new" moved1@example.com
	// /accounts/2: 200 source="old" user2@example.com
	// /accounts/99: 404 source="old" 404 page not found
	// /accounts/x: 400 source="" {"error":"lazymigrate: invalid key: keys must be integers >= 0: path value id is \"x\""}
	// scheduled for promotion: [2]
}

// The databases can be any type, as long as both sides have the same: here
// maps, and a router that names its routes itself.
func ExampleMiddleware_Route() {
	type catalog map[int64]string
	oldDB := catalog{1: "lamp (from OLD)", 2: "desk (from OLD)"}
	newDB := catalog{1: "lamp"}

	mw, err := httpmw.New(oldDB, newDB, &httpmw.Config{
		NoTombstones: true, // a catalog whose items are never deleted
		Key: func(r *http.Request) (int64, error) {
			var id int64
			if _, err := fmt.Sscan(r.URL.Query().Get("id"), &id); err != nil {
				return 0, fmt.Errorf("%w: %v", httpmw.ErrInvalidKey, err)
			}
			return id, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	h := mw.Route("item")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := httpmw.Key(r.Context())
		item, ok := httpmw.DB[catalog](r.Context())[id]
		if !ok {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, item)
	}))

	for _, q := range []string{"?id=1", "?id=2", "?id=3"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/item"+q, nil))
		fmt.Printf("%s: %d %s %q\n", q, rec.Code, rec.Header().Get(httpmw.HeaderSource), strings.TrimSpace(rec.Body.String()))
	}
	// Output:
	// ?id=1: 200 new "lamp"
	// ?id=2: 200 old "desk (from OLD)"
	// ?id=3: 404 old "404 page not found"
}

// PathKey reads the key from a ServeMux wildcard; anything but an integer
// >= 0 is a 400.
func ExamplePathKey() {
	key := httpmw.PathKey("id")
	for _, v := range []string{"42", "-1", "abc"} {
		r := httptest.NewRequest(http.MethodGet, "/accounts/"+v, nil)
		r.SetPathValue("id", v)
		k, err := key(r)
		fmt.Println(k, errors.Is(err, httpmw.ErrInvalidKey))
	}
	// Output:
	// 42 false
	// 0 true
	// 0 true
}
