package testenv

import (
	"context"
	"testing"
	"time"
)

func TestRemoteAddsTheRoundTrip(t *testing.T) {
	t.Parallel()
	const rtt = 20 * time.Millisecond
	ctx := context.Background()
	db := NewDatabase(t, "remote")
	pool := db.RemotePool(t, rtt)
	rdb, _ := Redis(t)
	remote := RemoteRedis(t, rdb, rtt)
	// Connect first: a dial's own round trips are not what is measured.
	if err := pool.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := remote.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	var one int
	if err := pool.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	if d := time.Since(start); d < rtt {
		t.Errorf("a Postgres round trip took %v, want at least %v", d, rtt)
	}
	start = time.Now()
	if err := remote.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < rtt {
		t.Errorf("a Redis round trip took %v, want at least %v", d, rtt)
	}
	if d := remote.Options().Addr; d != rdb.Options().Addr {
		t.Errorf("remote client dials %s, want %s", d, rdb.Options().Addr)
	}
}
