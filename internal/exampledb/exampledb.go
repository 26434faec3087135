// Package exampledb gives runnable Example functions an OLD and a NEW
// database with an accounts table, on the Postgres of LM_PG_URL (or the
// local one), and a Redis client on LM_REDIS_ADDR (or the local one).
package exampledb

import (
	"context"
	"fmt"
	"log"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

// Databases holds the two pools of an example and removes everything on
// Close.
type Databases struct {
	Old, New *pgxpool.Pool
	Redis    *redis.Client
	// Prefix is a Redis key prefix of the example's own.
	Prefix string
	admin  string
	names  []string
}

// Open creates fresh OLD and NEW databases with an accounts table; OLD holds
// accounts 1 to n.
func Open(ctx context.Context, n int) *Databases {
	admin := os.Getenv("LM_PG_URL")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	suffix := time.Now().UnixNano()
	d := &Databases{admin: admin, Prefix: fmt.Sprintf("lmexample:%d", suffix)}
	pools := make([]*pgxpool.Pool, 2)
	for i, side := range []string{"old", "new"} {
		name := fmt.Sprintf("lm_example_%s_%d", side, suffix)
		d.exec(ctx, admin, "CREATE DATABASE "+name)
		d.names = append(d.names, name)
		u, err := url.Parse(admin)
		if err != nil {
			log.Fatal(err)
		}
		u.Path = "/" + name
		if pools[i], err = pgxpool.New(ctx, u.String()); err != nil {
			log.Fatal(err)
		}
		if _, err := pools[i].Exec(ctx, testenv.AccountsDDL); err != nil {
			log.Fatal(err)
		}
	}
	d.Old, d.New = pools[0], pools[1]
	_, err := d.Old.Exec(ctx, `INSERT INTO accounts
		SELECT i, 'user'||i||'@example.com', 'User '||i, i*100, 'active', '2024-01-01', '2024-01-01'
		FROM generate_series(1, $1::int) AS i`, n)
	if err != nil {
		log.Fatal(err)
	}

	d.Redis = Redis()
	return d
}

// Redis connects to LM_REDIS_ADDR (a URL or host:port), or to the local
// Redis when it is unset.
func Redis() *redis.Client {
	addr := os.Getenv("LM_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	opts, err := testenv.RedisOptions(addr)
	if err != nil {
		log.Fatal(err)
	}
	return redis.NewClient(opts)
}

func (d *Databases) exec(ctx context.Context, dsn, sql string) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		log.Fatal(err)
	}
}

// Close drops the databases and deletes the example's Redis keys.
func (d *Databases) Close() {
	ctx := context.Background()
	d.Old.Close()
	d.New.Close()
	for _, name := range d.names {
		d.exec(ctx, d.admin, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
	iter := d.Redis.Scan(ctx, 0, d.Prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		d.Redis.Del(ctx, iter.Val())
	}
	_ = d.Redis.Close()
}
