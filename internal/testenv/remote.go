package testenv

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// RemoteRTT is the round trip that the Remote helpers add, unless
// LM_BENCH_RTT sets another. Go's timers wake about a millisecond late on
// an idle Linux machine, so a shorter delay would not be shorter in fact:
// 1ms, a round trip between availability zones, is what can be simulated
// here.
const RemoteRTT = time.Millisecond

// BenchRTT returns LM_BENCH_RTT (a duration) or RemoteRTT.
func BenchRTT(t testing.TB) time.Duration {
	t.Helper()
	s := os.Getenv("LM_BENCH_RTT")
	if s == "" {
		return RemoteRTT
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("testenv: LM_BENCH_RTT=%q is not a positive duration", s)
	}
	return d
}

// DelayDial dials as net.Dialer does, and each connection it opens waits
// rtt before every write. For a client that writes a request and then
// reads the whole answer (Postgres and Redis, one pipelined batch at a
// time) that adds rtt to every round trip, as a server on another host
// would: the servers stay on this machine, but the waits no longer
// compete for its CPU.
func DelayDial(rtt time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &delayedConn{Conn: c, rtt: rtt}, nil
	}
}

type delayedConn struct {
	net.Conn
	rtt time.Duration
}

func (c *delayedConn) Write(p []byte) (int, error) {
	time.Sleep(c.rtt)
	return c.Conn.Write(p)
}

// RemotePool opens another pool on db whose every round trip takes rtt
// more (see DelayDial), and closes it when the test ends.
func (db *Database) RemotePool(t testing.TB, rtt time.Duration) *pgxpool.Pool {
	t.Helper()
	return db.NewPool(t, func(c *pgxpool.Config) {
		c.MaxConns = db.Pool.Config().MaxConns
		c.ConnConfig.DialFunc = DelayDial(rtt)
	})
}

// RemoteRedis returns a client on rdb's server whose every round trip
// takes rtt more (see DelayDial), closed when the test ends.
func RemoteRedis(t testing.TB, rdb *redis.Client, rtt time.Duration) *redis.Client {
	t.Helper()
	opts := *rdb.Options()
	opts.Dialer = DelayDial(rtt)
	remote := redis.NewClient(&opts)
	t.Cleanup(func() { _ = remote.Close() })
	return remote
}
