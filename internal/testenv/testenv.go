// Package testenv gives tests their own real Postgres databases and Redis key
// prefixes, so that tests run in parallel and twice in a row without
// interfering.
//
// The servers come from LM_PG_URL (an admin connection string, e.g.
// postgres://postgres@127.0.0.1:5432/postgres) and LM_REDIS_ADDR (a Redis URL
// or host:port). When one is unset the test is skipped with a message that
// says so, unless LM_REQUIRE_INTEGRATION=1, which CI sets: then it fails.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/connect"
)

// Require returns the environment variable name, or skips t with a message
// saying how to set it; under LM_REQUIRE_INTEGRATION=1 (CI) it fails t
// instead.
func Require(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v != "" {
		return v
	}
	msg := fmt.Sprintf("integration test needs %s (run `make test`, which sets it)", name)
	if os.Getenv("LM_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s; LM_REQUIRE_INTEGRATION=1 turns this skip into a failure", msg)
	}
	t.Skip(msg)
	return ""
}

// Suffix returns a short random string for unique names.
func Suffix() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// Database is a fresh Postgres database created for one test.
type Database struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// NewDatabase creates an empty database named after hint, opens a pool on it
// and drops it when the test ends.
func NewDatabase(t testing.TB, hint string) *Database {
	t.Helper()
	admin := Require(t, "LM_PG_URL")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	name := "lm_" + strings.ToLower(hint) + "_" + Suffix()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("testenv: connect to LM_PG_URL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}

	cfg, err := pgxpool.ParseConfig(admin)
	if err != nil {
		t.Fatalf("testenv: parse LM_PG_URL: %v", err)
	}
	cfg.ConnConfig.Database = name
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("testenv: open %s: %v", name, err)
	}
	db := &Database{Name: name, URL: withDatabase(admin, name), Pool: pool}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("testenv: drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: drop %s: %v", name, err)
		}
	})
	return db
}

// withDatabase returns the connection string admin pointed at database name,
// keeping its user, password and parameters.
func withDatabase(admin, name string) string {
	if u, err := url.Parse(admin); err == nil && u.Scheme != "" {
		u.Path = "/" + name
		return u.String()
	}
	return admin + " dbname=" + name
}

// NewPool opens another pool on db, configured by configure (which may be
// nil), and closes it when the test ends: for a pool smaller than db.Pool,
// one with a tracer, or one opened after database-level settings changed.
func (db *Database) NewPool(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatalf("testenv: pool on %s: %v", db.Name, err)
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testenv: pool on %s: %v", db.Name, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Exec runs statements on db and fails the test on error.
func (db *Database) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("testenv: exec on %s: %v\n%s", db.Name, err, sql)
	}
}

// RedisOptions parses a Redis address given as a URL (redis://host:port/db)
// or as host:port, for a single-node client.
func RedisOptions(addr string) (*redis.Options, error) {
	o, err := connect.RedisOptions(addr)
	if err != nil {
		return nil, err
	}
	return o.Simple(), nil
}

// Redis returns a client on LM_REDIS_ADDR and a key prefix unique to the
// test. Every key under the prefix is deleted when the test ends.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	addr := Require(t, "LM_REDIS_ADDR")
	opts, err := RedisOptions(addr)
	if err != nil {
		t.Fatalf("testenv: LM_REDIS_ADDR: %v", err)
	}
	rdb := redis.NewClient(opts)
	prefix := "lmtest:" + Suffix()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("testenv: redis at %s: %v", addr, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		DeletePrefix(ctx, rdb, prefix)
		_ = rdb.Close()
	})
	return rdb, prefix
}

// DeletePrefix deletes every key that starts with prefix.
func DeletePrefix(ctx context.Context, rdb redis.UniversalClient, prefix string) {
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			rdb.Del(ctx, batch...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		rdb.Del(ctx, batch...)
	}
}

// Eventually waits until cond returns true, checking every 10ms, and fails
// the test with msg when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
