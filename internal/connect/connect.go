// Package connect opens the connections lazymigrate's programs take from
// their flags: Postgres pools and a Redis client, checked with a ping so
// that a wrong address fails at start with one line that names it.
package connect

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Environment variables that stand in for the programs' flags.
const (
	EnvOldDSN = "LM_OLD_DSN"
	EnvNewDSN = "LM_NEW_DSN"
	EnvRedis  = "LM_REDIS_ADDR"
)

// pingTimeout bounds the check of a new connection.
const pingTimeout = 10 * time.Second

// RedisOptions parses a Redis address: a URL (redis://[user:pass@]host:port/db,
// rediss:// for TLS), host:port, or several host:port joined by commas for
// a Redis Cluster.
func RedisOptions(addr string) (*redis.UniversalOptions, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return nil, errors.New("empty Redis address")
	}
	if strings.Contains(addr, "://") {
		o, err := redis.ParseURL(addr)
		if err != nil {
			// url.Parse's error quotes the whole URL, password included.
			if ue := (*url.Error)(nil); errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("Redis address %q: %w", RedactURL(addr), err)
		}
		return &redis.UniversalOptions{
			Addrs: []string{o.Addr}, DB: o.DB, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
		}, nil
	}
	addrs := strings.Split(addr, ",")
	for i, a := range addrs {
		addrs[i] = strings.TrimSpace(a)
		if !strings.Contains(addrs[i], ":") {
			return nil, fmt.Errorf("Redis address %q: want host:port, a redis:// URL, or host:port,host:port for a cluster", RedactURL(addr))
		}
	}
	o := &redis.UniversalOptions{Addrs: addrs}
	if len(addrs) > 1 {
		o.IsClusterMode = true
	}
	return o, nil
}

// RedactURL returns rawURL fit for a log or an error: a URL's password
// replaced by "xxxxx", as url.URL.Redacted does. When rawURL does not parse
// as a URL with user information, yet holds an '@', all before its last
// '@' but the scheme is replaced, so that no password is kept.
func RedactURL(rawURL string) string {
	at := strings.LastIndex(rawURL, "@")
	if at < 0 {
		return rawURL
	}
	if u, err := url.Parse(rawURL); err == nil && u.User != nil && u.Opaque == "" {
		return u.Redacted()
	}
	scheme, _, found := strings.Cut(rawURL[:at], "://")
	if !found {
		return "xxxxx" + rawURL[at:]
	}
	return scheme + "://xxxxx" + rawURL[at:]
}

// Redis connects to addr (see RedisOptions) and pings it.
func Redis(ctx context.Context, addr string) (redis.UniversalClient, error) {
	o, err := RedisOptions(addr)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewUniversalClient(o)
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("Redis at %s is unreachable: %w", strings.Join(o.Addrs, ","), err)
	}
	return rdb, nil
}

// Postgres opens a pool on dsn and pings it. side names the database in
// errors ("OLD", "NEW"); the DSN's password never appears in them.
func Postgres(ctx context.Context, side, dsn string, configure func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	if strings.TrimSpace(dsn) == "" {
		return nil, fmt.Errorf("%s database: no DSN given", side)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%s database: bad DSN: %w", side, err)
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s database: %w", side, err)
	}
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("%s database at %s:%d/%s is unreachable: %w",
			side, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}
