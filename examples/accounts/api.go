package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/lazy"
	"github.com/lazymigrate/lazymigrate/promote"
)

// getAccount answers GET /accounts/{id}. It runs behind httpmw, against
// whichever database the middleware hands it: NEW first, then OLD if NEW
// answered 404 and the key has not settled. Its status is its contract
// with the middleware: 404 only when the row does not exist, 500 when the
// query failed.
func getAccount(w http.ResponseWriter, r *http.Request) {
	id, _ := httpmw.Key(r.Context())
	db := httpmw.DB[*pgxpool.Pool](r.Context())
	var a Account
	rows, err := db.Query(r.Context(), selectAccount, id)
	if err == nil {
		a, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Account])
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		httpmw.WriteJSONError(w, r, http.StatusNotFound, fmt.Errorf("account %d not found", id))
	case err != nil:
		httpmw.WriteJSONError(w, r, http.StatusInternalServerError, err)
	default:
		writeJSON(w, http.StatusOK, a)
	}
}

// accountInput is the body of PUT /accounts/{id}: every field is required.
type accountInput struct {
	Email        *string `json:"email"`
	Name         *string `json:"name"`
	BalanceCents *int64  `json:"balance_cents"`
	Status       *string `json:"status"`
}

// statuses are the values of accounts.status.
var statuses = map[string]bool{"active": true, "suspended": true, "closed": true}

// maxBody bounds a PUT body.
const maxBody = 64 << 10

func decodeInput(w http.ResponseWriter, r *http.Request) (accountInput, error) {
	var in accountInput
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return in, fmt.Errorf("body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return in, errors.New("body: trailing data after the JSON object")
	}
	switch {
	case in.Email == nil || in.Name == nil || in.BalanceCents == nil || in.Status == nil:
		return in, errors.New("body: email, name, balance_cents and status are all required")
	case !strings.Contains(*in.Email, "@") || len(*in.Email) > 320:
		return in, fmt.Errorf("body: email %q is not an email address", *in.Email)
	case strings.TrimSpace(*in.Name) == "" || len(*in.Name) > 200:
		return in, errors.New("body: name must be 1 to 200 bytes, not blank")
	case !statuses[*in.Status]:
		return in, fmt.Errorf("body: status %q is not one of active, suspended, closed", *in.Status)
	}
	for _, f := range []struct{ name, value string }{{"email", *in.Email}, {"name", *in.Name}} {
		if err := checkText(f.name, f.value); err != nil {
			return in, err
		}
	}
	return in, nil
}

// checkText rejects control characters (U+0000 to U+001F and U+007F to
// U+009F) in a text field: Postgres cannot store U+0000 at all, and the
// others have no place in an email address or a name.
func checkText(field, v string) error {
	for i, r := range v {
		if unicode.IsControl(r) {
			return fmt.Errorf("body: %s must not contain control characters; it has %U at byte %d", field, r, i)
		}
	}
	return nil
}

func (in accountInput) applyTo(a *Account, now time.Time) {
	a.Email, a.Name, a.BalanceCents, a.Status = *in.Email, *in.Name, *in.BalanceCents, *in.Status
	a.UpdatedAt = now
}

// putAccount answers PUT /accounts/{id}: it creates or replaces the
// account through lazy.Repo, which writes NEW and mirrors the change to
// OLD, and answers the record as stored.
func (s *server) putAccount(w http.ResponseWriter, r *http.Request) {
	id, err := s.key(r)
	if err != nil {
		httpmw.WriteJSONError(w, r, http.StatusBadRequest, err)
		return
	}
	in, err := decodeInput(w, r)
	if err != nil {
		httpmw.WriteJSONError(w, r, http.StatusBadRequest, err)
		return
	}
	// Postgres keeps microseconds: the answer must equal what a GET reads.
	now := time.Now().UTC().Truncate(time.Microsecond)
	// Update keeps created_at; it promotes the row first if it is only in
	// OLD. A key in neither database (or deleted) is created.
	a, err := s.m.repo.Update(r.Context(), id, func(a *Account) error {
		in.applyTo(a, now)
		return nil
	})
	if errors.Is(err, lazy.ErrNotFound) {
		a = Account{ID: id, CreatedAt: now}
		in.applyTo(&a, now)
		a, err = s.m.repo.Put(r.Context(), id, a)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// deleteAccount answers DELETE /accounts/{id} with 204, whether the
// account existed or not. lazy.Repo deletes it from NEW, leaves a tombstone
// so that it never comes back from OLD, and mirrors the delete to OLD.
func (s *server) deleteAccount(w http.ResponseWriter, r *http.Request) {
	id, err := s.key(r)
	if err != nil {
		httpmw.WriteJSONError(w, r, http.StatusBadRequest, err)
		return
	}
	if err := s.m.repo.Delete(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// defaultMaxID is serveConfig.MaxID's default, 2^40: far above any id the
// demo uses, far below where key arithmetic could overflow.
const defaultMaxID = 1 << 40

// keyFunc parses {id} as an integer from 0 to maxID; anything else is an
// invalid key (400). Every route uses it: the read route's middleware and
// the write handlers alike.
func keyFunc(maxID int64) httpmw.KeyFunc {
	parse := httpmw.PathKey("id")
	return func(r *http.Request) (int64, error) {
		id, err := parse(r)
		if err == nil && id > maxID {
			return 0, idAboveMax{id, maxID}
		}
		return id, err
	}
}

// idAboveMax is an id above serveConfig.MaxID: an invalid key (it is
// httpmw.ErrInvalidKey), with a message of its own.
type idAboveMax struct{ id, max int64 }

func (e idAboveMax) Error() string {
	return fmt.Sprintf("id %d is above %d, the largest this service accepts (serve -max-id)", e.id, e.max)
}

func (e idAboveMax) Is(target error) bool { return target == httpmw.ErrInvalidKey }

// writeError answers a failed write: 400 for an invalid key, 503 when a
// database is unavailable (the client may retry), 422 when NEW rejected
// the record as invalid data (SQLSTATE class 22 or 23: retrying the same
// body cannot help), 500 otherwise. The details go to the log; a 422
// tells the client what the database objected to, a 5xx only its kind.
//
// A row OLD holds that NEW rejects (promote.ErrRowRejected, met when a
// PUT first promotes the account) stays a 500: the fault is in the data
// the service already had, not in the request.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	reply := err
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, lazy.ErrInvalidKey):
		status = http.StatusBadRequest
	case errors.Is(err, lazy.ErrNewUnavailable), errors.Is(err, lazy.ErrOldUnavailable):
		status = http.StatusServiceUnavailable
	case r.Context().Err() != nil:
		return // the client went away
	case errors.As(err, &pgErr) && isDataClass(pgErr.Code) && !errors.Is(err, promote.ErrRowRejected):
		status = http.StatusUnprocessableEntity
		reply = fmt.Errorf("the database rejected the account: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	}
	level := slog.LevelError
	if status < http.StatusInternalServerError {
		level = slog.LevelWarn // the client's mistake, not the service's
	}
	s.log.Log(r.Context(), level, "write failed", "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
	httpmw.WriteJSONError(w, r, status, reply)
}

// isDataClass reports whether SQLSTATE code is of class 22 (data
// exception) or 23 (integrity constraint violation).
func isDataClass(code string) bool {
	return strings.HasPrefix(code, "22") || strings.HasPrefix(code, "23")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// healthz answers 200 while NEW, the system of record, answers; OLD and
// Redis are reported but only degrade the service.
func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]func(context.Context) error{
		"new":   s.d.new.Ping,
		"old":   s.d.old.Ping,
		"redis": func(ctx context.Context) error { return s.d.rdb.Ping(ctx).Err() },
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out = map[string]string{}
	)
	for name, check := range checks {
		wg.Go(func() {
			res := "ok"
			if err := check(ctx); err != nil {
				res = "unavailable"
			}
			mu.Lock()
			out[name] = res
			mu.Unlock()
		})
	}
	wg.Wait()
	status := http.StatusOK
	if out["new"] != "ok" {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, out)
}
