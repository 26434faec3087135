package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lazymigrate/lazymigrate/httpmw"
	"github.com/lazymigrate/lazymigrate/lazy"
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
	return in, nil
}

func (in accountInput) applyTo(a *Account, now time.Time) {
	a.Email, a.Name, a.BalanceCents, a.Status = *in.Email, *in.Name, *in.BalanceCents, *in.Status
	a.UpdatedAt = now
}

// putAccount answers PUT /accounts/{id}: it creates or replaces the
// account through lazy.Repo, which writes NEW and mirrors the change to
// OLD, and answers the record as stored.
func (s *server) putAccount(w http.ResponseWriter, r *http.Request) {
	id, err := accountKey(r)
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
	id, err := accountKey(r)
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

// accountKey parses {id} as the GET route's middleware does.
var accountKey = httpmw.PathKey("id")

// writeError answers a failed write: 503 when a database is unavailable
// (the client may retry), 500 otherwise; the details go to the log only.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, lazy.ErrInvalidKey):
		status = http.StatusBadRequest
	case errors.Is(err, lazy.ErrNewUnavailable), errors.Is(err, lazy.ErrOldUnavailable):
		status = http.StatusServiceUnavailable
	case r.Context().Err() != nil:
		return // the client went away
	}
	s.log.ErrorContext(r.Context(), "write failed", "method", r.Method, "path", r.URL.Path, "error", err)
	httpmw.WriteJSONError(w, r, status, err)
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
